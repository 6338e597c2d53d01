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

import os
import time
from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict

from experiments import _budget, _cli, _data, _fit, _plots, _report, _runtime, _search
from experiments import _sweep
from experiments.configs._base import ConfigError
from jaxkd import training

STUDY = "limited_data"
DEFAULT_CONFIG = "limited_data_digits"
DEFAULT_WORKDIR = "runs/limited_data"

# A method is loss-term names joined by "+", e.g. "kd+jacobian+ce".
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
                  ("logits+ce", "noisy+ce"))


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


def paper_number(dataset: str, method: str, examples_per_class) -> float | None:
    """The paper's number for this cell, only when the setting is the paper's (CIFAR-100)."""
    if dataset.removeprefix("tfds:").split("/")[0].split(":")[0] != "cifar100":
        return None
    return dict(zip(PAPER_SIZES, PAPER.get(method, ()))).get(examples_per_class)


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


def prepare(config: ConfigDict) -> _data.PreparedData:
    return _data.load_data(config.dataset, data_dir=config.data_dir,
                           image_size=config.image_size,
                           validation_fraction=config.validation_fraction)


def make_student(config: ConfigDict, prepared: _data.PreparedData, seed: int):
    return _fit.build_model(config.student, image_shape=prepared.image_shape,
                            num_classes=prepared.num_classes, seed=seed)


def cells(config: ConfigDict) -> list[_sweep.Cell]:
    for method in config.methods:
        method_terms(method)  # fail before training anything
    return _sweep.cells(config)


def teacher_dir(config: ConfigDict, workdir: str) -> str:
    """``config.teacher_dir`` (a trained teacher to reuse) or ``<workdir>/teacher``."""
    return config.get("teacher_dir", "") or os.path.join(workdir, "teacher")


# ----------------------------------------------------------------------------------------
# The sweep.


class _Trainer:
    """Fits one student at a size with loss weights; builds each distinct step once.

    The budget of a size (``_budget``) is the same for every cell of that size, so the
    cells of one method, weights and step count share one built (compiled) step.
    """

    def __init__(self, config: ConfigDict, prepared: _data.PreparedData, mesh, teacher):
        self.config, self.prepared, self.mesh, self.teacher = config, prepared, mesh, teacher
        self._train_cfgs: dict[Any, ConfigDict] = {}
        self._steps: dict[Any, training.TrainStep] = {}

    def train_cfg(self, examples_per_class) -> ConfigDict:
        if examples_per_class not in self._train_cfgs:
            n = len(_data.subset(self.prepared.splits.train, examples_per_class, 0))
            self._train_cfgs[examples_per_class] = _budget.for_size(
                self.config.train, n, **_budget.settings(self.config))
        return self._train_cfgs[examples_per_class]

    def step(self, method: str, weights: dict[str, float], examples_per_class
             ) -> training.TrainStep:
        cfg = self.train_cfg(examples_per_class)
        key = (method, tuple(sorted(weights.items())), cfg.num_steps)
        if key not in self._steps:
            objective = build_objective(method, _search.loss_with(self.config.loss, weights))
            self._steps[key] = _sweep.build_steps({method: objective}, {method: cfg},
                                                  self.mesh, self.teacher)[method]
        return self._steps[key]

    def fit(self, run_dir: str, method: str, examples_per_class, seed: int,
            weights: dict[str, float]) -> dict[str, Any]:
        config, splits = self.config, self.prepared.splits
        cfg = self.train_cfg(examples_per_class)
        return _fit.fit(
            run_dir, student=make_student(config, self.prepared, seed),
            step=self.step(method, weights, examples_per_class), train_cfg=cfg,
            train_set=_data.subset(splits.train, examples_per_class, seed),
            validation=splits.validation, test=splits.test, seed=seed,
            augment=config.augment, flip=config.flip,
            progress=os.path.relpath(run_dir) if config.run_progress else False,
            tensorboard=config.tensorboard,
            describe={"method": method, "examples_per_class": examples_per_class,
                      "seed": seed, "loss_weights": dict(weights),
                      "num_steps": cfg.num_steps})


def study_seconds(teacher_result: dict[str, Any],
                  results: dict[_sweep.Cell, dict[str, Any]]) -> float:
    """The teacher's, the search's and every cell's recorded time (a reused run once)."""
    return float(teacher_result["seconds"]) + _search.seconds(
        teacher_result.get("weight_search"), results)


