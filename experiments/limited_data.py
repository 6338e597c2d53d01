"""Study 1: distillation with limited data (Srinivas & Fleuret 2018, Table 1).

A teacher is trained once on the whole training split (cached in the work directory);
then a student is trained for every method x examples per class x seed, and the test
accuracy is reported as mean +- std over seeds, at the last step and at the step with
the best validation accuracy (the validation split chooses; the test split never does),
with the paired (same-seed) gain of each added Jacobian term.

    python -m experiments.limited_data --workdir runs/limited_data
    python -m experiments.limited_data --config=limited_data_cifar100 \
        --workdir runs/limited_data_cifar100

Outputs in the work directory: ``results.json``, ``results.csv``, ``results.md``,
``accuracy_vs_examples.png`` and ``gain_vs_examples.png``; ``teacher/`` and
``cells/<method>/n<k>/seed<s>/`` hold each network's last checkpoint, metrics and
``result.json``. Re-running the command skips finished cells. See docs/experiments.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict

from experiments import _cli, _methods, _plots, _report, _runs, _search, _study
from experiments._methods import (CELL_KEYS, JACOBIAN_PAIRS, PAPER, PAPER_LABELS,  # noqa: F401
                                  PAPER_SIZES, TEACHER_KEYS, TERMS, build_objective,
                                  make_student, method_label, method_terms, paper_number,
                                  prepare)

DEFAULT_CONFIG = "limited_data_digits"
DEFAULT_WORKDIR = "runs/limited_data"
ABOUT = ("Study 1 (Table 1): students distilled from a teacher with few examples per class, "
         "one row per method; needs nothing but this package on the default offline digits "
         "(other configs: their dataset, docs/data.md).")

# ----------------------------------------------------------------------------------------
# The report of this study.


REPORT = dict(what="Test accuracy", gains_title="Gain from the Jacobian term")


def markdown(s: dict[str, Any]) -> str:
    cfg = s.get("config", {})
    return _report.accuracy_section(
        s, title="Study 1: distillation with limited data",
        intro=f"Data: `{s['dataset']}`; teacher `{cfg.get('teacher', {}).get('name')}` "
              f"(test accuracy {s['teacher_test_accuracy']:.1f} %); student "
              f"`{cfg.get('student', {}).get('name')}`; seeds: {cfg.get('num_seeds')}; "
              "test accuracy (%) as mean ± std over seeds.",
        paper_note="The paper's numbers (CIFAR-100) are not beside ours: the setting "
                   "differs. They are in docs/experiments.md, for the shape of the "
                   "comparison.",
        notes=_report.budget_notes(s),
        appendix=_search.markdown(s.get("weight_search"), method_label), **REPORT)


def console(s: dict[str, Any]) -> str:
    if "rows" not in s:
        return ""
    return "\n".join(_report.main_tables(s, **REPORT)
                     + _search.markdown(s.get("weight_search"), method_label)).strip()


def plots(workdir: str, s: dict[str, Any]) -> list[str]:
    plt = _plots.pyplot()
    methods = s["config"]["methods"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, which in zip(axes, ("last", "best")):
        _plots.lines(ax, [r for r in s["rows"] if r["checkpoint"] == which],
                     x_key="examples_per_class", numeric=False, methods=methods)
        ax.set_xlabel("examples per class")
        ax.set_title(f"{s['dataset']}: {which} step"
                     + (" (by validation)" if which == "best" else ""))
    axes[1].legend(fontsize=7, loc="lower right")
    paths = [_plots.save(fig, workdir, "accuracy_vs_examples.png")]
    return paths + _plots.gain_figure(
        workdir, "gain_vs_examples.png", s.get("paired_gains") or [],
        title=f"{s['dataset']}: gain from the Jacobian term "
              "(paired by seed, last step)", methods=methods)


STUDY = _study.Study(
    name="limited_data", **_methods.FIELDS,
    summary=lambda config: {"dataset": config.dataset},
    paper=lambda config, method, n: paper_number(config.dataset, method, n),
    markdown=markdown, plots=plots, console=console)


def cells(config: ConfigDict) -> list[_runs.Cell]:
    """The sweep's cells (the methods checked against the method table)."""
    return _study.cells(STUDY, config)


def run(config: ConfigDict, workdir: str, *, command: str | None = None) -> dict[str, Any]:
    """Runs the study (``_study.run``): results.{json,csv,md} and the plots; the summary."""
    return _study.run(STUDY, config, workdir, command=command)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return _cli.main(STUDY.name, run, console, default_config=DEFAULT_CONFIG,
                     default_workdir=DEFAULT_WORKDIR, about=ABOUT, argv=argv)


if __name__ == "__main__":
    main()
