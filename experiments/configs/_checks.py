"""The checks of a config, before anything trains: each key's values, the sweep's bounds.

:func:`validate` checks what every study shares (the schema of ``_base``); a study
checks its own methods (``_plan.check``), and what needs the data (class ids, the sizes
of the subsets, ``k`` against the classes) is checked when the data is loaded, before
the teacher trains. Like ``_base``, it imports nothing of JAX.
"""

from __future__ import annotations

import math
from typing import Any

from ml_collections import ConfigDict

from experiments.configs._base import LOSS_TERMS, ConfigError, flat_keys, get, renamed

# Bounds of a sweep: a typo such as num_seeds=10**9 fails at once, not after the teacher
# (each cell is a run directory with checkpoints; 10,000 is far beyond any table).
MAX_SEEDS = 1000
MAX_CELLS = 10_000
ON_CHANGE = ("refuse", "retrain")
LOCKSTEP = ("auto", "on", "off")
# The values the library accepts (jaxkd.losses); kept here so that reading a config
# never imports JAX. tests/experiments/test_checks.py checks they agree.
JACOBIAN_OUTPUTS = ("teacher_top1", "label", "top_k", "all")
PROBE_DISTRIBUTIONS = ("rademacher", "gaussian", "orthogonal")
NOISE_KINDS = ("squared", "cross_entropy", "kl")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _int(value) and value >= 1


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _one_of(choices: tuple[str, ...]):
    return f"one of {choices}", lambda v: v in choices


# The values each argument of a loss term takes (``_base.LOSS_ARGS`` says what it means):
# what a refusal says is expected, and the check.
LOSS_ARG_VALUES = {
    "weight": ("a finite weight >= 0", lambda v: _number(v) and v >= 0),
    "temperature": ("a positive finite temperature", lambda v: _number(v) and v > 0),
    "outputs": _one_of(JACOBIAN_OUTPUTS),
    "k": ("a positive integer", _positive_int),
    "normalize": ("True or False", lambda v: isinstance(v, bool)),
    "num_probes": ("a positive integer", _positive_int),
    "distribution": _one_of(PROBE_DISTRIBUTIONS),
    "sigma": ("a positive finite noise standard deviation", lambda v: _number(v) and v > 0),
    "num_samples": ("a positive integer", _positive_int),
    "kind": _one_of(NOISE_KINDS),
    "layers": ("one or more feature tap names",
               lambda v: isinstance(v, (tuple, list)) and bool(v)
               and all(isinstance(t, str) and t for t in v)),
    "layer": ("a feature tap name", lambda v: isinstance(v, str) and bool(v)),
    "step": ("None or a positive finite relative step",
             lambda v: v is None or (_number(v) and v > 0)),
}