def sweep(config: ConfigDict, workdir: str, *, selected: Sequence[_sweep.Cell] | None = None
          ) -> tuple[dict[_sweep.Cell, dict[str, Any]], dict[str, Any], _data.PreparedData]:
    """Trains (or skips) the teacher, the weight search and every cell.

    Returns the cells' results, the teacher's result (with ``weight_search`` and
    ``budget`` added for the report) and the data.
    """
    selected = cells(config) if selected is None else selected
    mesh = _runtime.start(config, workdir)
    prepared = prepare(config)
    _budget.check_batches(config, prepared.num_classes)
    teacher, teacher_result = get_teacher(config, workdir, prepared, mesh)
    trainer = _Trainer(config, prepared, mesh, teacher)
    methods = list(dict.fromkeys(c.method for c in selected))
    search = _search.run(config, workdir, methods, method_terms, trainer.fit)

    def run(cell: _sweep.Cell) -> dict[str, Any]:
        weights = _search.chosen(search, cell.method)
        _search.reuse_run(config, workdir, cell, weights)
        return trainer.fit(_sweep.cell_dir(workdir, cell), cell.method,
                           cell.examples_per_class, cell.seed, weights)

    results = _sweep.run_sweep(selected, run, workdir=workdir, desc=STUDY)
    budget = {str(n): trainer.train_cfg(n).num_steps
              for n in dict.fromkeys(c.examples_per_class for c in selected)}
    return results, {**teacher_result, "weight_search": search, "budget": budget}, prepared


def get_teacher(config: ConfigDict, workdir: str, prepared: _data.PreparedData, mesh):
    """The teacher (trained once, or restored from ``teacher_dir``) and its result."""
    return _fit.get_teacher(
        teacher_dir(config, workdir), spec=config.teacher, train_cfg=config.teacher_train,
        prepared=prepared, mesh=mesh, seed=config.teacher_seed, augment=config.augment,
        flip=config.flip, tensorboard=config.tensorboard)


def summarize(config: ConfigDict, results, teacher_result) -> dict[str, Any]:
    """The study's section of results.json: one row per method x size x checkpoint."""
    sizes = _sweep.sizes(config)
    return {
        "dataset": config.dataset,
        "teacher_test_accuracy": 100.0 * teacher_result["last"]["test"],
        "budget": teacher_result.get("budget", {}),
        "weight_search": teacher_result.get("weight_search") or None,
        "rows": _report.accuracy_rows(
            results, config.methods, sizes, method_label,
            lambda m, n: paper_number(config.dataset, m, n)),
        "paired_gains": _report.paired_gains(
            results, JACOBIAN_PAIRS, methods=config.methods, sizes=sizes,
            seeds=_sweep.seeds(config), label=method_label),
    }


def run(config: ConfigDict, workdir: str, *, command: str | None = None) -> dict[str, Any]:
    """Runs the study and writes results.{json,csv,md} and the plots; returns the summary."""
    t0 = time.perf_counter()
    if config.get("teacher_only", False):
        mesh = _runtime.start(config, workdir)
        _, teacher_result = get_teacher(config, workdir, prepare(config), mesh)
        print(f"teacher: test accuracy {100 * teacher_result['last']['test']:.2f} % "
              f"({teacher_dir(config, workdir)})")
        return {"teacher": teacher_result}
    results, teacher_result, _ = sweep(config, workdir)
    summary = summarize(config, results, teacher_result)
    return _report.finish(STUDY, workdir, summary, config=config, started=t0, command=command,
                  total_seconds=study_seconds(teacher_result, results),
                  num_cells=len(results))


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
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, which in zip(axes, ("last", "best")):
        _plots.lines(ax, [r for r in s["rows"] if r["checkpoint"] == which],
                     x_key="examples_per_class", numeric=False)
        ax.set_xlabel("examples per class")
        ax.set_title(f"{s['dataset']}: {which} step"
                     + (" (by validation)" if which == "best" else ""))
    axes[1].legend(fontsize=7, loc="lower right")
    paths = [_plots.save(fig, workdir, "accuracy_vs_examples.png")]
    return paths + _plots.gain_figure(
        workdir, "gain_vs_examples.png", s.get("paired_gains") or [],
        title=f"{s['dataset']}: gain from the Jacobian term "
              "(paired by seed, last step)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return _cli.main(STUDY, run, console, default_config=DEFAULT_CONFIG,
                     default_workdir=DEFAULT_WORKDIR, argv=argv)


if __name__ == "__main__":
    main()
