"""What the three studies share: the command line, data, models, objectives and sweeps.

* Command line: ``--workdir``, ``--config=<path or name>`` (a name is a file of
  ``experiments/configs/``), ``--config.<key>=<value>`` overrides; an unknown key is an
  error that lists the valid keys.
* A *cell* is one trained student (one method x examples-per-class x seed). It runs
  :func:`jaxkd.training.train` in its own directory with the validation split as
  ``eval_data`` and a checkpoint at every evaluation, then reads the validation curve
  back, restores the best-on-validation checkpoint and evaluates it and the last state
  on the test split. ``result.json`` marks a finished cell; a re-run skips it, and a
  cell killed midway resumes from its last checkpoint (``train`` does that).
* Compile once per method: every cell of a method has the same shapes (a fixed batch
  size and number of steps, whatever the subset size) and the same objective and
  optimizer objects, so :func:`jaxkd.training.make_train_step`'s cache hands every cell
  the method's first compiled step; the JAX persistent
  compilation cache (``<workdir>/jax_cache``) keeps compiled programs across runs.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from jaxkd import data, models, training

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RESULT_FILE = "result.json"


class ConfigError(ValueError):
    """A bad command line or configuration; the message says what is valid."""


# ----------------------------------------------------------------------------------------
# Configuration and command line.


def load_config(spec: str) -> ConfigDict:
    """Loads ``get_config()`` from a config file path or a name in ``experiments/configs``."""
    path = Path(spec)
    if not path.suffix:
        path = CONFIG_DIR / f"{spec}.py"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
        raise ConfigError(f"no config file {str(path)!r}; give a path to a .py file with "
                          f"get_config() or one of the names {names}.")
    module_spec = importlib.util.spec_from_file_location(f"_jaxkd_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(path)!r} has no get_config().")
    config = module.get_config()
    config.lock()  # no new keys: a typo in an override is an error, not a silent no-op
    return config


def flat_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    """All leaf keys of ``config`` in dotted form (``train.num_steps``)."""
    keys = []
    for key, value in config.items():
        if isinstance(value, ConfigDict):
            keys.extend(flat_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return sorted(keys)


def _parse_item(text: str, like: Any, *, in_list: bool = False) -> Any:
    text = text.strip()
    if isinstance(like, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            if in_list:
                return text  # e.g. "all" among examples-per-class counts
            raise ValueError(f"expected an integer, got {text!r}") from None
    if isinstance(like, float):
        return float(text)
    if isinstance(like, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_value(text: str, current: Any) -> Any:
    """Parses an override string to the type of the current value.

    Tuples and lists are comma-separated (``5,10,all``; an empty string is empty); each
    element takes the type of the current first element.
    """
    if isinstance(current, (tuple, list)):
        if text.strip() in ("", "()", "[]"):
            return type(current)()
        text = text.strip().strip("()[]")
        like = current[0] if current else None
        items = [_parse_item(t, like if like is not None else object(), in_list=True)
                 for t in text.split(",") if t.strip()]
        return type(current)(items)
    if current is None:
        return _parse_item(text, object())
    return _parse_item(text, current)


def apply_override(config: ConfigDict, key: str, text: str) -> None:
    """Sets the dotted ``key`` of ``config`` from the command-line string ``text``."""
    valid = flat_keys(config)
    if key not in valid:
        raise ConfigError(f"unknown config key {key!r}. Valid keys:\n  " + "\n  ".join(valid))
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    try:
        value = parse_value(text, node[leaf])
        with node.ignore_type():
            node[leaf] = value
    except (ValueError, TypeError) as e:
        raise ConfigError(f"bad value {text!r} for config key {key!r} (currently "
                          f"{node[leaf]!r}): {e}") from e


USAGE = """usage: python -m experiments.{study} [--workdir DIR] [--config PATH_OR_NAME]
                     [--config.KEY=VALUE ...]

  --workdir DIR        where cells, checkpoints and results go (default: {workdir});
                       re-running with the same DIR resumes and skips finished cells.
  --config SPEC        a config file (.py with get_config()) or a name in
                       experiments/configs/ (default: {config}).
  --config.KEY=VALUE   override one key, e.g. --config.dataset=cifar100,
                       --config.num_seeds=3, --config.examples_per_class=10,50,all.
  --help               this message and the config's keys.
