"""What every config is made of: shared sub-configs, modes, the words for every key, checks.

Config files import this module only; it imports nothing but ``ml_collections`` (reading
a config must not start JAX). The schema of a study's config is the union of these
pieces; :data:`HELP` (and the group tables below it) says what every key means, which
``--help`` prints; ``_checks.validate`` checks every value before anything trains.
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict, config_dict

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


# Every loss term of the studies: a one-line description and its default arguments. A
# term's config ``loss.<term>`` holds exactly the keyword arguments of its constructor
# in ``jaxkd.training`` (or of the study's own, e.g. transfer's ``lwf``), ``weight``
# first; the study's method table says which constructor a term name builds.
# docs/experiments.md says why each value is what it is.
LOSS_TERMS = {
    "ce": ("cross-entropy with the labels", dict(weight=1.0)),
    "kd": ("Hinton distillation tau^2 KL(teacher || student)",
           dict(weight=1.0, temperature=4.0)),
    "logits": ("squared error of logits ('match activations')", dict(weight=0.1)),
    "jacobian": ("exact Jacobian matching",
                 dict(weight=1.0, outputs="teacher_top1", k=1, normalize=True)),
    # Proposition 1's own terms (study 2): the unnormalised squared Jacobian difference,
    # of the teacher's top-1 output and of all outputs (||J_T - J_S||_F^2).
    "jacobian_raw": ("exact Jacobian matching, unnormalised (Proposition 1), teacher top-1",
                     dict(weight=0.1, outputs="teacher_top1", k=1, normalize=False)),
    "jacobian_all": ("exact Jacobian matching, unnormalised (Proposition 1), all outputs",
                     dict(weight=0.03, outputs="all", k=1, normalize=False)),
    "vjp": ("||J_T - J_S||_F^2 estimated with output-space (VJP) probes",
            dict(weight=0.01, num_probes=1, distribution="rademacher")),
    "jvp": ("||J_T - J_S||_F^2 estimated with input-space (forward-mode JVP) probes",
            dict(weight=0.01, num_probes=1, distribution="rademacher")),
    # Forward passes only; step None: eps^(1/3) of the networks' narrowest dtype.
    "fd": ("||J_T - J_S||_F^2 estimated with central finite differences along input probes",
           dict(weight=0.01, num_probes=1, distribution="rademacher", step=None)),
    "noisy": ("Monte Carlo distillation under Gaussian input noise",
              dict(weight=0.1, sigma=0.3, num_samples=1, kind="squared", temperature=4.0)),
    "noisy_kl": ("Hinton distillation tau^2 KL on Gaussian-noised inputs",
                 dict(weight=1.0, sigma=0.3, num_samples=1, kind="kl", temperature=4.0)),
    "attention": ("attention transfer on the feature taps 'layers'",
                  dict(weight=10.0, layers=("block1", "block2"))),
    "attention_jacobian": ("matching the input gradients of the attention maps",
                           dict(weight=1.0, layer="block2")),
    "lwf": ("study 3: distillation on the student's old-task head (LwF)",
            dict(weight=1.0, temperature=2.0)),
}


def loss_config(**terms: dict[str, Any]) -> ConfigDict:
    """``loss.<term>`` for every term of :data:`LOSS_TERMS`, with ``terms`` set.

    ``loss_config(jacobian=dict(weight=3.0))`` changes that argument only.
    """
    # A None default (fd's step) is a float placeholder, so the command line can set it.
    config = ConfigDict({name: {k: config_dict.placeholder(float) if v is None else v
                                for k, v in defaults.items()}
                         for name, (_, defaults) in LOSS_TERMS.items()})
    for name, values in terms.items():
        if name not in LOSS_TERMS:
            raise ConfigError(f"loss_config({name}=...): no such loss term; expected one of "
                              f"{sorted(LOSS_TERMS)}.")
        config[name].update(values)
    return config


def search_config(*, sizes: tuple = (), seeds: int = 1, extend: int = 2,
                  **terms: dict[str, tuple]) -> ConfigDict:
    """The loss-weight search (``_search``): its sizes, seeds and candidates.

    ``search.<term>.<argument>`` holds candidates for ``loss.<term>.<argument>``; every
    term has ``weight = ()`` (not searched) unless ``terms`` sets it, e.g.
    ``search_config(sizes=(10,), jacobian=dict(weight=(1.0, 3.0, 10.0)))``.
    ``sizes = ()`` turns the search off. ``extend``: the most values added beyond each
    edge of a grid when the choice sits on it (``experiments/_grid.py``).
    """
    config = ConfigDict(dict(sizes=tuple(sizes), seeds=seeds, extend=extend,
                             **{name: dict(weight=()) for name in LOSS_TERMS}))
    for name, values in terms.items():
        if name not in LOSS_TERMS:
            raise ConfigError(f"search_config({name}=...): no such loss term; expected one "
                              f"of {sorted(LOSS_TERMS)}.")
        with config.ignore_type():
            config[name].update({k: tuple(v) for k, v in values.items()})
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


def noise(config: ConfigDict, *, sigmas: tuple[float, ...],
          examples_per_class: tuple = ()) -> ConfigDict:
    """Adds study 2's keys (study 1 ignores them): the noise levels, the sizes, and how
    the noise is read: clipped to [0, 1] (the unclipped reading on request), 5 draws per
    seed, input gradients on the first 1,000 test images."""
    config.update(noise_sigmas=tuple(sigmas), noise_examples_per_class=tuple(examples_per_class),
                  noise_clip=True, noise_both_readings=False, noise_draws=5,
                  noise_gradient_examples=1000)
    return config


def execution(config: ConfigDict) -> ConfigDict:
    """Adds the keys every study has: its first report seed (``first_seed``), the share of
    the validation split each seed draws (``validation_per_seed``), where its
    teacher comes from (``teacher_dir``, ``teacher_only``) and how it runs (devices,
    caches, progress, logs)."""
    config.update(first_seed=0, validation_per_seed=0.5, teacher_dir="", teacher_only=False,
                  num_devices=0, num_cpu_devices=0, compilation_cache=True, run_progress=False,
                  tensorboard=False,
                  on_change="refuse", share_teacher_targets=True, lockstep="auto")
    return config


def smoke(config: ConfigDict) -> ConfigDict:
    """Shrinks the sweep and the training of ``config`` for the ``smoke`` mode."""
    config.update(num_seeds=1, num_devices=1, compilation_cache=False, run_progress=False,
                  tensorboard=False)
    for name in ("train", "teacher_train", "finetune_train"):
        if name in config:
            config[name].update(num_steps=12, batch_size=10, num_evals=2, warmup_steps=0,
                                eval_batch_size=500)
    config.teacher_train.update(num_steps=10, batch_size=32, num_evals=1)
    if "search" in config:
        config.search.extend = 0  # the grids as given: a test turns it on
    if "noise_draws" in config:
        config.update(noise_draws=2, noise_gradient_examples=50)
    return config


# ----------------------------------------------------------------------------------------
# What every key means (printed by --help). Keys of the sub-configs share a table.

HELP = {
    "dataset": "dataset name: 'digits' (offline), 'fashion_mnist' / 'mnist' (IDX files, "
               "Debian's dataset-fashion-mnist, else tfds), 'idx:<dir>', a tfds name "
               "('cifar100'), 'folder:<path>' (docs/data.md)",
    "source_dataset": "the source task's dataset (the teacher learns it); as 'dataset'",
    "target_dataset": "the target task's dataset (the student learns it); as 'dataset'",
    "source_classes": "classes of the source dataset to keep, relabelled 0..; () = all",
    "target_classes": "classes of the target dataset to keep, relabelled 0..; () = all",
    "data_dir": "where datasets are looked for: <data_dir>/fashion_mnist/ (and mnist/) "
                "before /usr/share/datasets/fashion-mnist, and tfds' data directory "
                "('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    "image_size": "(height, width) to resize every image to; () keeps the native size",
    "validation_fraction": "share of the training split held out (stratified, seed 0): "
                           "the teacher never trains on it; each seed's cells choose "
                           "their best step and weights on their draw from it",
    "validation_per_seed": "share of each class of that held-out split each seed draws "
                           "(with the seed) as its validation set; 1.0 = all of it, the "
                           "same for every seed (work directories made before 0.2.0)",
    "augment": "random crops (4-pixel padding) of the training batches",
    "flip": "random left-right flips too (off for digits: not mirror-symmetric)",
    "examples_per_class": "training examples per class of each cell: integers and/or 'all'",
    "num_seeds": "seeds per method and size (subset, initialisation, batch order, RNG)",
    "first_seed": "the first of the num_seeds report seeds; at or above search.seeds, the "
                  "seeds that report are not those the weight search chose on",
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
    "search": "studies 1 and 3: loss weights chosen on validation before the sweep",
    "search.sizes": "examples per class at which each method's searched arguments are "
                    "chosen; () = no search (the loss.* values as set)",
    "search.seeds": "seeds 0..k-1 of that search",
    "search.extend": "a choice on its grid's edge adds a value one grid step beyond it, "
                     "at most this many per edge (0 = the grids as given)",
    "finetune_train": "how the fine-tuning oracle is trained",
    "loss": "the loss terms: loss.<term> holds the arguments of its constructor",
    "paper_table": "'mit_indoor' shows the paper's transfer numbers beside ours",
    "noise_sigmas": "study 2: noise standard deviations (pixels in [0, 1]) to test under",
    "noise_examples_per_class": "study 2: the sizes to evaluate; () = every size of study 1",
    "noise_clip": "study 2: clip the noisy pixels back to [0, 1], as in an image a user "
                  "meets (False: the unclipped reading, noise of mean zero everywhere)",
    "noise_both_readings": "study 2: evaluate the other reading too (unclipped when "
                           "noise_clip) and report it beside the main one",
    "noise_draws": "study 2: noise draws per seed and sigma, the same for every method of "
                   "a seed; accuracy is their mean, the logit drift their spread",
    "noise_gradient_examples": "study 2: the first this many clean test images carry the "
                               "input-gradient measures (0 = all)",
    "num_devices": "devices of the data-parallel mesh (0 = all); the batch is split "
                   "over them",
    "num_cpu_devices": "on a CPU, host devices XLA creates (0 = one per core, as many as "
                       "divide every batch size); env JAXKD_CPU_DEVICES overrides",
    "compilation_cache": "keep compiled programs across invocations in the user's own "
                         "cache ($XDG_CACHE_HOME or ~/.cache, jaxkd/jax_cache, mode 0700)",
    "on_change": "a work directory made with another config: 'refuse' (say which keys "
                 "differ) or 'retrain' (delete the runs that differ and train them again)",
    "run_progress": "a progress bar per cell too (the sweep and the teacher always have one)",
    "tensorboard": "TensorBoard event files in every run directory (needs tensorboardX)",
    "share_teacher_targets": "compute the teacher's logits, input gradients and probe "
                             "products of a batch once for every student of its size and "
                             "seed (False: each student's step runs the teacher; the same "
                             "runs up to float round-off, for timing)",
    "lockstep": "train the cells that share one program (method, budget, student) as "
                "one vmapped group of students (experiments/_lockstep.py): 'on', 'off', "
                "or 'auto' (on on a GPU or TPU only; the same runs up to float round-off)",
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
# What each argument of a loss term means, by argument name (a new term with known
# argument names needs no line here; ``_checks`` says which values each takes).
LOSS_ARGS = {
    "weight": "its weight in the loss (0 = off)",
    "temperature": "the distillation temperature tau",
    "outputs": "which outputs' input gradients: teacher_top1, label, top_k, all",
    "k": "k of outputs='top_k'",
    "normalize": "L2-normalise each input gradient before comparing",
    "num_probes": "probes per example of the estimate",
    "distribution": "the probes: 'rademacher', 'gaussian' or 'orthogonal'",
    "sigma": "the noise standard deviation (normalised-pixel units)",
    "num_samples": "noise draws per example and step",
    "kind": "'squared', 'cross_entropy' or 'kl'",
    "layers": "feature taps whose attention maps are matched",
    "layer": "the feature tap of the attention Jacobian",
    "step": "the finite differences' step relative to each example's RMS (None: eps^(1/3))",
}
# Keys of earlier versions: an override or a config file that names one is refused with
# its new spelling (the search and the loss terms are sub-configs now).
RENAMED = {
    **{f"loss.{old}": f"loss.{new}" for old, new in (
        ("ce_weight", "ce.weight"), ("kd_weight", "kd.weight"),
        ("temperature", "kd.temperature (and loss.noisy.temperature, loss.lwf.temperature)"),
        ("logits_weight", "logits.weight"), ("jacobian_weight", "jacobian.weight"),
        ("jacobian_outputs", "jacobian.outputs"), ("jacobian_k", "jacobian.k"),
        ("jacobian_normalize", "jacobian.normalize"), ("vjp_weight", "vjp.weight"),
        ("jvp_weight", "jvp.weight"),
        ("num_probes", "vjp.num_probes and loss.jvp.num_probes"),
        ("probe_distribution", "vjp.distribution and loss.jvp.distribution"),
        ("noisy_weight", "noisy.weight"), ("noisy_sigma", "noisy.sigma"),
        ("noisy_samples", "noisy.num_samples"), ("noisy_kind", "noisy.kind"),
        ("attention_weight", "attention.weight"), ("attention_layers", "attention.layers"),
        ("attention_jacobian_weight", "attention_jacobian.weight"),
        ("attention_jacobian_layer", "attention_jacobian.layer"))},
    "weight_search_sizes": "search.sizes",
    "weight_search_seeds": "search.seeds",
    "jacobian_weights": "search.jacobian.weight",
    "projection_weights": "search.vjp.weight and search.jvp.weight",
    "attention_weights": "search.attention.weight",
    "attention_jacobian_weights": "search.attention_jacobian.weight",
}
_GROUPS = {"teacher": MODEL_HELP, "student": MODEL_HELP, "train": TRAIN_HELP,
           "teacher_train": TRAIN_HELP, "finetune_train": TRAIN_HELP}


def describe(key: str) -> str | None:
    """What the dotted config ``key`` means, or None when it has no words."""
    if key in HELP:
        return HELP[key]
    parts = key.split(".")
    if len(parts) == 3 and parts[0] in ("loss", "search") and parts[1] in LOSS_TERMS:
        _, term, arg = parts
        if arg not in LOSS_ARGS:
            return None
        what = (f"{LOSS_TERMS[term][0]}: {LOSS_ARGS[arg]}" if arg == "weight"
                else LOSS_ARGS[arg])
        return what if parts[0] == "loss" else f"candidates for loss.{term}.{arg} ({what})"
    if len(parts) == 2 and parts[0] == "loss" and parts[1] in LOSS_TERMS:
        return LOSS_TERMS[parts[1]][0]
    parent, _, leaf = key.rpartition(".")
    return _GROUPS.get(parent, {}).get(leaf)


def renamed(key: str) -> str | None:
    """The message for ``key`` if it is a key of an earlier version (:data:`RENAMED`)."""
    if key not in RENAMED:
        return None
    return (f"config key {key!r} is now --config.{RENAMED[key]} (the loss terms and the "
            f"weight search are sub-configs: --help lists every key).")


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
