"""The training loop: steps, evaluation, checkpoints, resume, metrics, progress."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxkd import models
from jaxkd.data._sharding import data_sharding, shard_batch
from jaxkd.training._checkpoint import Checkpointer
from jaxkd.training._metrics import MetricWriter, read_metrics
from jaxkd.training._objective import Objective
from jaxkd.training._sharding import DATA_AXIS, data_mesh, is_main_process, replicated
from jaxkd.training._step import (TrainState, TrainStep, init_train_state, make_eval_step,
                                  make_train_step)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the term and step."""


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      state: the final train state (``state.model()`` is the trained student).
      train_metrics: the last step's metrics (Python floats).
      eval_metrics: the last evaluation (``accuracy``, ``loss``), or {} without eval data.
    """
    state: TrainState
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]


EvalData = Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]]


def evaluate(eval_step, state: TrainState, batches: EvalData, mesh: Mesh) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``state``'s student over ``batches``.

    ``batches``: a re-iterable of ``{"image", "label"}`` batches (e.g. a list), or a
    function returning a fresh iterable (e.g. ``lambda: data.BatchIterator(test, 256,
    shuffle=False, drop_remainder=False, num_epochs=1)``). A batch whose size is not a
    multiple of the mesh size is zero-padded and masked.
    """
    if callable(batches):
        batches = batches()
    n = mesh.shape[DATA_AXIS]
    totals = {"correct": 0.0, "loss_sum": 0.0, "count": 0.0}
    for batch in batches:
        image, label = np.asarray(batch["image"]), np.asarray(batch["label"])
        size = label.shape[0]
        pad = (-size) % n
        mask = np.concatenate([np.ones(size, np.float32), np.zeros(pad, np.float32)])
        if pad:
            image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), image.dtype)])
            label = np.concatenate([label, np.zeros(pad, label.dtype)])
        out = jax.device_get(eval_step(state, shard_batch(
            {"image": image, "label": label, "mask": mask}, data_sharding(mesh))))
        for k in totals:
            totals[k] += float(out[k])
    if totals["count"] == 0:
        raise ValueError("evaluate got no examples.")
    return {"accuracy": totals["correct"] / totals["count"],
            "loss": totals["loss_sum"] / totals["count"]}


# Norms that turn non-finite when the loss is finite but its gradient is not (the update
# would then write NaN parameters into the next checkpoint).
_GUARDED_NORMS = ("grad_norm", "update_norm", "param_norm")


def _eval_records(workdir: str) -> list[dict]:
    try:
        return read_metrics(workdir, split="eval")
    except FileNotFoundError:
        return []


def _check_finite(metrics: Mapping[str, float], step: int) -> None:
    bad = {k: v for k, v in metrics.items() if k.startswith("loss") and not math.isfinite(v)}
    bad_norms = {k: metrics[k] for k in _GUARDED_NORMS
                 if k in metrics and not math.isfinite(metrics[k])}
    if bad_norms and not bad:
        raise NonFiniteLossError(
            f"non-finite gradient at step {step} although every loss term is finite: "
            + ", ".join(f"{k}={v}" for k, v in bad_norms.items())
            + ". A term differentiates through a non-smooth point (a norm or sqrt at 0?), "
            "or the learning rate is too high. Nothing of this step was saved.")
    if bad:
        terms = [k[len("loss/"):] for k in bad if k.startswith("loss/")]
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: "
            + (f"term(s) {terms} " if terms else "")
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + ". Lower the learning rate or the term's weight, or check the inputs.")


