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

import itertools
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict

from experiments import _budget, _cli, _data, _fit, _plots, _report, _runtime, _sweep
from experiments import _workdir
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
# Loss weights chosen on validation before the sweep.

SEARCH_DIR = "weight_search"
SEARCH_FILE = "weight_search.json"
# The loss-term names whose weight the search chooses: (loss key, candidates' config key).
SEARCHED = {"jacobian": ("jacobian_weight", "jacobian_weights"),
            "vjp": ("vjp_weight", "projection_weights"),
            "jvp": ("jvp_weight", "projection_weights")}


def search_sizes(config: ConfigDict) -> list[int | str]:
    return list(config.get("weight_search_sizes", ()) or ())


def search_seeds(config: ConfigDict) -> list[int]:
    return list(range(int(config.get("weight_search_seeds", 1) or 1)))


def candidates(config: ConfigDict, method: str) -> list[dict[str, float]]:
    """The loss-weight settings the search tries for ``method`` (``[]``: none to choose).

    One axis per searched term of the method (``SEARCHED``), their product if several.
    """
    if not search_sizes(config):
        return []
    axes = []
    for term in method_terms(method):
        if term in SEARCHED:
            key, values = SEARCHED[term]
            axes.append([(key, float(v)) for v in config[values]])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else []


def candidate_name(weights: dict[str, float]) -> str:
    """``{"jacobian_weight": 10.0}`` -> ``"jacobian_weight10"`` (a directory name)."""
    return "-".join(f"{k}{v:g}" for k, v in sorted(weights.items())) or "default"


def search_cell(method: str, weights: dict[str, float], examples_per_class, seed: int
                ) -> _sweep.Cell:
    return _sweep.Cell(f"{method}@{candidate_name(weights)}", examples_per_class, seed)


def loss_with(loss: ConfigDict, weights: dict[str, float]) -> ConfigDict:
    out = ConfigDict(loss.to_dict())
    out.update(weights)
    return out


def choose_weights(config: ConfigDict, search_results: dict[_sweep.Cell, dict[str, Any]]
                   ) -> dict[str, Any]:
    """Per method, the candidate of best mean best-step validation accuracy.

    The mean is over the search's sizes and seeds; a tie goes to the candidate listed
    first. Only validation accuracies are read: the test split chooses nothing.
    """
    out = {"sizes": search_sizes(config), "seeds": search_seeds(config), "methods": {}}
    for method in config.methods:
        rows, best = [], None
        for weights in candidates(config, method):
            per_size = {}
            for n in out["sizes"]:
                per_size[str(n)] = [100.0 * search_results[search_cell(method, weights, n, s)]
                                    ["best"]["validation"] for s in out["seeds"]]
            values = [v for vs in per_size.values() for v in vs]
            row = {"weights": weights, "validation": per_size,
                   "mean": sum(values) / len(values)}
            rows.append(row)
            if best is None or row["mean"] > best["mean"]:
                best = row
        if rows:
            out["methods"][method] = {"candidates": rows, "chosen": best["weights"]}
    return out


def chosen_weights(search: dict[str, Any], method: str) -> dict[str, float]:
    return dict(search["methods"].get(method, {}).get("chosen", {}))


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
            objective = build_objective(method, loss_with(self.config.loss, weights))
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


def weight_search(config: ConfigDict, workdir: str, trainer: _Trainer,
                  methods: Sequence[str]) -> dict[str, Any]:
    """Trains the search's cells (cached) and writes ``weight_search.json``: the choice."""
    todo = [(m, w, n, s) for s in search_seeds(config) for n in search_sizes(config)
            for m in methods for w in candidates(config, m)]
    by_cell = {search_cell(m, w, n, s): (m, w) for m, w, n, s in todo}
    search_workdir = os.path.join(workdir, SEARCH_DIR)
    check_search_runs(config, search_workdir, {
        _sweep.cell_dir(search_workdir, cell): {
            **_sweep.cell_config(config, _sweep.Cell(m, cell.examples_per_class, cell.seed)),
            "search_weights": dict(w)}
        for cell, (m, w) in by_cell.items()})

    def run(cell: _sweep.Cell) -> dict[str, Any]:
        method, weights = by_cell[cell]
        return trainer.fit(_sweep.cell_dir(search_workdir, cell), method,
                           cell.examples_per_class, cell.seed, weights)

    results = _sweep.run_sweep(list(by_cell), run, workdir=search_workdir,
                               desc="weight search")
    search = choose_weights(_with_methods(config, methods), results)
    search["seconds"] = sum(float(r["seconds"]) for r in results.values())
    _workdir.write_json(os.path.join(workdir, SEARCH_FILE), search)
    return search


