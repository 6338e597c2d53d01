"""The resumable loop of a lockstep group: steps, checkpoints, per-member metrics.

:func:`train_lockstep` is :func:`jaxkd.training.train` for M members trained by one
:func:`make_lockstep_step`: each member reads its own data iterator, writes its own
``member_<i>/metrics.jsonl``, and the group shares one checkpoint directory holding the
stacked state and every iterator's position, so a killed group resumes and ends as an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxkd import models
from jaxkd.sharding import data_mesh, replicate, shard_batch
from jaxkd.training._checkpoint import CheckpointError, Checkpointer
from jaxkd.training._io import atomic_write_json
from jaxkd.training._lockstep import (LockstepState, init_lockstep_state, make_lockstep_step,
                                      member_sharding)
from jaxkd.training._loop import (EvalData, NonFiniteLossError, _check_batch, _check_labels,
                                  _num_classes, evaluate)
from jaxkd.training._metrics import MetricWriter
from jaxkd.training._objective import Objective
from jaxkd.training._step import TARGETS_KEY, make_eval_step


@dataclasses.dataclass
class LockstepResult:
    """What :func:`train_lockstep` returns.

    Attributes:
      state: the final :class:`LockstepState` (``state.member(i).model()`` is student i).
      train_metrics: per member, its last step's metrics (Python floats).
      eval_metrics: per member, its final evaluation (``accuracy``, ``loss``), or {}.
      failed_step: per member, the step it went non-finite at (its state is the one
        before), 0 for a member that trained to the end.
    """
    state: LockstepState
    train_metrics: list[dict[str, float]]
    eval_metrics: list[dict[str, float]]
    failed_step: list[int]


def member_dir(workdir: str | os.PathLike, i: int) -> str:
    """``workdir/member_<i>``: member ``i``'s ``metrics.jsonl``."""
    return os.path.join(os.fspath(workdir), f"member_{i}")


def _stack_batches(batches: Sequence[Mapping[str, Any]], mesh: Mesh) -> dict[str, Any]:
    if any(TARGETS_KEY in b for b in batches):
        raise ValueError("train_lockstep does not take batches with teacher targets; give "
                         "the teacher to the step (make_lockstep_step takes stacked ones).")
    stacked = {k: np.stack([np.asarray(b[k]) for b in batches]) for k in ("image", "label")}
    return shard_batch(stacked, member_sharding(mesh))