"""


def parse_args(argv: Sequence[str] | None, *, study: str, default_config: str,
               default_workdir: str) -> tuple[ConfigDict, str]:
    """``(config, workdir)`` from ``argv`` (``sys.argv[1:]`` by default).

    Raises:
      ConfigError: an unknown flag or config key (the message lists the valid ones), or a
        value that does not parse.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = USAGE.format(study=study, workdir=default_workdir, config=default_config)
    workdir, config_spec, overrides = default_workdir, default_config, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("-h", "--help"):
            config = load_config(config_spec)
            print(usage + "\nconfig keys (" + config_spec + "):\n" + "\n".join(
                f"  {k} = {_get(config, k)!r}" for k in flat_keys(config)))
            raise SystemExit(0)
        if name in ("--workdir", "--config") or name.startswith("--config."):
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{name} needs a value.\n{usage}")
                value = argv[i + 1]
                i += 1
            if name == "--workdir":
                workdir = value
            elif name == "--config":
                config_spec = value
            else:
                overrides.append((name[len("--config."):], value))
        else:
            raise ConfigError(f"unknown argument {arg!r}.\n{usage}")
        i += 1
    config = load_config(config_spec)
    for key, value in overrides:
        apply_override(config, key, value)
    return config, workdir


def command_line(study: str, argv: Sequence[str] | None) -> str:
    """The command that ran ``study`` (for the results' header)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m experiments." + study, *argv])


def _get(config: ConfigDict, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def main(study: str, run: Callable[..., dict[str, Any]], *, default_config: str,
         default_workdir: str, argv: Sequence[str] | None = None) -> None:
    """The command line of every study: parse, ``run(config, workdir, command=...)``, report.

    A bad command line or configuration exits with its message, not a traceback.
    """
    try:
        config, workdir = parse_args(argv, study=study, default_config=default_config,
                                     default_workdir=default_workdir)
        run(config, workdir, command=command_line(study, argv))
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"results: {os.path.join(workdir, 'results.md')}")


def write_summary(workdir: str, study: str, summary: dict[str, Any], *, config: ConfigDict,
                  started: float, seconds: Sequence[float],
                  command: str | None) -> dict[str, Any]:
    """Adds the bookkeeping every study reports (wall and training seconds, config,
    versions, command) to ``summary`` and writes the study's report files."""
    from experiments import _report
    summary.update(wall_seconds=time.perf_counter() - started, train_seconds=sum(seconds),
                   config=config_json(config), versions=versions())
    if command:
        summary["command"] = command
    _report.write(workdir, study, summary)
    return summary


def config_json(config: ConfigDict) -> dict[str, Any]:
    """A JSON-safe dict of ``config`` (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def enable_compilation_cache(workdir: str) -> None:
    """Caches compiled XLA programs in ``workdir/jax_cache`` (unless a cache is set).

    ``train`` builds a new jitted step for every cell; with the cache, every cell after
    the first of a method loads the compiled program instead of compiling it again.
    """
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir),
                                                               "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# ----------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Normalised splits plus what the noise study needs to corrupt raw pixels.

    Attributes:
      splits: train / validation / test, normalised with the train statistics.
      mean, std: ``[C]`` the normalisation statistics.
      raw_test: ``[N, H, W, C]`` test images in ``[0, 1]`` before normalisation.
    """
    splits: data.Splits
    mean: np.ndarray
    std: np.ndarray
    raw_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.splits.train.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.splits.train.image_shape