def check_search_runs(config: ConfigDict, search_workdir: str,
                      runs: dict[str, dict[str, Any]]) -> None:
    """The search's runs, like the sweep's cells (``_sweep.check_configs``): a started run
    made with another config is refused, or deleted with ``on_change=retrain``; then each
    run's config is noted for ``_fit.fit`` to record. (Its main cells were checked before
    training; this keeps a retrained sweep from reusing a stale search.)"""
    changes = _workdir.changed(search_workdir, runs)
    if changes and config.get("on_change", "refuse") != "retrain":
        raise _workdir.ConfigChanged(_workdir.describe_changes(search_workdir, changes))
    for run_dir in changes:
        shutil.rmtree(run_dir)
    for run_dir, run_config in runs.items():
        _workdir.expect(run_dir, run_config)


def _with_methods(config: ConfigDict, methods: Sequence[str]) -> ConfigDict:
    out = ConfigDict(config.to_dict())
    out.methods = tuple(methods)
    return out


def reuse_search_run(config: ConfigDict, workdir: str, cell: _sweep.Cell,
                     weights: dict[str, float]) -> None:
    """Copies the search's run of ``cell`` with the chosen ``weights`` as the cell's run.

    That run is the same training (same seed, subset, initial weights, budget and loss),
    so the sweep does not train it twice. A cell already started is left to resume.
    """
    if not weights or cell.examples_per_class not in search_sizes(config) \
            or cell.seed not in search_seeds(config):
        return
    source = _sweep.cell_dir(os.path.join(workdir, SEARCH_DIR),
                             search_cell(cell.method, weights, cell.examples_per_class,
                                         cell.seed))
    target = _sweep.cell_dir(workdir, cell)
    if _workdir.is_done(source) and not os.path.exists(target):
        shutil.copytree(source, target + ".tmp", dirs_exist_ok=True)
        result = _workdir.read_json(_workdir.result_path(target + ".tmp"))
        result["reused_from"] = os.path.relpath(source, workdir)  # its time counts once
        # The cell's own run config (noted by _sweep.check_configs): a re-run checks it.
        run_config = _workdir.expected(target)
        if run_config is not None:
            result[_workdir.RUN_CONFIG] = run_config
        _workdir.write_json(_workdir.result_path(target + ".tmp"), result)
        os.replace(target + ".tmp", target)


def study_seconds(teacher_result: dict[str, Any],
                  results: dict[_sweep.Cell, dict[str, Any]]) -> float:
    """The teacher's, the search's and every cell's recorded time (a reused run once)."""
    search = teacher_result.get("weight_search") or {}
    return (float(teacher_result["seconds"]) + float(search.get("seconds", 0.0))
            + sum(float(r["seconds"]) for r in results.values() if not r.get("reused_from")))


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
    search = weight_search(config, workdir, trainer, methods)

    def run(cell: _sweep.Cell) -> dict[str, Any]:
        weights = chosen_weights(search, cell.method)
        reuse_search_run(config, workdir, cell, weights)
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
        notes=_report.budget_notes(s), appendix=search_md(s.get("weight_search")), **REPORT)


def search_md(search: dict[str, Any] | None) -> list[str]:
    """The weight search's table: best-step validation accuracy per candidate, the choice."""
    if not search or not search.get("methods"):
        return []
    sizes = [str(n) for n in search["sizes"]]
    out = ["", "### Loss weights chosen on validation", "",
           f"Before the sweep, each method with a Jacobian term was trained with every "
           f"candidate weight at {', '.join(sizes)} examples per class, seed(s) "
           f"{', '.join(map(str, search['seeds']))}; the candidate of best mean validation "
           f"accuracy (best step, %) is used for every cell of that method (**bold**). The "
           f"test split chose nothing.", "",
           "| method | weights | " + " | ".join(f"val. n={n}" for n in sizes)
           + " | mean |", "|---|---|" + "---|" * (len(sizes) + 1)]
    for method, entry in search["methods"].items():
        for row in entry["candidates"]:
            mark = "**" if row["weights"] == entry["chosen"] else ""
            vals = [sum(row["validation"][n]) / len(row["validation"][n]) for n in sizes]
            out.append(f"| {method_label(method)} | {mark}{candidate_name(row['weights'])}"
                       f"{mark} | " + " | ".join(f"{v:.2f}" for v in vals)
                       + f" | {mark}{row['mean']:.2f}{mark} |")
    return out


def console(s: dict[str, Any]) -> str:
    if "rows" not in s:
        return ""
    return "\n".join(_report.main_tables(s, **REPORT)
                     + search_md(s.get("weight_search"))).strip()


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