def validate(config: ConfigDict) -> None:
    """Raises :class:`ConfigError` for the first bad value, naming its key.

    Checks what every study shares: the sweep's sizes, seeds and methods (and a bound on
    its cells), every training sub-config, the loss weights and settings, the models,
    the noise levels, the class lists, the device counts. What needs the data (class
    ids below the dataset's class count) is checked when the data is loaded, before the
    teacher trains; the study checks its method names before it loads anything.
    """
    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(f"config key {key!r} = {get(config, key)!r}: expected {expected}.")

    def has(key: str) -> bool:
        try:
            get(config, key)
        except (KeyError, AttributeError):
            return False
        return True

    for key in flat_keys(config):
        if renamed(key):  # a config file written for an earlier version
            raise ConfigError(renamed(key))
    sizes = list(config.examples_per_class)
    if not sizes or not all(v == "all" or _positive_int(v) for v in sizes):
        raise bad("examples_per_class", "positive integers and/or 'all'")
    if len(set(map(str, sizes))) != len(sizes):
        raise bad("examples_per_class", "each size once")
    if not _positive_int(config.num_seeds) or config.num_seeds > MAX_SEEDS:
        raise bad("num_seeds", f"a positive integer at most {MAX_SEEDS}")
    first = config.get("first_seed", 0)
    if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < 2**31 - MAX_SEEDS:
        raise bad("first_seed", f"an integer from 0 to {2**31 - MAX_SEEDS - 1}")
    methods = list(config.methods)
    if not methods or not all(isinstance(m, str) and m.strip() for m in methods):
        raise bad("methods", "at least one method name (the study's method table: "
                             "docs/experiments.md)")
    if len(set(methods)) != len(methods):
        raise bad("methods", "each method once")
    num_cells = len(methods) * len(sizes) * config.num_seeds
    if num_cells > MAX_CELLS:
        raise ConfigError(f"the sweep has {num_cells} cells (methods x examples_per_class x "
                          f"num_seeds = {len(methods)} x {len(sizes)} x {config.num_seeds}); "
                          f"at most {MAX_CELLS} per work directory.")
    if not _number(config.validation_fraction) or not 0.0 < config.validation_fraction < 1.0:
        raise bad("validation_fraction", "a fraction in (0, 1)")
    share = config.get("validation_per_seed", 1.0)
    if not _number(share) or not 0.0 < share <= 1.0:
        raise bad("validation_per_seed", "a fraction in (0, 1]")
    for key in ("num_devices", "num_cpu_devices"):
        value = get(config, key)
        if not _int(value) or value < 0:
            raise bad(key, "a non-negative integer (0 = all)")
    if has("on_change") and config.on_change not in ON_CHANGE:
        raise bad("on_change", f"one of {ON_CHANGE}")
    if has("lockstep") and config.lockstep not in LOCKSTEP:
        raise bad("lockstep", f"one of {LOCKSTEP}")
    if has("teacher_seed") and (not _int(config.teacher_seed) or config.teacher_seed < 0):
        raise bad("teacher_seed", "a non-negative integer")
    for name in ("train", "teacher_train", "finetune_train"):
        if name not in config:
            continue
        cfg = config[name]
        for key in ("num_steps", "batch_size", "num_evals", "eval_batch_size"):
            if not _positive_int(cfg[key]):
                raise bad(f"{name}.{key}", "a positive integer")
        if cfg.num_evals > cfg.num_steps:
            raise bad(f"{name}.num_evals", f"at most num_steps ({cfg.num_steps})")
        if cfg.optimizer not in ("adamw", "sgd"):
            raise bad(f"{name}.optimizer", "'adamw' or 'sgd'")
        if not _int(cfg.warmup_steps) or not 0 <= cfg.warmup_steps < cfg.num_steps:
            raise bad(f"{name}.warmup_steps", "an integer in [0, num_steps)")
        if not _number(cfg.learning_rate) or cfg.learning_rate <= 0:
            raise bad(f"{name}.learning_rate", "a positive finite number")
        if not _number(cfg.weight_decay) or cfg.weight_decay < 0:
            raise bad(f"{name}.weight_decay", "a non-negative finite number")
        if not _number(cfg.momentum) or not 0 <= cfg.momentum < 1:
            raise bad(f"{name}.momentum", "a number in [0, 1)")
    if "loss" in config:
        _validate_loss(config, bad)
    _validate_budget_and_search(config, bad)
    from jaxkd.models import MODEL_NAMES  # the study's process only, not config reading
    for name in ("teacher", "student"):
        spec = config[name]
        if spec.name not in MODEL_NAMES:
            raise bad(f"{name}.name", f"one of {MODEL_NAMES}")
        for key in ("width", "depth", "widen_factor"):
            if key in spec and not _positive_int(spec[key]):
                raise bad(f"{name}.{key}", "a positive integer")
        if "hidden" in spec:
            hidden = spec.hidden if isinstance(spec.hidden, (tuple, list)) else (spec.hidden,)
            if not hidden or not all(map(_positive_int, hidden)):
                raise bad(f"{name}.hidden", "one or more positive integers")
        if "stem" in spec and spec.stem not in ("cifar", "imagenet"):
            raise bad(f"{name}.stem", "'cifar' or 'imagenet'")
    image_size = tuple(config.image_size)
    if image_size and (len(image_size) != 2 or not all(map(_positive_int, image_size))):
        raise bad("image_size", "() or (height, width) of positive integers")
    if has("noise_sigmas"):
        sigmas = list(config.noise_sigmas)
        if not sigmas or not all(_number(s) and s >= 0 for s in sigmas):
            raise bad("noise_sigmas", "one or more finite noise levels >= 0")
    for key in ("noise_clip", "noise_both_readings"):
        if has(key) and not isinstance(get(config, key), bool):
            raise bad(key, "True or False")
    if has("noise_draws") and not _positive_int(config.noise_draws):
        raise bad("noise_draws", "a positive integer (2 or more to measure the random part)")
    if has("noise_gradient_examples") and (not _int(config.noise_gradient_examples)
                                           or config.noise_gradient_examples < 0):
        raise bad("noise_gradient_examples", "a non-negative integer (0 = every test image)")
    if has("noise_examples_per_class"):
        known = set(map(str, sizes))
        if not all(str(n) in known for n in config.noise_examples_per_class):
            error = bad("noise_examples_per_class", f"() or sizes of examples_per_class "
                                                    f"{tuple(sizes)}")
            raise ConfigError(f"{error} On the command line, () (every size) is "
                              f"--config.noise_examples_per_class= with nothing after the '='.")
    classes = {}
    for key in ("source_classes", "target_classes", "classes"):
        if not has(key):
            continue
        ids = list(get(config, key))
        if ids and (not all(_int(c) and c >= 0 for c in ids) or len(set(ids)) != len(ids)
                    or len(ids) < 2):
            raise bad(key, "() for all classes, or two or more distinct class ids >= 0")
        classes[key] = ids
    if ("source_classes" in classes and "target_classes" in classes and
            config.source_dataset == config.target_dataset):
        source, target = classes["source_classes"], classes["target_classes"]
        # () is every class, so it shares every class of the other list.
        shared = sorted(set(source) & set(target)) if source and target else (
            sorted(source or target) or "all")
        if shared:
            raise ConfigError(
                f"config keys 'source_classes' = {tuple(source)!r} and 'target_classes' = "
                f"{tuple(target)!r} share classes {shared} of the same dataset "
                f"{config.source_dataset!r}: expected disjoint class lists (the teacher "
                f"must not have learnt the target task).")
    if has("paper_table") and config.paper_table not in ("", "mit_indoor"):
        raise bad("paper_table", "'' or 'mit_indoor'")


