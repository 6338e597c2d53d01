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
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

from experiments import _fit, _workdir
from experiments.configs import _base
from jaxkd import models, training

PRESENTATION_KEYS = ("num_devices", "num_cpu_devices", "compilation_cache", "run_progress",
                     "tensorboard", "on_change")
SWEEP_KEYS = ("examples_per_class", "num_seeds", "methods", "noise_sigmas",
              "noise_examples_per_class", "teacher_only", "paper_table", "teacher_dir")
TEACHER_KEYS = ("teacher", "teacher_train", "teacher_seed")
STUDENT_KEYS = ("student", "student_tap_aliases", "train", "finetune_train", "loss",
                "target_dataset", "target_classes",
                # the students' budget and loss-weight search: no part of the teacher
                "train_epochs", "train_max_steps", "weight_search_sizes",
                "weight_search_seeds", "jacobian_weights", "projection_weights",
                "attention_weights", "attention_jacobian_weights")
# Methods whose students never see the teacher (their cells do not depend on it).
NO_TEACHER_METHODS = ("ce", "no_transfer")


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


def _without(config: ConfigDict, keys) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in keys}


def teacher_dir(config: ConfigDict, workdir: str) -> str:
    """The teacher's run directory: ``config.teacher_dir`` or ``<workdir>/teacher``."""
    return config.get("teacher_dir") or os.path.join(workdir, "teacher")


def teacher_config(config: ConfigDict) -> dict[str, Any]:
    """What determines the teacher: its data, network, training and seed."""
    return _workdir.canonical(_without(config, (*PRESENTATION_KEYS, *SWEEP_KEYS,
                                                *STUDENT_KEYS)))


def cell_config(config: ConfigDict, cell: Cell,
                teacher: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What determines ``cell``'s result: its data, network, training, its method's loss
    keys, its size and seed, and (for a method that uses it) the teacher's run config.

    ``finetune`` (transfer's oracle) trains the teacher's architecture with
    ``finetune_train``; every other method the student with ``train``.
    """
    drop = {*PRESENTATION_KEYS, *SWEEP_KEYS, *TEACHER_KEYS, "loss"}
    drop |= ({"student", "student_tap_aliases", "train"} if cell.method == "finetune"
             else {"finetune_train"})
    out = _without(config, drop)
    if "loss" in config:
        terms = [t.strip() for t in cell.method.split("+")]
        keys = set()
        for term in terms:
            keys.update(_base.LOSS_TERM_KEYS.get(term, tuple(config.loss)))  # unknown: all
        out["loss"] = {k: config.loss[k] for k in sorted(keys) if k in config.loss}
    if cell.method not in NO_TEACHER_METHODS:
        out["teacher_run"] = dict(teacher if teacher is not None else teacher_config(config))
    out.update(method=cell.method, examples_per_class=cell.examples_per_class,
               seed=cell.seed)
    return _workdir.canonical(out)


def check_configs(config: ConfigDict, workdir: str) -> None:
    """Compares every run the study would reuse with its run config, before training.

    The teacher and every cell of the sweep that has started (a checkpoint or a result)
    must have recorded the run config the current config gives it. Otherwise
    ``config.on_change`` decides: ``"refuse"`` raises, ``"retrain"`` deletes those runs
    (they train again). A teacher of another work directory (``config.teacher_dir``)
    that has finished is used as it is, whatever its training (its own run config is
    what the cells record); only its network and data must be this config's. Then
    notes each run's config for ``_fit.fit`` to record.

    Raises:
      _workdir.ConfigChanged: runs made with another config (names the keys, old -> new).
    """
    retrain = config.get("on_change", "refuse") == "retrain"
    t_dir = teacher_dir(config, workdir)
    expected_teacher = teacher_config(config)
    teacher_identity = expected_teacher
    runs = {t_dir: expected_teacher}
    if config.get("teacher_dir") and _workdir.is_done(t_dir):
        old = _workdir.recorded(t_dir)
        ignore = ("teacher_train", "teacher_seed")
        if old is not None:
            teacher_identity = old
            mine = {k: v for k, v in expected_teacher.items() if k not in ignore}
            theirs = {k: v for k, v in old.items()  # (older runs recorded student keys)
                      if k not in ignore and k not in STUDENT_KEYS}
            if mine != theirs:
                raise _workdir.ConfigChanged(
                    f"teacher_dir {t_dir} holds a teacher made with another network or data: "
                    f"{'; '.join(_workdir.differences(theirs, mine))}. Give the teacher_dir of "
                    f"a matching teacher, or set --config.teacher_dir='' to train one.")
        else:
            teacher_identity = {"teacher_dir": os.path.abspath(t_dir)}
        runs = {}
    for cell in cells(config):
        runs[cell_dir(workdir, cell)] = cell_config(config, cell, teacher_identity)
    changes = _workdir.changed(workdir, runs)
    if changes and not retrain:
        raise _workdir.ConfigChanged(_workdir.describe_changes(workdir, changes))
    if retrain and config.get("teacher_dir") and t_dir in changes:
        raise _workdir.ConfigChanged(
            f"teacher_dir {t_dir} (another work directory's teacher, unfinished) was started "
            f"with another config: {'; '.join(changes[t_dir])}; on_change=retrain deletes "
            f"only this work directory's runs. Give another teacher_dir or delete it.")
    for run_dir in changes:
        print(f"retraining {os.path.relpath(run_dir, workdir)} (config changed: "
              f"{'; '.join(changes[run_dir][:3])})", file=sys.stderr)
        shutil.rmtree(run_dir)
    for run_dir, run_config in runs.items():
        _workdir.expect(run_dir, run_config)


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
    from jaxkd.training._progress import progress_bar  # tqdm, or lines in a log
    results = {}
    todo = [c for c in selected if not _workdir.is_done(cell_dir(workdir, c))]
    with progress_bar(len(todo), desc=f"{desc} ({len(selected) - len(todo)} cells done)",
                      unit="cell", disable=not todo) as bar:
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
