"""The training loop: steps, evaluation, checkpoints, resume, metrics, progress."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, TypeGuard

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxkd import models
from jaxkd.sharding import (DATA_AXIS, data_mesh, data_sharding, is_main_process, replicate,
                            replicated, shard_batch)
from jaxkd.training._checkpoint import Checkpointer
from jaxkd.training._io import atomic_write_json
from jaxkd.training._metrics import MetricWriter, read_metrics
from jaxkd.training._objective import Objective
from jaxkd.training._progress import progress_bar
from jaxkd.training._step import (TARGETS_KEY, TrainState, TrainStep, init_train_state,
                                  make_eval_step, make_train_step)


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


class RestorableData(Protocol):
    """Training data whose position a checkpoint saves and restores.

    :class:`jaxkd.data.BatchIterator` is one; :func:`train` checks for both methods.
    """

    def get_state(self) -> Mapping[str, Any]:
        """The position after the last yielded batch (JSON-safe)."""
        ...

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Moves to a position from :meth:`get_state`."""
        ...


def _is_restorable(data: object) -> TypeGuard[RestorableData]:
    return hasattr(data, "get_state") and hasattr(data, "set_state")


def _num_classes(state: TrainState, image: Any) -> int:
    """``K``, the student's number of logits, from its abstract output (no compute)."""
    fn = models.logits_fn(state.graphdef, state.params, state.rest)
    return int(jax.eval_shape(fn, jax.ShapeDtypeStruct(image.shape, image.dtype)).shape[-1])


@functools.lru_cache(maxsize=16)
def _jitted_label_range(mesh: Mesh):
    # The smallest and largest label of the *global* batch, replicated: every process
    # sees the same values and raises together (a check of each process's own rows
    # would stop one process and leave the others waiting in the step's collectives).
    return jax.jit(lambda label: jnp.stack([jnp.min(label), jnp.max(label)]),
                   out_shardings=replicated(mesh))


def _check_labels(label_range: Any, num_classes: int, where: str) -> None:
    lo, hi = (int(v) for v in label_range)
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"label {bad} in {where} is out of range: labels must be integers in "
            f"[0, {num_classes}) for a student with {num_classes} outputs (batch labels "
            f"span [{lo}, {hi}]). Fix the data or the student's number of classes.")


def _check_batch(batch: Any, where: str) -> None:
    """Structure, shapes and dtypes of a batch (metadata only: no device transfer)."""
    if not isinstance(batch, Mapping) or not {"image", "label"} <= batch.keys():
        keys = sorted(batch.keys()) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"{where} must be a mapping with 'image' and 'label' entries; "
                         f"got {keys}.")
    image, label = (v if hasattr(v, "shape") else np.asarray(v)  # e.g. lists
                    for v in (batch["image"], batch["label"]))
    if len(label.shape) != 1 or label.shape[0] == 0:
        raise ValueError(f"{where} has labels of shape {tuple(label.shape)}; expected "
                         "[B] with B >= 1 (an empty batch cannot be trained or evaluated).")
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"{where} has labels of dtype {label.dtype}; expected integer "
                         "class indices.")
    if len(image.shape) < 2 or image.shape[0] != label.shape[0]:
        raise ValueError(f"{where} has {tuple(image.shape)} images for "
                         f"{tuple(label.shape)} labels; expected [B, ...] and [B].")
    targets = batch.get(TARGETS_KEY)
    if targets is not None:
        rows = {_global_rows(leaf) for leaf in jax.tree.leaves(targets)}
        if rows != {_global_rows(label)}:
            raise ValueError(f"{where} has teacher targets of {sorted(rows)} rows for "
                             f"{_global_rows(label)} labels (global batch); they must be "
                             "the batch's targets.")


def _global_rows(a: Any) -> int:
    """Rows of the global batch: a placed array is global, a host array is this
    process's rows (``shard_batch`` concatenates the processes')."""
    if isinstance(a, jax.Array):
        return int(a.shape[0])
    return int(np.shape(a)[0]) * jax.process_count()


