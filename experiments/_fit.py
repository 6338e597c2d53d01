"""Training one network of a study (a cell's student or the teacher) and scoring it.

:func:`fit` runs :func:`jaxkd.training.train` in the network's run directory with the
validation split as ``eval_data`` and a checkpoint at every evaluation, then reads the
validation curve back, restores the best-on-validation checkpoint and evaluates it and
the last state on the test split (the test split never chooses anything). ``result.json``
marks the run finished; then only its last checkpoint is kept (``_runs.prune``). The
run's *run config* (``_study``: what determines its result), given by the caller, goes
into its ``config.json`` when it starts and its ``result.json`` when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import optax
from flax import nnx
from ml_collections import ConfigDict

from experiments import _data, _runs
from experiments.configs._base import ConfigError
from jaxkd import data, models, training


def build_model(spec: ConfigDict, *, image_shape: Sequence[int], num_classes: int,
                seed: int) -> models.Classifier:
    """``jaxkd.models.create`` from a config spec: its name and the sizes that model takes."""
    sizes = {k: spec[k] for k in models.size_keywords(spec.name)}
    if spec.name == "small_cnn":  # the spec's hidden is a tuple (the MLP's layers)
        hidden = tuple(spec.hidden) if not isinstance(spec.hidden, int) else (spec.hidden,)
        if len(hidden) != 1:
            raise ConfigError(f"small_cnn has one hidden layer; got hidden={hidden}.")
        sizes["hidden"] = hidden[0]
    return models.create(spec.name, input_shape=tuple(image_shape), num_classes=num_classes,
                         rngs=nnx.Rngs(seed), **sizes)


def build_optimizer(config: ConfigDict) -> optax.GradientTransformation:
    """AdamW or SGD with Nesterov momentum, cosine-decayed over ``num_steps``."""
    if config.warmup_steps:
        schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate,
                                                      config.warmup_steps, config.num_steps)
    else:
        schedule = optax.cosine_decay_schedule(config.learning_rate, config.num_steps)
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return optax.chain(optax.add_decayed_weights(config.weight_decay),
                           optax.sgd(schedule, momentum=config.momentum, nesterov=True))
    raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose 'adamw' or 'sgd'.")


def evaluate(state: training.TrainState, batches, mesh) -> float:
    """Accuracy of ``state``'s student on ``batches``."""
    return training.evaluate(training.make_eval_step(mesh), state, batches, mesh)["accuracy"]


def fit(run_dir: str, *, student: nnx.Module, step: training.TrainStep,
        train_cfg: ConfigDict, train_set: data.Dataset, validation: data.Dataset,
        test: data.Dataset, seed: int, augment: bool = False, flip: bool = False,
        pad_value=0.0, progress: bool | str = False, tensorboard: bool = False,
        describe: Mapping[str, Any] | None = None,
        run_config: Mapping[str, Any] | None = None,
        feed: Callable[[Iterator[dict[str, Any]]], Iterator[dict[str, Any]]] | None = None
        ) -> dict[str, Any]:
    """Trains ``student`` with ``step`` in ``run_dir``; returns (and saves) its result.

    ``train_cfg.num_evals`` evaluations on ``validation`` (a checkpoint each); the test
    accuracy of the last state and of the best-on-validation checkpoint (ties: the earlier
    step) and ``seconds``. A finished ``run_dir`` is returned as it is, a damaged one
    computed again. ``describe`` and ``run_config`` are recorded with it; ``feed`` wraps the
    restorable train batches (``_targets.SharedTargets.feed``).
    """
    result = _runs.read_result(run_dir)
    if result is not None:
        return result
    _runs.discard_damaged_result(run_dir)
    describe = {**dict(describe or {}),
                **({_runs.RUN_CONFIG: _runs.canonical(dict(run_config))}
                   if run_config is not None else {})}
    num_steps, mesh = train_cfg.num_steps, step.mesh
    check_batch_size(train_cfg, mesh)
    every = eval_every(train_cfg)
    val_batches = _data.eval_batches(validation.images, validation.labels,
                                     train_cfg.eval_batch_size)
    t0 = time.perf_counter()
    batches = _data.train_batches(train_set, batch_size=train_cfg.batch_size, seed=seed,
                                  augment=augment, flip=flip, pad_value=pad_value)
    out = training.train(
        student, step.objective, step.optimizer, feed(batches) if feed else batches,
        workdir=run_dir, num_steps=num_steps, eval_data=val_batches, seed=seed,
        checkpoint_every=every, eval_every=every, log_every=every, max_to_keep=None,
        progress=progress, tensorboard=tensorboard, config=describe, train_step=step)
    return score(run_dir, out.state, train_cfg=train_cfg, test=test, mesh=mesh,
                 train_examples=len(train_set), started=t0, describe=describe)


