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

from experiments import _cli, _data, _fit, _plots, _report, _search, _study, _sweep
from experiments.configs._base import ConfigError
from jaxkd import training

DEFAULT_CONFIG = "limited_data_digits"
DEFAULT_WORKDIR = "runs/limited_data"

# The method table: a method is loss terms joined by "+", e.g. "kd+jacobian+ce". Each
# term is built by its jaxkd.training constructor from its config ``loss.<term>`` (the
# constructor's keyword arguments) and labelled in the report.
TERMS = {
    "ce": (training.cross_entropy, "CE"),
    "kd": (training.distillation, "KD"),
    "logits": (training.logit_matching, "match activations"),
    "jacobian": (training.jacobian_matching, "Jacobians"),
    "vjp": (training.vjp_projection, "Jacobians (VJP projection)"),
    "jvp": (training.jvp_projection, "Jacobians (JVP projection)"),
    "jacobian_raw": (training.jacobian_matching, "Jacobians (unnormalised, top-1)"),
    "jacobian_all": (training.jacobian_matching, "Jacobians (unnormalised, all outputs)"),
    "noisy": (training.noisy_distillation, "noisy distillation"),
    "noisy_kl": (training.noisy_distillation, "noisy distillation (KL)"),
    "attention": (training.attention_transfer, "attention"),
    "attention_jacobian": (training.attention_jacobian, "attention Jacobians"),
}
# The paper's row names for the methods that are exactly its rows.
PAPER_LABELS = {
    "ce": "cross-entropy only",
    "logits+ce": "match activations + CE",
    "logits+jacobian+ce": "match activations + Jacobians + CE",
    "logits": "match activations only",
    "logits+jacobian": "match activations + Jacobians",
}
# Srinivas & Fleuret (2018), from the authors' poster and slides (docs/experiments.md).
# CIFAR-100, VGG-9 teacher (64.78 %) -> VGG-4 student, test accuracy (%) at 10, 50 and
# all (500) examples per class.
PAPER_SIZES = (10, 50, "all")
PAPER = dict(ce=(20.03, 37.6, 54.28), logits=(33.6, 45.73, 56.59))
PAPER.update({"logits+ce": (33.92, 46.47, 56.65), "logits+jacobian+ce": (39.55, 49.49, 54.57),
              "logits+jacobian": (38.16, 47.79, 51.33)})
# (without, with) pairs whose per-seed difference isolates the Jacobian term.
JACOBIAN_PAIRS = (("logits+ce", "logits+jacobian+ce"), ("logits", "logits+jacobian"),
                  ("kd+ce", "kd+jacobian+ce"), ("kd+ce", "kd+vjp+ce"), ("kd+ce", "kd+jvp+ce"),
                  ("logits+ce", "noisy+ce"), ("kd+ce", "kd+jacobian_raw+ce"),
                  ("kd+ce", "kd+jacobian_all+ce"), ("kd+ce", "kd+noisy+ce"),
                  ("kd+ce", "kd+noisy_kl+ce"))
# The config keys that change the teacher, and a student cell (with its loss terms).
TEACHER_KEYS = ("dataset", *_study.DATA_KEYS, "teacher", "teacher_train", "teacher_seed")
CELL_KEYS = ("dataset", *_study.DATA_KEYS, "student", "train", "train_epochs",
             "train_max_steps")


def method_terms(method: str) -> list[str]:
    terms = [t.strip() for t in method.split("+") if t.strip()]
    unknown = [t for t in terms if t not in TERMS]
    if not terms or unknown:
        raise ConfigError(f"method {method!r}: unknown loss term(s) {unknown}; a method is "
                          f"terms joined by '+' from {sorted(TERMS)}.")
    return terms


def method_label(method: str) -> str:
    """A readable name: the paper's row name where it has one, else the terms joined."""
    return PAPER_LABELS.get(method) or " + ".join(TERMS[t][1] for t in method_terms(method))


def paper_number(dataset: str, method: str, examples_per_class) -> float | None:
    """The paper's number for this cell, only when the setting is the paper's (CIFAR-100)."""
    if dataset.removeprefix("tfds:").split("/")[0].split(":")[0] != "cifar100":
        return None
    return dict(zip(PAPER_SIZES, PAPER.get(method, ()))).get(examples_per_class)


def build_objective(method: str, loss: ConfigDict) -> training.Objective:
    """The :class:`jaxkd.training.Objective` of ``method`` with ``loss``'s arguments."""
    return training.Objective(*(TERMS[t][0](**loss[t]) for t in method_terms(method)))


def prepare(config: ConfigDict) -> _study.StudyData:
    data = _data.load_data(config.dataset, data_dir=config.data_dir,
                           image_size=config.image_size,
                           validation_fraction=config.validation_fraction)
    return _study.StudyData(teacher=data, student=data)


def make_student(config: ConfigDict, data: _study.StudyData, method: str, seed: int,
                 teacher=None):
    del method, teacher  # every method trains the same student network
    return _fit.build_model(config.student, image_shape=data.student.image_shape,
                            num_classes=data.student.num_classes, seed=seed)


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
    name="limited_data", terms=method_terms, objective=build_objective,
    label=method_label, prepare=prepare, make_student=make_student,
    teacher_keys=TEACHER_KEYS, cell_keys=lambda method: CELL_KEYS,
    summary=lambda config: {"dataset": config.dataset},
    paper=lambda config, method, n: paper_number(config.dataset, method, n),
    pairs=JACOBIAN_PAIRS, markdown=markdown, plots=plots, console=console)


def cells(config: ConfigDict) -> list[_sweep.Cell]:
    """The sweep's cells (the methods checked against the method table)."""
    return _study.cells(STUDY, config)


def run(config: ConfigDict, workdir: str, *, command: str | None = None) -> dict[str, Any]:
    """Runs the study (``_study.run``): results.{json,csv,md} and the plots; the summary."""
    return _study.run(STUDY, config, workdir, command=command)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return _cli.main(STUDY.name, run, console, default_config=DEFAULT_CONFIG,
                     default_workdir=DEFAULT_WORKDIR, argv=argv)


if __name__ == "__main__":
    main()