def _validate_loss(config: ConfigDict, bad) -> None:
    for term, args in config.loss.items():
        if term not in LOSS_TERMS:
            raise bad(f"loss.{term}", f"a loss term of {sorted(LOSS_TERMS)}")
        for arg, value in args.items():
            ok, expected = _loss_arg_ok(arg, value)
            if not ok:
                raise bad(f"loss.{term}.{arg}", expected)


def _loss_arg_ok(arg: str, value: Any) -> tuple[bool, str]:
    expected, check = LOSS_ARG_VALUES.get(arg, (None, None))
    return (check is None or check(value)), expected


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
    if "search" not in config:
        return
    search = config.search
    if not all(v == "all" or _positive_int(v) for v in search.sizes):
        raise bad("search.sizes", "() or positive integers and/or 'all'")
    if not _positive_int(search.seeds):
        raise bad("search.seeds", "a positive integer")
    if not _int(search.get("extend", 0)) or search.get("extend", 0) < 0:
        raise bad("search.extend", "a non-negative integer")
    for term, args in search.items():
        if term in ("sizes", "seeds", "extend"):
            continue
        for arg, values in args.items():
            key = f"search.{term}.{arg}"
            if "loss" not in config or term not in config.loss or arg not in config.loss[term]:
                raise bad(key, "candidates of an argument of a loss term (loss.<term>.<arg>)")
            for value in values:
                ok, expected = _loss_arg_ok(arg, value)
                if not ok or (arg == "weight" and not value > 0):
                    raise bad(key, "candidates, each " + (
                        "a positive finite weight" if arg == "weight" else expected))