def check_batch_size(train_cfg: ConfigDict, mesh) -> None:
    """Refuses a batch that does not divide over the data mesh's devices."""
    devices = mesh.shape[training.DATA_AXIS]
    if train_cfg.batch_size % devices:
        raise ConfigError(f"batch_size={train_cfg.batch_size} does not divide by the {devices} "
                          f"devices of the data mesh; change the batch size or set "
                          f"--config.num_devices.")


def eval_every(train_cfg: ConfigDict) -> int:
    """The steps between evaluations (and checkpoints) of a run trained with ``train_cfg``."""
    return max(1, train_cfg.num_steps // max(1, train_cfg.num_evals))


def score(run_dir: str, state: training.TrainState, *, train_cfg: ConfigDict,
          test: data.Dataset, mesh, train_examples: int, started: float,
          describe: Mapping[str, Any]) -> dict[str, Any]:
    """Scores the trained ``state`` of ``run_dir`` and writes its ``result.json``.

    The validation curve is read from ``run_dir``'s ``metrics.jsonl``; the last state and
    the best-on-validation checkpoint (ties: the earlier step) are evaluated on ``test``;
    then only the last checkpoint is kept. ``seconds`` counts from ``started``.
    """
    num_steps = train_cfg.num_steps
    curve = {}
    for record in training.read_metrics(run_dir, "eval"):
        curve[int(record["step"])] = float(record["accuracy"])  # a resume rewrites a step
    best_step = max(sorted(curve), key=lambda s: curve[s])
    test_batches = _data.eval_batches(test.images, test.labels, train_cfg.eval_batch_size)
    last_test = evaluate(state, test_batches, mesh)
    if best_step == num_steps:
        best_test = last_test
    else:
        best_test = evaluate(restore_state(run_dir, state, step=best_step),
                             test_batches, mesh)
    result = {
        "last": {"step": num_steps, "validation": curve[num_steps], "test": last_test},
        "best": {"step": best_step, "validation": curve[best_step], "test": best_test},
        "validation_curve": {str(k): v for k, v in sorted(curve.items())},
        "train_examples": train_examples,
        "seconds": time.perf_counter() - started,
        "devices": mesh.shape[training.DATA_AXIS],
        **describe,
    }
    _runs.write_json(_runs.result_path(run_dir), result)
    _runs.prune(run_dir, keep_step=num_steps)
    return result


def restore_state(run_dir: str, template: training.TrainState,
                  step: int | None = None) -> training.TrainState:
    """The checkpointed state of ``run_dir`` (its latest step by default)."""
    with training.Checkpointer(_runs.checkpoint_dir(run_dir)) as ckpt:
        state, _ = ckpt.restore(template, step=step)
    return state


def template_state(model: nnx.Module, train_cfg: ConfigDict, mesh) -> training.TrainState:
    """A fresh state shaped like a checkpoint of ``model`` trained with ``train_cfg``."""
    state = training.init_train_state(model, build_optimizer(train_cfg),
                                      key=jax.random.key(0))
    return jax.device_put(state, training.replicated(mesh))


def get_teacher(run_dir: str, *, spec: ConfigDict, train_cfg: ConfigDict,
                prepared: _data.PreparedData, mesh, seed: int, augment: bool = False,
                flip: bool = False, tensorboard: bool = False,
                run_config: Mapping[str, Any] | None = None
                ) -> tuple[models.Split, dict[str, Any]]:
    """Trains the teacher with cross-entropy on all of the train split, once; a finished
    ``run_dir`` (this work directory's or another's) is restored at its own last step."""
    def make():
        return build_model(spec, image_shape=prepared.image_shape,
                           num_classes=prepared.num_classes, seed=seed)
    splits = prepared.splits
    step = training.make_train_step(training.Objective(training.cross_entropy()),
                                    build_optimizer(train_cfg), mesh)
    result = fit(run_dir, student=make(), step=step, train_cfg=train_cfg,
                 train_set=splits.train, validation=splits.validation, test=splits.test,
                 seed=seed, augment=augment, flip=flip, pad_value=prepared.background,
                 progress="teacher",
                 tensorboard=tensorboard, run_config=run_config,
                 describe={"role": "teacher", "model": spec.to_dict()})
    state = restore_state(run_dir, template_state(make(), train_cfg, mesh))
    if int(state.step) != result["last"]["step"]:
        raise ConfigError(f"teacher {run_dir}: its last checkpoint is step {int(state.step)} "
                          f"but its result.json reports step {result['last']['step']}.")
    return models.Split(state.graphdef, state.params, state.rest), result