def train(student: nnx.Module, objective: Objective, optimizer: optax.GradientTransformation,
          train_data: Iterator[Mapping[str, Any]], *, workdir: str | os.PathLike,
          num_steps: int | None = None, teacher: nnx.Module | models.Split | None = None,
          eval_data: EvalData | None = None, mesh: Mesh | None = None,
          seed: int = 0, checkpoint_every: int = 1000, eval_every: int | None = None,
          log_every: int = 50, max_to_keep: int = 3, progress: bool | str = True,
          tensorboard: bool = True, config: Mapping[str, Any] | None = None,
          train_step: TrainStep | None = None) -> TrainResult:
    """Trains ``student`` (optionally from ``teacher``) on ``objective``; resumes if it can.

    If ``workdir/checkpoints`` holds a checkpoint, training resumes from the latest one:
    student parameters, BatchNorm statistics, optimizer state, step, PRNG key and the
    position of ``train_data`` (via its ``get_state`` / ``set_state``) are restored, so a
    run killed at any step and started again ends exactly as an uninterrupted run would.

    Args:
      student: the NNX model to train; its current parameters are the initialisation.
      objective: the weighted loss terms.
      optimizer: an optax transformation.
      train_data: an iterator of ``{"image": [B, H, W, C], "label": [B]}`` batches (host
        arrays of this process's rows, or arrays already sharded ``P("data")``). For
        exact resume it must have ``get_state() -> dict`` and ``set_state(dict)``.
      workdir: run directory: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``,
        ``config.json``.
      num_steps: total number of updates (counting those before a resume); None runs
        until ``train_data`` is exhausted: pass an iterator with ``num_epochs`` (e.g.
        ``data.BatchIterator(..., num_epochs=E)``) to train for ``E`` epochs.
      teacher: the frozen teacher, needed by the objective's teacher terms.
      eval_data: batches for :func:`evaluate` (a re-iterable or a function returning
        a fresh iterable), evaluated every ``eval_every`` steps and at the end.
      mesh: a ``("data",)`` mesh (default: all devices, :func:`data_mesh`, as in
        :func:`make_train_step`; with ``train_step``, its mesh).
      seed: the base PRNG seed of the step RNG.
      checkpoint_every: save every this many steps (and at the end).
      log_every: write train metrics every this many steps (and at the end).
      max_to_keep: checkpoints kept.
      progress: show a tqdm bar (process 0 only); a string is the bar's label. The bar
        starts after the first step, so its rate and ETA leave out compilation.
      tensorboard: also write TensorBoard files.
      config: JSON-serialisable run description, written to ``workdir/config.json``.
      train_step: a step built by :func:`make_train_step` with this ``objective`` and
        ``optimizer`` (and the teacher), to share one compiled step between runs on
        purpose; ``teacher`` must then be None. Default: built here.

    Returns:
      A :class:`TrainResult`.

    Raises:
      NonFiniteLossError: a loss term became NaN/inf (names the term and the step).
      CheckpointError: the latest checkpoint is corrupt or does not fit the student.
    """
    if num_steps is None and not hasattr(train_data, "__next__"):
        raise ValueError("num_steps=None needs train_data to be a finite iterator.")
    workdir = os.fspath(workdir)
    if train_step is not None:
        if train_step.objective is not objective or train_step.optimizer is not optimizer:
            raise ValueError("train_step was built with another objective or optimizer than "
                             "the ones passed to train; build it from the same objects.")
        if teacher is not None:
            raise ValueError("pass the teacher to make_train_step, not to train, when "
                             "giving a built train_step (it holds the placed teacher).")
        if mesh is not None and mesh != train_step.mesh:
            raise ValueError(f"mesh {mesh} differs from train_step's mesh {train_step.mesh}.")
        mesh = train_step.mesh
    mesh = data_mesh() if mesh is None else mesh
    main = is_main_process()
    if main:
        os.makedirs(workdir, exist_ok=True)
        if config is not None:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                json.dump(dict(config), f, indent=2, sort_keys=True, default=str)

    state = init_train_state(student, optimizer, key=jax.random.key(seed))
    state = jax.device_put(state, replicated(mesh))
    train_step = train_step or make_train_step(objective, optimizer, mesh, teacher=teacher)
    eval_step = make_eval_step(mesh) if eval_data is not None else None
    writer = MetricWriter(workdir, tensorboard=tensorboard)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep)
    can_save_data = hasattr(train_data, "get_state") and hasattr(train_data, "set_state")

    try:
        start = checkpointer.latest_step()
        if start is not None:
            state, data_state = checkpointer.restore(state)
            if can_save_data and data_state:
                train_data.set_state(data_state)
            writer.truncate_after(start)
        start = start or 0

        bar = None
        label = progress if isinstance(progress, str) else "train"

        step = last_logged = start
        train_metrics: dict[str, float] = {}
        eval_metrics: dict[str, float] = {}
        t0, examples = time.perf_counter(), 0
        last_saved = start
        while num_steps is None or step < num_steps:
            try:
                batch = next(train_data)
            except StopIteration:
                if num_steps is None:
                    break
                raise ValueError(f"train_data ran out at step {step} of {num_steps}; give an "
                                 "iterator that repeats, or num_steps=None.") from None
            batch = shard_batch(batch, data_sharding(mesh))
            state, metrics = train_step(state, batch)
            step += 1
            examples += batch["label"].shape[0]
            train_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            _check_finite(train_metrics, step)
            if progress and main and bar is None:  # after step 1: no compile in the ETA
                from tqdm.auto import tqdm
                bar = tqdm(total=num_steps, initial=step, desc=label, dynamic_ncols=True)
            elif bar is not None:
                bar.update(1)
            if bar is not None:
                bar.set_postfix(loss=f"{train_metrics['loss']:.4g}")
            last = num_steps is not None and step == num_steps
            if step % log_every == 0 or last:
                elapsed = time.perf_counter() - t0
                writer.write(step, {**train_metrics, "examples_per_sec": examples / elapsed})
                t0, examples, last_logged = time.perf_counter(), 0, step
            if eval_step is not None and eval_every and step % eval_every == 0 and not last:
                eval_metrics = evaluate(eval_step, state, eval_data, mesh)
                writer.write(step, eval_metrics, split="eval")
            if step % checkpoint_every == 0 or last:
                checkpointer.save(state, train_data.get_state() if can_save_data else None)
                last_saved = step
        if step != last_saved:  # the data ran out (num_steps=None) between checkpoints
            checkpointer.save(state, train_data.get_state() if can_save_data else None)
            if train_metrics and step != last_logged:
                writer.write(step, train_metrics)
        if eval_step is not None:
            eval_metrics = evaluate(eval_step, state, eval_data, mesh)
            # A re-run of a finished run trains nothing: its final evaluation is on file
            # unless the run was killed between the last checkpoint and that record.
            if step > start or not any(r["step"] == step for r in _eval_records(workdir)):
                writer.write(step, eval_metrics, split="eval")
        if bar is not None:
            bar.close()
        return TrainResult(state, train_metrics, eval_metrics)
    finally:
        checkpointer.close()
        writer.close()
