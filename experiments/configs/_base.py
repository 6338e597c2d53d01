"""What every config is made of: shared sub-configs, modes, the words for every key, checks.

Config files import this module only; it imports nothing but ``ml_collections`` (reading
a config must not start JAX). The schema of a study's config is the union of these
pieces; :data:`HELP` (and the group tables below it) says what every key means, which
``--help`` prints, and :func:`validate` checks every value before anything trains.
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

MODES = ("", "smoke")


class ConfigError(ValueError):
    """A bad command line or configuration; the message says what is valid."""


def mode(arg: str | None) -> str:
    """The config argument after ``:`` (``--config=<file>:smoke``): ``""`` or ``"smoke"``.

    ``smoke`` shrinks a config to run its whole pipeline in seconds (one seed, a few
    steps, tiny networks, offline data): what the tests run, as big_vision's ``runlocal``.
    """
    arg = (arg or "").strip()
    if arg not in MODES:
        raise ConfigError(f"unknown config mode {arg!r}; use <file> or <file>:smoke.")
    return arg


def loss_config(**overrides: Any) -> ConfigDict:
    """The loss hyper-parameters every study shares (docs/experiments.md says why)."""
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


def train_config(**overrides: Any) -> ConfigDict:
    """How one network is trained: steps, batch, optimiser, evaluations."""
    config = ConfigDict(dict(
        num_steps=300, batch_size=40, optimizer="adamw", learning_rate=3e-3,
        weight_decay=1e-4, momentum=0.9, warmup_steps=0, num_evals=5, eval_batch_size=1000,
    ))
    config.update(overrides)
    return config


def model_spec(name: str, *, width: int = 16, hidden: tuple[int, ...] = (64,),
               depth: int = 16, widen_factor: int = 1, stem: str = "cifar") -> ConfigDict:
    """A network of ``jaxkd.models.create``: its name and every size key of the zoo.

    A model reads the keys it takes (``jaxkd.models.size_keywords``) and ignores the
    rest, so ``--config.student.name=small_cnn`` works without adding keys.
    """
    return ConfigDict(dict(name=name, width=width, hidden=tuple(hidden), depth=depth,
                           widen_factor=widen_factor, stem=stem))


def execution(config: ConfigDict) -> ConfigDict:
    """Adds the keys of how a study runs (devices, caches, progress, logs)."""
    config.num_devices = 0
    config.num_cpu_devices = 0
    config.compilation_cache = True
    config.run_progress = False
    config.tensorboard = False
    return config


def smoke(config: ConfigDict) -> ConfigDict:
    """Shrinks the sweep and the training of ``config`` for the ``smoke`` mode."""
    config.num_seeds = 1
    config.num_devices = 1
    config.compilation_cache = False
    config.run_progress = False
    config.tensorboard = False
    for name in ("train", "teacher_train", "finetune_train"):
        if name in config:
            config[name].update(num_steps=12, batch_size=10, num_evals=2, warmup_steps=0,
                                eval_batch_size=500)
    config.teacher_train.update(num_steps=10, batch_size=32, num_evals=1)
    return config


# ----------------------------------------------------------------------------------------
# What every key means (printed by --help). Keys of the sub-configs share a table.

HELP = {
    "dataset": "dataset name: 'digits' (offline), a tfds name ('cifar100'), "
               "'folder:<path>' (docs/data.md)",
    "source_dataset": "the source task's dataset (the teacher learns it); as 'dataset'",
    "target_dataset": "the target task's dataset (the student learns it); as 'dataset'",
    "source_classes": "classes of the source dataset to keep, relabelled 0..; () = all",
    "target_classes": "classes of the target dataset to keep, relabelled 0..; () = all",
    "data_dir": "tfds data directory ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    "image_size": "(height, width) to resize every image to; () keeps the native size",
    "validation_fraction": "share of the training split held out (stratified, seed 0) to "
                           "choose the best step",
    "augment": "random crops (4-pixel padding) of the training batches",
    "flip": "random left-right flips too (off for digits: not mirror-symmetric)",
    "examples_per_class": "training examples per class of each cell: integers and/or 'all'",
    "num_seeds": "seeds per method and size (subset, initialisation, batch order, RNG)",
    "methods": "the rows of the sweep (the study's method table: docs/experiments.md)",
    "teacher": "the teacher network",
    "teacher_train": "how the teacher is trained (cross-entropy on the whole train split)",
    "teacher_seed": "the teacher's initialisation and batch-order seed",
    "teacher_dir": "a trained teacher's run directory to reuse ('' = train one in "
                   "<workdir>/teacher)",
    "teacher_only": "train (or check) the teacher, print its accuracy, and stop",
    "student": "the student network",
    "student_tap_aliases": "'ours:theirs,...' renames student feature taps to pair them "
                           "with the teacher's for attention",
    "train": "how every student cell is trained (train.num_steps: the budget, or its "
             "floor when train_epochs > 0)",
    "train_epochs": "a budget that grows with the data: a cell of N examples trains "
                    "clip(ceil(train_epochs * N / batch_size), train.num_steps, "
                    "train_max_steps) steps; 0 = train.num_steps at every size",
    "train_max_steps": "the cap of that budget (0 = none)",
    "weight_search_sizes": "study 1: examples per class at which each method's Jacobian "
                           "weight is chosen on validation before the sweep; () = no "
                           "search (the loss.* weights as set)",
    "weight_search_seeds": "study 1: seeds 0..k-1 of that search",
    "jacobian_weights": "study 1: candidates for loss.jacobian_weight (methods with "
                        "'jacobian')",
    "projection_weights": "study 1: candidates for loss.vjp_weight / loss.jvp_weight "
                          "(methods with 'vjp' / 'jvp')",
    "finetune_train": "how the fine-tuning oracle is trained",
    "loss": "weights and settings of the loss terms",
    "paper_table": "'mit_indoor' shows the paper's transfer numbers beside ours",
    "noise_sigmas": "study 2: noise standard deviations (pixels in [0, 1]) to test under",
    "noise_examples_per_class": "study 2: the sizes to evaluate; () = every size of study 1",
    "num_devices": "devices of the data-parallel mesh (0 = all); the batch is split "
                   "over them",
    "num_cpu_devices": "on a CPU, host devices XLA creates (0 = one per core, as many as "
                       "divide every batch size); env JAXKD_CPU_DEVICES overrides",
    "compilation_cache": "keep compiled programs in <workdir>/jax_cache across invocations",
    "run_progress": "a progress bar per cell too (the sweep and the teacher always have one)",
    "tensorboard": "TensorBoard event files in every run directory (needs tensorboardX)",
}
MODEL_HELP = {
    "name": "model of jaxkd.models.create: mlp, small_cnn, vgg4, vgg9, wrn, resnet18, "
            "resnet34",
    "width": "base width (channels of the first block; wrn: the base width)",
    "hidden": "hidden widths (mlp: one per layer; small_cnn: its dense layer, one value)",
    "depth": "wrn: total depth, 6n + 4",
    "widen_factor": "wrn: width multiplier k",
    "stem": "resnet: 'cifar' (3x3, stride 1) or 'imagenet' (7x7 stride 2 + max-pool)",
}
TRAIN_HELP = {
    "num_steps": "optimizer steps",
    "batch_size": "examples per step (divisible by the number of devices)",
    "optimizer": "'adamw' or 'sgd' (Nesterov momentum)",
    "learning_rate": "peak learning rate (cosine decay to 0 over num_steps)",
    "weight_decay": "decoupled weight decay (adamw) or L2 added to the gradient (sgd)",
    "momentum": "sgd momentum",
    "warmup_steps": "linear warmup steps from 0 before the cosine decay",
    "num_evals": "validation evaluations (a checkpoint each); the best one is reported too",
    "eval_batch_size": "examples per evaluation batch",
}
LOSS_HELP = {
    "ce_weight": "cross-entropy with the labels",
    "kd_weight": "Hinton distillation tau^2 KL(teacher || student) (LwF: on the old head)",
    "temperature": "distillation temperature tau",
    "logits_weight": "squared error of logits ('match activations')",
    "jacobian_weight": "exact Jacobian matching",
    "jacobian_outputs": "which outputs' input gradients: teacher_top1, label, top_k, all",
    "jacobian_k": "k of jacobian_outputs='top_k'",
    "jacobian_normalize": "L2-normalise each input gradient before comparing",
    "vjp_weight": "||J_T - J_S||_F^2 estimated with output-space (VJP) probes",
    "jvp_weight": "the same with input-space (forward-mode JVP) probes",
    "num_probes": "probes per example of the VJP/JVP estimates",
    "probe_distribution": "'rademacher', 'gaussian' or 'orthogonal'",
    "noisy_weight": "Monte Carlo distillation under Gaussian input noise",
    "noisy_sigma": "its noise standard deviation (normalised-pixel units)",
    "noisy_samples": "its noise draws per example and step",
    "noisy_kind": "'squared', 'cross_entropy' or 'kl'",
    "attention_weight": "attention transfer on attention_layers",
    "attention_layers": "feature taps whose attention maps are matched",
    "attention_jacobian_weight": "matching the input gradients of the attention maps",
    "attention_jacobian_layer": "the feature tap of the attention Jacobian",
}
_GROUPS = {"teacher": MODEL_HELP, "student": MODEL_HELP, "train": TRAIN_HELP,
           "teacher_train": TRAIN_HELP, "finetune_train": TRAIN_HELP, "loss": LOSS_HELP}


def describe(key: str) -> str | None:
    """What the dotted config ``key`` means, or None when it has no words."""
    if key in HELP:
        return HELP[key]
    parent, _, leaf = key.rpartition(".")
    return _GROUPS.get(parent, {}).get(leaf)


def flat_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    """All leaf keys of ``config`` in dotted form (``train.num_steps``), sorted."""
    keys = []
    for key, value in config.items():
        if isinstance(value, ConfigDict):
            keys.extend(flat_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return sorted(keys)


def get(config: ConfigDict, key: str) -> Any:
    """The value at dotted ``key``."""
    node = config
    for part in key.split("."):
        node = node[part]
    return node


# ----------------------------------------------------------------------------------------
# Up-front checks (before anything trains). A study checks its own methods.


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate(config: ConfigDict) -> None:
    """Raises :class:`ConfigError` for the first bad value, naming its key.

    Checks what every study shares: the sweep's sizes and seeds, every training
    sub-config, the models' names, the device counts. Study-specific values (methods,
    tap aliases) are checked by the study before it trains.
    """
    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(f"config key {key!r} = {get(config, key)!r}: expected {expected}.")

    sizes = list(config.examples_per_class)
    if not sizes or not all(v == "all" or _positive_int(v) for v in sizes):
        raise bad("examples_per_class", "positive integers and/or 'all'")
    if not _positive_int(config.num_seeds):
        raise bad("num_seeds", "a positive integer")
    if not 0.0 < config.validation_fraction < 1.0:
        raise bad("validation_fraction", "a fraction in (0, 1)")
    for key in ("num_devices", "num_cpu_devices"):
        value = get(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(key, "a non-negative integer (0 = all)")
    for name in ("train", "teacher_train", "finetune_train"):
        if name not in config:
            continue
        for key in ("num_steps", "batch_size", "num_evals", "eval_batch_size"):
            if not _positive_int(config[name][key]):
                raise bad(f"{name}.{key}", "a positive integer")
        if config[name].num_evals > config[name].num_steps:
            raise bad(f"{name}.num_evals", f"at most num_steps ({config[name].num_steps})")
        if config[name].optimizer not in ("adamw", "sgd"):
            raise bad(f"{name}.optimizer", "'adamw' or 'sgd'")
        if not 0 <= config[name].warmup_steps < config[name].num_steps:
            raise bad(f"{name}.warmup_steps", "in [0, num_steps)")
    _validate_budget_and_search(config, bad)
    from jaxkd.models import MODEL_NAMES  # the study's process only, not config reading
    for name in ("teacher", "student"):
        if config[name].name not in MODEL_NAMES:
            raise bad(f"{name}.name", f"one of {MODEL_NAMES}")
    image_size = tuple(config.image_size)
    if image_size and (len(image_size) != 2 or not all(map(_positive_int, image_size))):
        raise bad("image_size", "() or (height, width) of positive integers")


def _validate_budget_and_search(config: ConfigDict, bad) -> None:
    """The optional keys of the growing budget and the weight search (when present)."""
    if "train_epochs" in config:
        value = config.train_epochs
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise bad("train_epochs", "a non-negative number of epochs (0 = off)")
    if "train_max_steps" in config:
        value = config.train_max_steps
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad("train_max_steps", "a non-negative integer (0 = no cap)")
        if value and "train" in config and value < config.train.num_steps:
            raise bad("train_max_steps", f"0 or at least train.num_steps "
                                         f"({config.train.num_steps})")
    if "weight_search_sizes" in config:
        sizes = list(config.weight_search_sizes)
        if not all(v == "all" or _positive_int(v) for v in sizes):
            raise bad("weight_search_sizes", "() or positive integers and/or 'all'")
        if sizes and not _positive_int(config.weight_search_seeds):
            raise bad("weight_search_seeds", "a positive integer")
        for key in ("jacobian_weights", "projection_weights"):
            values = list(config[key])
            if sizes and (not values or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                    for v in values)):
                raise bad(key, "one or more positive weights")