def _normalized(dataset: data.Dataset, mean, std) -> data.Dataset:
    return dataclasses.replace(dataset, images=np.asarray(data.normalize(dataset.images,
                                                                         mean, std)))


def class_subset(dataset: data.Dataset, classes: Sequence[int]) -> data.Dataset:
    """The examples of ``classes``, relabelled ``0..len(classes)-1`` in the given order."""
    classes = [int(c) for c in classes]
    keep = np.flatnonzero(np.isin(dataset.labels, classes))
    relabel = np.full(dataset.num_classes, -1, np.int32)
    relabel[classes] = np.arange(len(classes), dtype=np.int32)
    return data.Dataset(images=dataset.images[keep], labels=relabel[dataset.labels[keep]],
                        num_classes=len(classes), name=f"{dataset.name}[{classes}]",
                        class_names=tuple(dataset.class_names[c] for c in classes),
                        source_index=dataset.source_index[keep])


def load_data(name: str, *, data_dir: str = "", image_size: Sequence[int] = (),
              validation_fraction: float = 0.1, classes: Sequence[int] = (),
              stats_from: tuple[np.ndarray, np.ndarray] | None = None) -> PreparedData:
    """Loads ``name`` (see :func:`jaxkd.data.load`), keeps ``classes`` and normalises.

    The validation split is carved with seed 0 whatever the experiment seed, so every
    cell selects its best step on the same validation set. Statistics come from the
    (class-restricted) train split unless ``stats_from`` gives them.
    """
    splits = data.load(name, data_dir=data_dir or None,
                       validation_fraction=validation_fraction, seed=0,
                       image_size=tuple(image_size) if image_size else None)
    if classes:
        splits = data.Splits(*(class_subset(s, classes) for s in
                               (splits.train, splits.validation, splits.test)))
    mean, std = stats_from if stats_from is not None else data.normalization_stats(
        splits.train.images)
    normalized = data.Splits(*(_normalized(s, mean, std) for s in
                               (splits.train, splits.validation, splits.test)))
    return PreparedData(normalized, mean, std, splits.test.images)


def subset(dataset: data.Dataset, examples_per_class: int | str, seed: int) -> data.Dataset:
    """``examples_per_class`` per class (nested in ``seed``), or everything for ``"all"``."""
    if examples_per_class == "all":
        return dataset
    return data.few_shot_subset(dataset, int(examples_per_class), seed=seed)


