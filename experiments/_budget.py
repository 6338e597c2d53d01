"""Training budgets that grow with the data: the optimizer steps of a cell by its size.

A fixed number of steps is many epochs on 10 examples per class and a fraction of one
on the whole training split. With ``train_epochs > 0`` a study trains a cell of ``N``
training examples for

    clip(ceil(train_epochs * N / batch_size), train.num_steps, train_max_steps)

steps: ``train.num_steps`` is the floor (the small sizes), ``train_max_steps`` the cap
(0: none). Every cell of one size has the same ``N`` (``examples_per_class`` per class,
or the whole split), so all cells of a method at one size share shapes and schedule:
the method compiles once per distinct step count, not once per cell. ``train_epochs =
0`` (the default of the older configs) is the fixed budget ``train.num_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict


def num_steps(train_cfg: ConfigDict, num_examples: int, *, epochs: float,
              max_steps: int = 0) -> int:
    """The optimizer steps for ``num_examples`` training examples (see the module doc)."""
    floor = int(train_cfg.num_steps)
    if not epochs:
        return floor
    steps = max(floor, math.ceil(float(epochs) * num_examples / train_cfg.batch_size))
    return min(steps, int(max_steps)) if max_steps else steps


def for_size(train_cfg: ConfigDict, num_examples: int, *, epochs: float,
             max_steps: int = 0) -> ConfigDict:
    """A copy of ``train_cfg`` with :func:`num_steps` steps (evaluations kept <= steps)."""
    cfg = ConfigDict(train_cfg.to_dict())
    cfg.num_steps = num_steps(train_cfg, num_examples, epochs=epochs, max_steps=max_steps)
    cfg.num_evals = min(cfg.num_evals, cfg.num_steps)
    return cfg


def settings(config: ConfigDict) -> dict[str, Any]:
    """``{"epochs": ..., "max_steps": ...}`` of ``config`` (0 for configs without them)."""
    return {"epochs": float(config.get("train_epochs", 0.0) or 0.0),
            "max_steps": int(config.get("train_max_steps", 0) or 0)}


def check_batches(config: ConfigDict, num_classes: int, names: Sequence[str] = ("train",)
                  ) -> None:
    """Refuses, before anything trains, a batch larger than the smallest subset.

    Raises:
      ConfigError: ``<name>.batch_size`` exceeds ``n * num_classes`` for a size ``n`` of
        ``examples_per_class`` (the cell would fail only after the teacher has trained).
    """
    from experiments.configs._base import ConfigError
    sizes = [n for n in config.examples_per_class if n != "all"]
    for name in names:
        if name not in config or not sizes:
            continue
        batch, smallest = config[name].batch_size, min(sizes) * num_classes
        if batch > smallest:
            raise ConfigError(
                f"{name}.batch_size={batch} exceeds the {smallest} training examples of "
                f"examples_per_class={min(sizes)} ({num_classes} classes); lower "
                f"{name}.batch_size or raise examples_per_class.")