def train_lockstep(students: Sequence[nnx.Module], objective: Objective,
                   optimizer: optax.GradientTransformation,
                   train_data: Sequence[Iterator[Mapping[str, Any]]], *,
                   workdir: str | os.PathLike, num_steps: int, seeds: Sequence[int],
                   weights: Mapping[str, Sequence[float]] | None = None,
                   learning_rates: Sequence[float] | None = None,
                   teacher: nnx.Module | models.Split | None = None,
                   eval_data: EvalData | None = None,
                   member_eval_data: Sequence[EvalData] | None = None,
                   mesh: Mesh | None = None, checkpoint_every: int = 1000,
                   log_every: int = 50, max_to_keep: int = 3,
                   config: Mapping[str, Any] | None = None) -> LockstepResult:
    """Trains M students in lockstep on ``objective``; resumes if it can.

    Member ``i`` is the run ``train(students[i], objective_i, optimizer_i,
    train_data[i], seed=seeds[i])`` would be, ``objective_i`` with member ``i``'s
    weights and ``optimizer_i`` with its learning rate, up to the round-off described in
    docs/training.md (Students in lockstep). Without ``eval_data`` or
    ``member_eval_data`` no evaluation runs; with either, each member is evaluated once,
    at the end.

    Args:
      students: M NNX models of one architecture; their parameters are the start.
      objective: the loss terms (their weights are the default of ``weights``).
      optimizer: an optax transformation (``optax.inject_hyperparams`` for
        ``learning_rates``).
      train_data: M iterators of ``{"image": [B, ...], "label": [B]}`` host batches, one
        per member, of one batch size; for exact resume each has ``get_state`` and
        ``set_state``.
      workdir: the group's directory: ``checkpoints/``, ``member_<i>/metrics.jsonl``,
        ``config.json``.
      num_steps: total number of steps (counting those before a resume).
      seeds: M base seeds of the members' step RNG (``jax.random.key(seed)``).
      weights: ``{term name: M weights}`` (see :func:`init_lockstep_state`).
      learning_rates: M learning rates (see :func:`init_lockstep_state`).
      teacher: the frozen teacher shared by the members.
      eval_data: evaluation batches as for :func:`jaxkd.training.evaluate`, the same
        for every member.
      member_eval_data: instead of ``eval_data``, M evaluation sets, one per member
        (members whose seeds carve their own validation split).
      mesh: a ``("data",)`` mesh (default: all devices).
      checkpoint_every: save every this many steps (and at the end).
      log_every: write the members' metrics every this many steps (and at the end).
      max_to_keep: checkpoints kept.
      config: JSON-serialisable description, written to ``workdir/config.json``.

    Returns:
      A :class:`LockstepResult`. A member that goes non-finite is frozen and reported
      in ``failed_step``; the others train on.

    Raises:
      NonFiniteLossError: every member went non-finite (names their steps).
      CheckpointError: the latest checkpoint does not fit this group (another member
        count, architecture or weights) or cannot be read or written.
      ValueError: argument lengths that are not M, or a malformed batch.
    """
    m = len(students)
    if eval_data is not None and member_eval_data is not None:
        raise ValueError("pass eval_data (one set for every member) or member_eval_data "
                         "(one per member), not both.")
    lengths = {"train_data": len(train_data), "seeds": len(seeds)}
    if member_eval_data is not None:
        lengths["member_eval_data"] = len(member_eval_data)
    for name, length in lengths.items():
        if length != m:
            raise ValueError(f"{name} has {length} entries for {m} students; pass one "
                             f"per member.")
    workdir = os.fspath(workdir)
    if not workdir:
        raise ValueError("workdir is empty; pass the group's directory.")
    mesh = data_mesh() if mesh is None else mesh
    os.makedirs(workdir, exist_ok=True)
    if config is not None:
        atomic_write_json(os.path.join(workdir, "config.json"), dict(config), indent=2,
                          sort_keys=True, default=str)
    state = init_lockstep_state(students, objective, optimizer,
                                keys=[jax.random.key(s) for s in seeds], weights=weights,
                                learning_rates=learning_rates)
    state = replicate(state, mesh)
    step_fn = make_lockstep_step(objective, optimizer, mesh, teacher=teacher)
    can_save_data = all(hasattr(d, "get_state") and hasattr(d, "set_state")
                        for d in train_data)
    writers = [MetricWriter(member_dir(workdir, i), tensorboard=False) for i in range(m)]
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep)
    wanted_weights = {k: [float(v) for v in jax.device_get(w)]
                      for k, w in state.weights.items()}

    def save(step_state: LockstepState, step: int) -> None:
        checkpointer.save(step_state.members, {
            "members": ([d.get_state() for d in train_data]  # type: ignore[attr-defined]
                        if can_save_data else None),
            "failed_step": [int(v) for v in jax.device_get(step_state.failed_step)],
            "weights": wanted_weights}, step=step)

    try:
        start = checkpointer.latest_step()
        if start is not None:
            members, saved = checkpointer.restore(state.members)
            if saved.get("weights") != wanted_weights:
                raise CheckpointError(
                    f"checkpoint {checkpointer.path(start)} holds a group of weights "
                    f"{saved.get('weights')}; this group has {wanted_weights}.")
            if can_save_data and saved.get("members"):
                for d, s in zip(train_data, saved["members"]):
                    d.set_state(s)  # type: ignore[attr-defined]  # checked: can_save_data
            state = replicate(dataclasses.replace(
                state, members=members,
                failed_step=np.asarray(saved["failed_step"], np.int32)), mesh)
        # The checkpoint's step is the group's: members' own counters stop when frozen.
        start = start or 0
        for w in writers:
            w.truncate_after(start)
        step, num_classes = start, None
        train_metrics: list[dict[str, float]] = [{} for _ in range(m)]
        while step < num_steps:
            batches = []
            for i, data in enumerate(train_data):
                try:
                    batch = next(data)
                except StopIteration:
                    raise ValueError(f"train_data[{i}] ran out at step {step} of "
                                     f"{num_steps}; give iterators that repeat.") from None
                _check_batch(batch, f"train_data[{i}]'s batch for step {step + 1}")
                batches.append(batch)
            placed = _stack_batches(batches, mesh)
            if num_classes is None:
                num_classes = _num_classes(state.member(0), placed["image"][0])
            labels = np.asarray([b["label"] for b in batches])
            _check_labels((labels.min(), labels.max()), num_classes,
                          f"the batches of step {step + 1}")
            state, metrics = step_fn(state, placed)
            step += 1
            metrics = jax.device_get(metrics)
            train_metrics = [{k: float(v[i]) for k, v in metrics.items()} for i in range(m)]
            failed = [int(v) for v in jax.device_get(state.failed_step)]
            if all(failed):
                raise NonFiniteLossError(
                    f"every member of the lockstep group went non-finite (steps {failed}); "
                    f"lower the learning rates or weights, or check the inputs.")
            if step % log_every == 0 or step == num_steps:
                for i, w in enumerate(writers):
                    if not failed[i] or failed[i] == step:  # a frozen member logs no more
                        w.write(step, train_metrics[i])
            if step % checkpoint_every == 0 or step == num_steps:
                save(state, step)
        eval_metrics: list[dict[str, float]] = [{} for _ in range(m)]
        sets = (list(member_eval_data) if member_eval_data is not None
                else [eval_data] * m if eval_data is not None else [])
        if sets:
            eval_step = make_eval_step(mesh)
            for i in range(m):
                eval_metrics[i] = evaluate(eval_step, state.member(i), sets[i], mesh,
                                           num_classes=num_classes)
                if step > start:
                    writers[i].write(step, eval_metrics[i], split="eval")
        failed = [int(v) for v in jax.device_get(state.failed_step)]
    finally:
        try:
            checkpointer.close()
        finally:
            for w in writers:
                w.close()
    return LockstepResult(state, train_metrics, eval_metrics, failed)