def _place(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """The batch sharded ``P("data")``, its teacher targets (a pytree) leaf by leaf."""
    sharding = data_sharding(mesh)
    targets = batch.get(TARGETS_KEY)
    placed = shard_batch({k: v for k, v in batch.items() if k != TARGETS_KEY}, sharding)
    if targets is not None:
        leaves, treedef = jax.tree.flatten(targets)
        on_devices = shard_batch({str(i): leaf for i, leaf in enumerate(leaves)}, sharding)
        placed[TARGETS_KEY] = jax.tree.unflatten(treedef, [on_devices[str(i)]
                                                           for i in range(len(leaves))])
    return placed


def evaluate(eval_step, state: TrainState, batches: EvalData, mesh: Mesh, *,
             num_classes: int | None = None) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``state``'s student over ``batches``.

    ``batches``: a re-iterable of ``{"image", "label"}`` batches (e.g. a list), or a
    function returning a fresh iterable (e.g. ``lambda: data.BatchIterator(test, 256,
    shuffle=False, drop_remainder=False, num_epochs=1)``). A batch whose size is not a
    multiple of the mesh size is zero-padded and masked. ``num_classes``: the student's
    number of logits ``K`` (default: read from its output shape).

    Raises:
      ValueError: an empty batch, no batches at all, or a label outside ``[0, K)``
        (names the batch and the value).
    """
    if callable(batches):
        batches = batches()
    n = mesh.shape[DATA_AXIS]
    totals = {"correct": 0.0, "loss_sum": 0.0, "count": 0.0}
    for index, batch in enumerate(batches):
        where = f"eval batch {index} (0-based)"
        _check_batch(batch, where)
        image, label = np.asarray(batch["image"]), np.asarray(batch["label"])
        if num_classes is None:
            num_classes = _num_classes(state, image)
        size = label.shape[0]
        pad = (-size) % n
        mask = np.concatenate([np.ones(size, np.float32), np.zeros(pad, np.float32)])
        if pad:
            image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), image.dtype)])
            label = np.concatenate([label, np.zeros(pad, label.dtype)])
        placed = shard_batch({"image": image, "label": label, "mask": mask},
                             data_sharding(mesh))
        out, label_range = jax.device_get(
            (eval_step(state, placed), _jitted_label_range(mesh)(placed["label"])))
        _check_labels(label_range, num_classes, where)
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
        exact resume it must have ``get_state() -> dict`` and ``set_state(dict)``. A
        batch may also carry ``"teacher_targets"``, the teacher's precomputed
        :class:`jaxkd.losses.TeacherTargets` on it (see :func:`make_train_step`): that
        step then does not run the teacher.
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
        starts after the first step, so its rate and ETA leave out compilation. When
        stderr is not a terminal (a log file), a plain line every tenth of the steps or
        every minute instead.
      tensorboard: also write TensorBoard files.
      config: JSON-serialisable run description, written to ``workdir/config.json``.
      train_step: a step built by :func:`make_train_step` with this ``objective`` and
        ``optimizer`` (and the teacher), to share one compiled step between runs on
        purpose; ``teacher`` must then be None. Default: built here.

    Returns:
      A :class:`TrainResult`.

    Raises:
      NonFiniteLossError: a loss term became NaN/inf (names the term and the step).
      CheckpointError: the latest checkpoint is corrupt or does not fit the student, or
        a checkpoint cannot be written (names the directory and the reason, e.g. "No
        space left on device").
      ValueError: ``workdir`` is empty or an existing file; a batch is empty, malformed,
        or has a label outside ``[0, K)`` for a student with ``K`` outputs (names the
        step and the value; checked on the global batch, so every process raises).
      OSError: ``metrics.jsonl`` cannot be written (names the file and the reason).
    """
    if num_steps is None and not hasattr(train_data, "__next__"):
        raise ValueError("num_steps=None needs train_data to be a finite iterator.")
    workdir = os.fspath(workdir)
    if not workdir:
        raise ValueError("workdir is empty; pass the run's directory (it will hold "
                         "checkpoints/, metrics.jsonl and config.json).")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} is an existing file, not a directory; pass "
                         "a directory path (it will hold checkpoints/, metrics.jsonl and "
                         "config.json).")
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
            atomic_write_json(os.path.join(workdir, "config.json"), dict(config), indent=2,
                              sort_keys=True, default=str)

    state = init_train_state(student, optimizer, key=jax.random.key(seed))
    state = replicate(state, mesh)
    train_step = train_step or make_train_step(objective, optimizer, mesh, teacher=teacher)
    eval_step = make_eval_step(mesh) if eval_data is not None else None
    writer = MetricWriter(workdir, tensorboard=tensorboard)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep)
    restorable = train_data if _is_restorable(train_data) else None

    try:
        start = checkpointer.latest_step()
        if start is not None:
            state, data_state = checkpointer.restore(state)
            if restorable is not None and data_state:
                restorable.set_state(data_state)
        start = start or 0
        # Records past the restored step (all of them without a checkpoint) come from a
        # killed run; the steps are replayed, so their records would repeat.
        writer.truncate_after(start)

        bar = None
        label = progress if isinstance(progress, str) else "train"

        step = last_logged = start
        train_metrics: dict[str, float] = {}
        eval_metrics: dict[str, float] = {}
        t0, examples = time.perf_counter(), 0
        last_saved = start
        num_classes = None
        while num_steps is None or step < num_steps:
            try:
                batch = next(train_data)
            except StopIteration:
                if num_steps is None:
                    break
                raise ValueError(f"train_data ran out at step {step} of {num_steps}; give an "
                                 "iterator that repeats, or num_steps=None.") from None
            where = f"the batch of step {step + 1}"
            _check_batch(batch, f"train_data's batch for step {step + 1}")
            batch = _place(batch, mesh)
            if num_classes is None:
                num_classes = _num_classes(state, batch["image"])
            # Dispatched with the step and fetched with its metrics: no extra sync. A bad
            # label raises before the step's state is logged or saved.
            label_range = _jitted_label_range(mesh)(batch["label"])
            state, metrics = train_step(state, batch)
            step += 1
            examples += batch["label"].shape[0]
            metrics, label_range = jax.device_get((metrics, label_range))
            _check_labels(label_range, num_classes, where)
            train_metrics = {k: float(v) for k, v in metrics.items()}
            _check_finite(train_metrics, step)
            if progress and main and bar is None:  # after step 1: no compile in the ETA
                bar = progress_bar(num_steps, initial=step, desc=label)
            elif bar is not None:
                bar.update(1)
            if bar is not None:
                bar.set_postfix(loss=f"{train_metrics['loss']:.4g}")
            last = num_steps is not None and step == num_steps
            if step % log_every == 0 or last:
                elapsed = time.perf_counter() - t0
                writer.write(step, {**train_metrics, "examples_per_sec": examples / elapsed})
                t0, examples, last_logged = time.perf_counter(), 0, step
            if (eval_step is not None and eval_data is not None and eval_every
                    and step % eval_every == 0 and not last):
                eval_metrics = evaluate(eval_step, state, eval_data, mesh,
                                        num_classes=num_classes)
                writer.write(step, eval_metrics, split="eval")
            if step % checkpoint_every == 0 or last:
                checkpointer.save(state, restorable.get_state() if restorable is not None else None)
                last_saved = step
        if step != last_saved:  # the data ran out (num_steps=None) between checkpoints
            checkpointer.save(state, restorable.get_state() if restorable is not None else None)
            if train_metrics and step != last_logged:
                writer.write(step, train_metrics)
        if eval_step is not None and eval_data is not None:
            eval_metrics = evaluate(eval_step, state, eval_data, mesh,
                                    num_classes=num_classes)
            # A re-run of a finished run trains nothing: its final evaluation is on file
            # unless the run was killed between the last checkpoint and that record.
            if step > start or not any(r["step"] == step for r in _eval_records(workdir)):
                writer.write(step, eval_metrics, split="eval")
        if bar is not None:
            bar.close()
        result = TrainResult(state, train_metrics, eval_metrics)
    except BaseException:
        # Already failing: a pending save's error (orbax raises it again on close) must
        # not hide the first one.
        try:
            checkpointer.close()
        except Exception:
            pass
        finally:
            writer.close()
        raise
    try:
        checkpointer.close()
    finally:
        writer.close()
    return result
