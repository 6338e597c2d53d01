"""Study 1: distillation with limited data (Srinivas & Fleuret 2018, Table 1).

A teacher is trained once on the whole training split (cached in the work directory);
then a student is trained for every method x examples per class x seed, and the test
accuracy is reported as mean +- std over seeds, at the last step and at the step with
the best validation accuracy (the validation split chooses; the test split never does).

    python -m experiments.limited_data --workdir runs/limited_data
    python -m experiments.limited_data --config=limited_data_cifar100 --workdir runs/cifar100

Outputs in the work directory: ``results.json``, ``results.csv``, ``results.md`` and
``accuracy_vs_examples.png``; ``teacher/`` and ``cells/<method>/n<k>/seed<s>/`` hold each
network's checkpoints, metrics and ``result.json``. Re-running the command skips
finished cells. See docs/experiments.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict

from experiments import _common, _report

STUDY = "limited_data"
DEFAULT_CONFIG = "limited_data_digits"
DEFAULT_WORKDIR = "runs/limited_data"


def prepare(config: ConfigDict) -> _common.PreparedData:
    return _common.load_data(config.dataset, data_dir=config.data_dir,
                             image_size=config.image_size,
                             validation_fraction=config.validation_fraction)


def make_student(config: ConfigDict, prepared: _common.PreparedData, seed: int):
    return _common.build_model(config.student, image_shape=prepared.image_shape,
                               num_classes=prepared.num_classes, seed=seed)


def cells(config: ConfigDict) -> list[_common.Cell]:
    """Seed-major order: an interrupted sweep has every method for the first seeds."""
    for method in config.methods:
        _common.method_terms(method)  # fail before training anything
    return [_common.Cell(m, n, s) for s in _common.seeds(config)
            for n in _common.examples_per_class(config) for m in config.methods]


def teacher(config: ConfigDict, workdir: str, prepared: _common.PreparedData, mesh):
    return _common.get_teacher(os.path.join(workdir, "teacher"), spec=config.teacher,
                               train_cfg=config.teacher_train, prepared=prepared, mesh=mesh,
                               seed=config.teacher_seed, augment=config.augment,
                               flip=config.flip, progress=True,
                               tensorboard=config.tensorboard)


def sweep(config: ConfigDict, workdir: str, *, selected: Sequence[_common.Cell] | None = None
          ) -> tuple[dict[_common.Cell, dict[str, Any]], dict[str, Any],
                     _common.PreparedData]:
    """Trains (or skips) the teacher and every cell; returns their results and the data."""
    mesh = _common.setup(workdir, config)
    prepared = prepare(config)
    objectives = {m: _common.build_objective(m, config.loss) for m in config.methods}
    teacher_split, teacher_result = teacher(config, workdir, prepared, mesh)
    splits = prepared.splits

    def run(cell: _common.Cell) -> dict[str, Any]:
        return _common.fit(
            _common.cell_dir(workdir, cell),
            student=make_student(config, prepared, cell.seed),
            objective=objectives[cell.method], train_cfg=config.train,
            train_set=_common.subset(splits.train, cell.examples_per_class, cell.seed),
            validation=splits.validation, test=splits.test, mesh=mesh, seed=cell.seed,
            teacher=teacher_split if objectives[cell.method].needs_teacher else None,
            augment=config.augment, flip=config.flip, progress=config.run_progress,
            tensorboard=config.tensorboard,
            describe={"method": cell.method, "examples_per_class": cell.examples_per_class,
                      "seed": cell.seed})

    results = _common.run_sweep(cells(config) if selected is None else selected, run,
                                workdir=workdir, desc=STUDY)
    return results, teacher_result, prepared


def summarize(config: ConfigDict, results, teacher_result) -> dict[str, Any]:
    """The study's section of results.json: one row per method x size x checkpoint."""
    rows = []
    for method in config.methods:
        for n in _common.examples_per_class(config):
            runs = [results[c] for c in results
                    if c.method == method and c.examples_per_class == n]
            for which in ("last", "best"):
                rows.append({
                    "method": method, "label": _common.method_label(method),
                    "examples_per_class": n, "checkpoint": which,
                    **_report.stats([100.0 * r[which]["test"] for r in runs]),
                    "paper": _report.paper_distillation(config.dataset, method, n),
                })
    return {
        "dataset": config.dataset,
        "teacher_test_accuracy": 100.0 * teacher_result["last"]["test"],
        "rows": rows,
        "paired_gains": paired_gains(config, results),
    }


# (without, with) pairs whose per-seed difference isolates the Jacobian term.
JACOBIAN_PAIRS = (("logits+ce", "logits+jacobian+ce"), ("logits", "logits+jacobian"),
                  ("kd+ce", "kd+jacobian+ce"), ("kd+ce", "kd+vjp+ce"), ("kd+ce", "kd+jvp+ce"),
                  ("logits+ce", "noisy+ce"))


def paired_gains(config: ConfigDict, results) -> list[dict[str, Any]]:
    """Per-seed accuracy differences of the :data:`JACOBIAN_PAIRS` (see ``_report``)."""
    return _report.paired_gains(results, JACOBIAN_PAIRS, methods=config.methods,
                                sizes=_common.examples_per_class(config),
                                seeds=_common.seeds(config), label=_common.method_label)


def run(config: ConfigDict, workdir: str, *, command: str | None = None) -> dict[str, Any]:
    """Runs the study and writes results.{json,csv,md} and the plot; returns the summary."""
    t0 = time.perf_counter()
    results, teacher_result, _ = sweep(config, workdir)
    summary = summarize(config, results, teacher_result)
    return _common.write_summary(workdir, STUDY, summary, config=config, started=t0,
                                 seconds=[teacher_result["seconds"]]
                                 + [r["seconds"] for r in results.values()],
                                 command=command)


def main(argv: Sequence[str] | None = None) -> None:
    _common.main(STUDY, run, default_config=DEFAULT_CONFIG, default_workdir=DEFAULT_WORKDIR,
                 argv=argv)


if __name__ == "__main__":
    main()
