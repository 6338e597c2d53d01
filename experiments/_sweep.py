"""A sweep: cells (method x examples per class x seed), one built step per method.

Every cell of a method has the same shapes (a fixed batch size and number of steps,
whatever the subset size) and the same objective, optimizer and teacher, so the sweep
builds one :class:`jaxkd.training.TrainStep` per method and hands it to each of its
cells: the method compiles once. ``result.json`` marks a finished cell; a re-run skips
it, and a cell killed midway resumes from its last checkpoint (``train`` does that).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

from experiments import _fit, _workdir
from jaxkd import models, training


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


def seeds(config: ConfigDict) -> list[int]:
    return list(range(config.num_seeds))


def sizes(config: ConfigDict) -> list[int | str]:
    """The examples-per-class values of the sweep (validated by ``_base.validate``)."""
    return list(config.examples_per_class)


def cells(config: ConfigDict) -> list[Cell]:
    """Seed-major order: an interrupted sweep has every method for the first seeds."""
    return [Cell(m, n, s) for s in seeds(config) for n in sizes(config)
            for m in config.methods]


def cell_dir(workdir: str, cell: Cell) -> str:
    return os.path.join(workdir, "cells", cell.name)


def build_steps(objectives: Mapping[str, training.Objective],
                train_cfgs: Mapping[str, ConfigDict], mesh,
                teacher: models.Split | None) -> dict[str, training.TrainStep]:
    """One train step per method (the teacher only where the objective needs it)."""
    return {m: training.make_train_step(obj, _fit.build_optimizer(train_cfgs[m]), mesh,
                                        teacher=teacher if obj.needs_teacher else None)
            for m, obj in objectives.items()}


def run_sweep(selected: Sequence[Cell], run: Callable[[Cell], dict[str, Any]], *,
              workdir: str, desc: str) -> dict[Cell, dict[str, Any]]:
    """Runs ``run(cell)`` for every cell with a tqdm bar; finished cells are skipped.

    A cell is finished when ``workdir/cells/<cell.name>/result.json`` exists; ``run``
    must write it (``_fit.fit`` does). The bar counts only the cells left, so its rate
    and ETA are those of this invocation.
    """
    from tqdm.auto import tqdm
    results = {}
    todo = [c for c in selected if not _workdir.is_done(cell_dir(workdir, c))]
    with tqdm(total=len(todo), desc=f"{desc} ({len(selected) - len(todo)} cells done)",
              unit="cell", dynamic_ncols=True, disable=not todo) as bar:
        for cell in selected:
            if cell in todo:
                bar.set_postfix_str(cell.name)
            results[cell] = run(cell)
            if cell in todo:
                bar.update(1)
    return results


def total_seconds(teacher_result: Mapping[str, Any],
                  results: Mapping[Cell, Mapping[str, Any]]) -> float:
    """The study's time: the teacher's and every cell's own recorded seconds.

    Each run records its wall time when it runs, so a re-run that skips finished cells
    keeps the total of the runs that produced the results.
    """
    return float(teacher_result["seconds"]) + sum(float(r["seconds"])
                                                  for r in results.values())