def eval_batches(dataset: data.Dataset, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Re-iterable, in-order evaluation batches (the last may be smaller; evaluate pads)."""
    return [{"image": dataset.images[i:i + batch_size],
             "label": dataset.labels[i:i + batch_size]}
            for i in range(0, len(dataset), batch_size)]


class AugmentedBatches:
    """A :class:`jaxkd.data.BatchIterator` whose batches are randomly cropped (and flipped).

    The augmentation key of a batch is ``fold_in(key(seed), position)`` where position is
    the iterator's ``(epoch, index)`` before the batch, so ``get_state``/``set_state``
    resume the same augmented sequence. (``jaxkd.training.train`` has no augmentation
    hook, so it happens here, on the host side of the step.)
    """

    def __init__(self, batches: data.BatchIterator, *, seed: int, crop_padding: int,
                 flip: bool):
        self._batches = batches
        self._key = jax.random.key(seed)
        self._augment = jax.jit(functools.partial(data.augment, crop_padding=crop_padding,
                                                  flip=flip))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        position = self._batches.get_state()
        batch = next(self._batches)
        key = jax.random.fold_in(jax.random.fold_in(self._key, position["epoch"]),
                                 position["index"])
        return {**batch, "image": np.asarray(self._augment(key, batch["image"]))}

    def get_state(self) -> dict[str, int]:
        return self._batches.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._batches.set_state(state)


def train_batches(dataset: data.Dataset, *, batch_size: int, seed: int,
                  augment: bool = False, crop_padding: int = 4,
                  flip: bool = False) -> Iterator[dict[str, Any]]:
    """Endless shuffled batches of ``dataset`` (restorable), optionally augmented."""
    if batch_size > len(dataset):
        raise ConfigError(f"batch_size={batch_size} exceeds the {len(dataset)} training "
                          f"examples; lower train.batch_size or raise examples_per_class.")
    batches = data.BatchIterator(dataset, batch_size, seed=seed)
    if augment:
        return AugmentedBatches(batches, seed=seed, crop_padding=crop_padding, flip=flip)
    return batches


# ----------------------------------------------------------------------------------------
# Models.

MODEL_NAMES = ("mlp", "small_cnn", "vgg4", "vgg9", "wrn", "resnet18", "resnet34")


def build_model(spec: ConfigDict, *, image_shape: Sequence[int], num_classes: int,
                seed: int) -> models.Classifier:
    """A model of the zoo from a config spec (``name`` plus its size keys)."""
    rngs = nnx.Rngs(seed)
    h, w, c = image_shape
    name = spec.name
    if name == "mlp":
        return models.MLP(h * w * c, num_classes, hidden=tuple(spec.hidden), rngs=rngs)
    if name == "small_cnn":
        return models.SmallCNN(c, num_classes, width=spec.width, hidden=spec.hidden[0],
                               rngs=rngs)
    if name == "vgg4":
        return models.vgg4(c, num_classes, width=spec.width, rngs=rngs)
    if name == "vgg9":
        return models.vgg9(c, num_classes, width=spec.width, rngs=rngs)
    if name == "wrn":
        return models.WideResNet(spec.depth, spec.widen_factor, c, num_classes,
                                 base_width=spec.width, rngs=rngs)
    if name in ("resnet18", "resnet34"):
        make = models.resnet18 if name == "resnet18" else models.resnet34
        return make(c, num_classes, width=spec.width, stem=spec.stem, rngs=rngs)
    raise ConfigError(f"unknown model {name!r}; choose one of {MODEL_NAMES}.")


def model_spec(name: str, *, width: int = 16, hidden: Sequence[int] = (64,), depth: int = 16,
               widen_factor: int = 1, stem: str = "cifar") -> ConfigDict:
    """A model spec for a config file (unused keys are ignored by that model)."""
    return ConfigDict(dict(name=name, width=width, hidden=tuple(hidden), depth=depth,
                           widen_factor=widen_factor, stem=stem))


# ----------------------------------------------------------------------------------------
# Objectives: a method is loss-term names joined by "+", e.g. "kd+jacobian+ce".

TERM_LABELS = {
    "ce": "CE",
    "kd": "KD",
    "logits": "match activations",
    "jacobian": "Jacobians",
    "vjp": "Jacobians (VJP projection)",
    "jvp": "Jacobians (JVP projection)",
    "noisy": "noisy distillation",
    "attention": "attention",
    "attention_jacobian": "attention Jacobians",
}

# The paper's row names for the methods that are exactly its rows.
PAPER_LABELS = {
    "ce": "cross-entropy only",
    "logits+ce": "match activations + CE",
    "logits+jacobian+ce": "match activations + Jacobians + CE",
    "logits": "match activations only",
    "logits+jacobian": "match activations + Jacobians",
}


def method_terms(method: str) -> list[str]:
    terms = [t.strip() for t in method.split("+") if t.strip()]
    unknown = [t for t in terms if t not in TERM_LABELS]
    if not terms or unknown:
        raise ConfigError(f"method {method!r}: unknown loss term(s) {unknown}; a method is "
                          f"terms joined by '+' from {sorted(TERM_LABELS)}.")
    return terms


def method_label(method: str) -> str:
    """A readable name: the paper's row name where it has one, else the terms joined."""
    return PAPER_LABELS.get(method) or " + ".join(TERM_LABELS[t] for t in method_terms(method))


def build_objective(method: str, loss: ConfigDict) -> training.Objective:
    """The :class:`jaxkd.training.Objective` of ``method`` with ``loss``'s weights."""
    make = {
        "ce": lambda: training.cross_entropy(loss.ce_weight),
        "kd": lambda: training.distillation(loss.kd_weight, temperature=loss.temperature),
        "logits": lambda: training.logit_matching(loss.logits_weight),
        "jacobian": lambda: training.jacobian_matching(
            loss.jacobian_weight, outputs=loss.jacobian_outputs, k=loss.jacobian_k,
            normalize=loss.jacobian_normalize),
        "vjp": lambda: training.vjp_projection(loss.vjp_weight, num_probes=loss.num_probes,
                                               distribution=loss.probe_distribution),
        "jvp": lambda: training.jvp_projection(loss.jvp_weight, num_probes=loss.num_probes,
                                               distribution=loss.probe_distribution),
        "noisy": lambda: training.noisy_distillation(
            loss.noisy_weight, sigma=loss.noisy_sigma, num_samples=loss.noisy_samples,
            kind=loss.noisy_kind, temperature=loss.temperature),
        "attention": lambda: training.attention_transfer(
            loss.attention_weight, layers=tuple(loss.attention_layers)),
        "attention_jacobian": lambda: training.attention_jacobian(
            loss.attention_jacobian_weight, layer=loss.attention_jacobian_layer),
    }
    return training.Objective(*(make[t]() for t in method_terms(method)))


def loss_config(**overrides: Any) -> ConfigDict:
    """The loss hyper-parameters every study shares (see docs/experiments.md for why)."""
    config = ConfigDict(dict(
        ce_weight=1.0,
        kd_weight=1.0, temperature=4.0,
        logits_weight=0.1,
        jacobian_weight=1.0, jacobian_outputs="teacher_top1", jacobian_k=1,
        jacobian_normalize=True,
        vjp_weight=0.01, jvp_weight=0.01, num_probes=1, probe_distribution="rademacher",
        noisy_weight=0.1, noisy_sigma=0.3, noisy_samples=1, noisy_kind="squared",
        attention_weight=10.0, attention_layers=("block1", "block2"),
        attention_jacobian_weight=1.0, attention_jacobian_layer="block2",
    ))
    config.update(overrides)
    return config


# ----------------------------------------------------------------------------------------
# Optimisation.


def train_config(**overrides: Any) -> ConfigDict:
    """How one network is trained: steps, batch, optimiser, evaluations."""
    config = ConfigDict(dict(
        num_steps=300, batch_size=40, optimizer="adamw", learning_rate=3e-3,
        weight_decay=1e-4, momentum=0.9, warmup_steps=0, num_evals=5, eval_batch_size=1000,
    ))
    config.update(overrides)
    return config


def build_optimizer(config: ConfigDict) -> optax.GradientTransformation:
    """AdamW or SGD with momentum, cosine-decayed over ``num_steps`` (optional warmup).

    Equal configs give the same (cached) transformation object, so that cells trained
    with it share one compiled step (``make_train_step`` caches on the objects).
    """
    return _build_optimizer(config.to_json(sort_keys=True))


@functools.lru_cache(maxsize=None)
def _build_optimizer(config_json: str) -> optax.GradientTransformation:
    config = ConfigDict(json.loads(config_json))
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


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
    """The data mesh over ``num_devices`` devices (0: all)."""
    return training.data_mesh(num_devices or None)


@functools.lru_cache(maxsize=None)
def _eval_step(mesh: jax.sharding.Mesh):
    return training.make_eval_step(mesh)


def evaluate(state: training.TrainState, batches, mesh) -> float:
    """Accuracy of ``state``'s student on ``batches``."""
    return training.evaluate(_eval_step(mesh), state, batches, mesh)["accuracy"]


# ----------------------------------------------------------------------------------------
# One trained network (a cell or a teacher).


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes atomically (a killed run never leaves a half-written result)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def is_done(run_dir: str | os.PathLike) -> bool:
    return os.path.exists(os.path.join(os.fspath(run_dir), RESULT_FILE))


def fit(run_dir: str, *, student: nnx.Module, objective: training.Objective,
        train_cfg: ConfigDict, train_set: data.Dataset, validation: data.Dataset,
        test: data.Dataset, mesh, seed: int, teacher=None, augment: bool = False,
        flip: bool = False, progress: bool = False, tensorboard: bool = False,
        describe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Trains one network with :func:`jaxkd.training.train`; returns (and saves) its result.

    Evaluates on ``validation`` ``train_cfg.num_evals`` times (a checkpoint each time),
    then reports test accuracy of the last state and of the best-on-validation
    checkpoint (ties go to the earlier step). The test split never chooses anything.
    A finished ``run_dir`` (``result.json``) is returned as is.
    """
    result_path = os.path.join(run_dir, RESULT_FILE)
    if os.path.exists(result_path):
        return read_json(result_path)
    num_steps = train_cfg.num_steps
    devices = mesh.shape[training.DATA_AXIS]
    if train_cfg.batch_size % devices:
        raise ConfigError(f"batch_size={train_cfg.batch_size} does not divide by the {devices} "
                          f"devices of the data mesh; change the batch size or set "
                          f"--config.num_devices.")
    every = max(1, num_steps // max(1, train_cfg.num_evals))
    val_batches = eval_batches(validation, train_cfg.eval_batch_size)
    t0 = time.perf_counter()
    out = training.train(
        student, objective, build_optimizer(train_cfg),
        train_batches(train_set, batch_size=train_cfg.batch_size, seed=seed,
                      augment=augment, flip=flip),
        workdir=run_dir, num_steps=num_steps, teacher=teacher, eval_data=val_batches,
        mesh=mesh, seed=seed, checkpoint_every=every, eval_every=every, log_every=every,
        max_to_keep=None, progress=progress, tensorboard=tensorboard,
        config=dict(describe or {}))
    seconds = time.perf_counter() - t0
    curve = {}
    for record in training.read_metrics(run_dir, "eval"):
        curve[int(record["step"])] = float(record["accuracy"])  # a resume rewrites a step
    best_step = max(sorted(curve), key=lambda s: curve[s])
    test_batches = eval_batches(test, train_cfg.eval_batch_size)
    last_test = evaluate(out.state, test_batches, mesh)
    if best_step == num_steps:
        best_test = last_test
    else:
        with training.Checkpointer(os.path.join(run_dir, "checkpoints")) as ckpt:
            best_state, _ = ckpt.restore(out.state, step=best_step)
        best_test = evaluate(best_state, test_batches, mesh)
    result = {
        "last": {"step": num_steps, "validation": curve[num_steps], "test": last_test},
        "best": {"step": best_step, "validation": curve[best_step], "test": best_test},
        "validation_curve": {str(k): v for k, v in sorted(curve.items())},
        "train_examples": len(train_set),
        "seconds": seconds,
        **dict(describe or {}),
    }
    write_json(result_path, result)
    return result


def restore_state(run_dir: str, template: training.TrainState,
                  step: int | None = None) -> training.TrainState:
    """The checkpointed state of ``run_dir`` (latest step by default)."""
    with training.Checkpointer(os.path.join(run_dir, "checkpoints")) as ckpt:
        state, _ = ckpt.restore(template, step=step)
    return state


def template_state(model: nnx.Module, train_cfg: ConfigDict, mesh) -> training.TrainState:
    """A fresh state shaped like a checkpoint of ``model`` trained with ``train_cfg``."""
    state = training.init_train_state(model, build_optimizer(train_cfg),
                                      key=jax.random.key(0))
    return jax.device_put(state, training.replicated(mesh))


def as_teacher(state: training.TrainState) -> models.Split:
    """The frozen-teacher form of a trained state."""
    return models.Split(state.graphdef, state.params, state.rest)


def get_teacher(run_dir: str, *, spec: ConfigDict, train_cfg: ConfigDict,
                prepared: PreparedData, mesh, seed: int, augment: bool = False,
                flip: bool = False, progress: bool = True,
                tensorboard: bool = False) -> tuple[models.Split, dict[str, Any]]:
    """Trains the teacher with cross-entropy on all of the train split, once.

    A finished ``run_dir`` is restored instead (the teacher is cached in the work
    directory); ``run_dir`` may also be a teacher directory of another run.
    """
    def make():
        return build_model(spec, image_shape=prepared.image_shape,
                           num_classes=prepared.num_classes, seed=seed)
    splits = prepared.splits
    result = fit(run_dir, student=make(), objective=build_objective("ce", loss_config()),
                 train_cfg=train_cfg, train_set=splits.train, validation=splits.validation,
                 test=splits.test, mesh=mesh, seed=seed, augment=augment, flip=flip,
                 progress=progress, tensorboard=tensorboard,
                 describe={"role": "teacher", "model": spec.to_dict()})
    state = restore_state(run_dir, template_state(make(), train_cfg, mesh),
                          step=train_cfg.num_steps)
    return as_teacher(state), result


# ----------------------------------------------------------------------------------------
# Sweeps.


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of a sweep: a method at a data size and a seed."""
    method: str
    examples_per_class: int | str
    seed: int

    @property
    def name(self) -> str:
        return (f"{self.method.replace('+', '-')}/n{self.examples_per_class}/"
                f"seed{self.seed}")


def run_sweep(cells: Sequence[Cell], run: Callable[[Cell], dict[str, Any]], *,
              workdir: str, desc: str) -> dict[Cell, dict[str, Any]]:
    """Runs ``run(cell)`` for every cell with a tqdm bar; finished cells are skipped.

    A cell is finished when ``workdir/cells/<cell.name>/result.json`` exists; ``run``
    must write it (``fit`` does).
    """
    from tqdm.auto import tqdm
    done = sum(is_done(cell_dir(workdir, c)) for c in cells)
    results = {}
    with tqdm(total=len(cells), initial=done, desc=desc, unit="cell",
              dynamic_ncols=True) as bar:
        for cell in cells:
            finished = is_done(cell_dir(workdir, cell))
            if not finished:
                bar.set_postfix_str(cell.name)
            results[cell] = run(cell)
            if not finished:
                bar.update(1)
    return results


def cell_dir(workdir: str, cell: Cell) -> str:
    return os.path.join(workdir, "cells", cell.name)


def seeds(config: ConfigDict) -> list[int]:
    return list(range(config.num_seeds))


def examples_per_class(config: ConfigDict) -> list[int | str]:
    values = list(config.examples_per_class)
    for v in values:
        if v != "all" and (not isinstance(v, int) or v < 1):
            raise ConfigError(f"examples_per_class must hold positive integers or 'all'; "
                              f"got {values}.")
    return values


def setup(workdir: str, config: ConfigDict) -> jax.sharding.Mesh:
    """Creates the work directory, the compilation cache and the mesh; saves the config."""
    os.makedirs(workdir, exist_ok=True)
    if config.get("compilation_cache", True):
        enable_compilation_cache(workdir)
    return make_mesh(config.get("num_devices", 0))


def versions() -> dict[str, str]:
    import flax
    import platform
    return {"python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__,
            "backend": jax.default_backend(), "devices": str(jax.device_count()),
            "device_kind": jax.devices()[0].device_kind}


__all__ = [
    "AugmentedBatches", "Cell", "ConfigError", "PreparedData", "apply_override",
    "as_teacher", "build_model", "build_objective", "build_optimizer", "class_subset",
    "config_json", "eval_batches", "evaluate", "examples_per_class", "fit", "flat_keys",
    "get_teacher", "load_config", "load_data", "loss_config", "method_label", "model_spec",
    "parse_args", "read_json", "restore_state", "run_sweep", "seeds", "setup", "subset",
    "template_state", "train_config", "versions", "write_json",
]
