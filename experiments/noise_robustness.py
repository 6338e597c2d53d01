"""Study 2: the students of study 1 on test inputs with additive Gaussian noise.

A study of the driver (``_study``) with study 1's method table (``_methods``): the same
runs, so it reuses study 1's work directory and trains only the cells it lacks, then
evaluates every final student and the teacher under noise (``_noise``) at each sigma of
``config.noise_sigmas``: accuracy, the paired gains of the Jacobian term, and where the
term acts (input gradients, logit drift and spread). One command trains and evaluates:

    python -m experiments.noise_robustness                # = --workdir runs/limited_data
    python -m experiments.noise_robustness --config=noise_robustness_fashion \
        --config.teacher_dir=runs/limited_data_fashion/teacher \
        --workdir runs/noise_robustness_fashion

Outputs: the ``noise_robustness`` section of ``results.{json,csv,md}``,
``accuracy_vs_sigma.png`` and ``sensitivity.png``; each run directory caches its
measurements in ``noise.json``. See docs/experiments.md.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict

from experiments import _cli, _fit, _methods, _noise, _plots, _report, _runs, _study
from experiments._noise import (CACHE_VERSION, CLIPPED, NOISE_FILE, UNCLIPPED,  # noqa: F401
                                Evaluator, class_gradients, drift_and_spread, eval_key,
                                gradient_key, gradient_stats, logits, noisy_images,
                                readings, teacher_id)

DEFAULT_CONFIG = "limited_data_digits"
DEFAULT_WORKDIR = "runs/limited_data"
ABOUT = ("Study 2: study 1's final students (trained here if missing) and the teacher "
         "evaluated under Gaussian input noise; shares study 1's config and work directory "
         "(default runs/limited_data).")


def noisy_gains(per_cell: dict[_runs.Cell, dict[str, Any]], methods: Sequence[str],
                sizes: Sequence[Any], sigmas: Sequence[float], seeds: Sequence[int], *,
                reading: str = _noise.CLIPPED) -> list[dict[str, Any]]:
    """The paired gains (``_methods.JACOBIAN_PAIRS``) of accuracy under noise, in points,
    per size and sigma, for one ``reading``: a seed's students share their subset,
    initial weights and noise draws, so the difference is the Jacobian term's alone."""
    return _gains(per_cell, methods, sizes, sigmas, seeds,
                  lambda m, sigma: m["accuracy"][reading][sigma], reading=reading)


def _gains(per_cell, methods, sizes, sigmas, seeds, value, **tags) -> list[dict[str, Any]]:
    """``_report.paired_gains`` of the Jacobian pairs over sigma, of ``value(measure, sigma)``."""
    return _report.paired_gains(
        per_cell, _methods.JACOBIAN_PAIRS, methods=methods, sizes=sizes, seeds=seeds,
        label=_methods.method_label, columns=sigmas, column_key="sigma", value=value,
        checkpoint="last", **tags)


def drop_gains(per_cell: dict[_runs.Cell, dict[str, Any]], methods: Sequence[str],
               sizes: Sequence[Any], sigmas: Sequence[float], seeds: Sequence[int], *,
               reading: str = _noise.CLIPPED) -> list[dict[str, Any]]:
    """Robustness itself: per seed, each student's accuracy drop from clean (its noisy
    minus its clean accuracy), the Jacobian method's minus its base's, in points, per size
    and sigma > 0 (positive: the term lost less). A gain in noisy accuracy holds the clean
    gain too; this one does not. None without sigma 0 among ``sigmas``."""
    clean = [s for s in sigmas if s == 0]
    if not clean:
        return []
    return _gains(per_cell, methods, sizes, [s for s in sigmas if s > 0], seeds,
                  lambda m, sigma: (m["accuracy"][reading][sigma]
                                    - m["accuracy"][reading][clean[0]]),
                  reading=reading, quantity="drop")


def accuracy_rows(measured: dict[str, list[dict[str, Any]]], sizes: Sequence[Any],
                  sigmas: Sequence[float], reading: str) -> list[dict[str, Any]]:
    """Test accuracy (%) under noise per method ("teacher" first) x size x sigma.

    ``measured`` maps a method to its rows ``{"examples_per_class", "measure"}`` (one
    per seed; the teacher's at every size)."""
    rows = []
    for n in sizes:
        for method, runs in measured.items():
            for sigma in sigmas:
                values = [100.0 * r["measure"]["accuracy"][reading][sigma] for r in runs
                          if r["examples_per_class"] == n]
                rows.append({"method": method, "label": _label(method),
                             "examples_per_class": n, "sigma": sigma, "reading": reading,
                             **_report.stats(values)})
    return rows


def sensitivity_rows(measured: dict[str, list[dict[str, Any]]], sizes: Sequence[Any],
                     sigmas: Sequence[float], reading: str) -> list[dict[str, Any]]:
    """Per method x size: gradient norm and cosine, and drift and spread at each sigma > 0
    (``reading``), as stats rows over seeds with a ``quantity`` and a ``column`` title."""
    rows = []
    for n in sizes:
        for method, runs in measured.items():
            runs = [r["measure"] for r in runs if r["examples_per_class"] == n]
            entries = [(q, None, title, [m[q] for m in runs if q in m])
                       for q, title in _noise.QUANTITIES.items()]
            for sigma in sigmas:
                if sigma > 0:
                    entries += [("drift", sigma, f"drift σ={sigma:g}",
                                 [m["drift"][reading][sigma] for m in runs]),
                                ("spread", sigma, f"random part σ={sigma:g}",
                                 [m["spread"][reading][sigma] for m in runs])]
            for quantity, sigma, title, values in entries:
                values = [v for v in values if v is not None and math.isfinite(v)]
                rows.append({"method": method, "label": _label(method),
                             "examples_per_class": n, "quantity": quantity, "sigma": sigma,
                             "reading": reading, "column": title, "format": ".3g",
                             **_report.stats(values)})
    return rows


def _label(method: str) -> str:
    return "teacher (all training data)" if method == "teacher" else (
        _methods.method_label(method))


def select(config: ConfigDict) -> list[_runs.Cell]:
    """Study 1's cells at the sizes to evaluate (``noise_examples_per_class``)."""
    sizes = list(config.noise_examples_per_class) or _runs.sizes(config)
    return [c for c in _runs.cells(config) if c.examples_per_class in sizes]


def evaluate(session: _study.Session, outcome: _study.Outcome
             ) -> tuple[dict[str, Any], float]:
    """After the cells: every selected student and the teacher under noise; the
    section of the results and the seconds the measures took."""
    del outcome
    config, workdir = session.config, session.workdir
    sizes = list(dict.fromkeys(c.examples_per_class for c in select(config)))
    prepared, mesh = session.data.student, session.mesh
    sigmas = [float(s) for s in config.noise_sigmas]
    kinds = readings(config)
    teacher_dir = _study.teacher_dir(config, workdir)
    tid = teacher_id(teacher_dir)
    evaluator = Evaluator(prepared, mesh, sigmas=sigmas, readings=kinds,
                          draws=config.noise_draws,
                          gradient_examples=config.noise_gradient_examples,
                          batch_size=config.train.eval_batch_size, teacher=tid)

    @functools.cache
    def teacher_state():
        model = _fit.build_model(config.teacher, image_shape=prepared.image_shape,
                                 num_classes=prepared.num_classes, seed=config.teacher_seed)
        return _fit.restore_state(teacher_dir, _fit.template_state(
            model, config.teacher_train, mesh))

    @functools.cache
    def teacher_reference():
        return evaluator.teacher_reference(teacher_state())

    def student_state(cell):
        template = _fit.template_state(
            _methods.make_student(config, session.data, cell.method, cell.seed),
            config.train, mesh)
        return _fit.restore_state(_runs.cell_dir(workdir, cell), template)

    per_cell = _runs.run_sweep(
        session.selected, lambda cell: evaluator.measure(
            _runs.cell_dir(workdir, cell), functools.partial(student_state, cell),
            cell.seed, teacher=teacher_reference), workdir=None, desc="noise")
    # Cached in this work directory, even when the teacher is another run's, under the
    # teacher's identity: another teacher is measured afresh.
    teacher_measures = {
        seed: evaluator.measure(os.path.join(workdir, "teacher_noise", tid, f"seed{seed}"),
                                teacher_state, seed, teacher=teacher_reference)
        for seed in _runs.seeds(config)}
    measured = {"teacher": [{"examples_per_class": n, "measure": m} for n in sizes
                            for m in teacher_measures.values()]}
    for method in config.methods:
        measured[method] = [{"examples_per_class": c.examples_per_class, "measure": m}
                            for c, m in per_cell.items() if c.method == method]
    seeds = _runs.seeds(config)

    def tables(reading: str, prefix: str = "") -> dict[str, Any]:
        return {f"{prefix}rows": accuracy_rows(measured, sizes, sigmas, reading),
                f"{prefix}gains" if prefix else "paired_gains": noisy_gains(
                    per_cell, config.methods, sizes, sigmas, seeds, reading=reading),
                f"{prefix}drop_gains": drop_gains(
                    per_cell, config.methods, sizes, sigmas, seeds, reading=reading),
                f"{prefix}sensitivity": sensitivity_rows(measured, sizes, sigmas, reading)}

    summary = {
        "dataset": config.dataset, "examples_per_class": sizes, "sigmas": sigmas,
        "reading": kinds[0], "draws": evaluator.draws,
        "gradient_examples": evaluator.gradient_examples,
        "teacher_test_accuracy": 100.0 * session.teacher_result["last"]["test"],
        **tables(kinds[0])}
    if kinds[1:]:
        summary.update(other_reading=kinds[1], **tables(kinds[1], "other_"))
    seconds = sum(m["seconds"] for m in [*per_cell.values(), *teacher_measures.values()])
    return summary, seconds


def _reading_text(reading: str) -> str:
    return ("noisy pixels clipped back to [0, 1]" if reading == _noise.CLIPPED else
            "noisy pixels not clipped (they leave [0, 1])")


def _reading_tables(s: dict[str, Any], n, rows, gains, drops, sensitivity, reading: str,
                    heading: str) -> list[str]:
    out = ["", f"#### {heading}", "",
           f"Test accuracy (%), {_reading_text(reading)}; each seed's accuracy is the "
           f"mean over its {s.get('draws', 1)} noise draws; mean ± std over seeds.", "",
           _report.table([r for r in rows if r["examples_per_class"] == n],
                         col_key="sigma", col_title="method \\ sigma")]
    gains = [r for r in gains if r["examples_per_class"] == n]
    if gains:
        out += ["", "Gain from the Jacobian term under noise, paired by seed (same "
                "subset, initial weights and noise draws), " + _report.GAINS_TEXT + ":", "",
                _report.table(gains, col_key="sigma", col_title="comparison \\ sigma",
                              signed=True), *_report.holm_line(s, gains)]
    drops = [r for r in drops if r["examples_per_class"] == n]
    if drops:
        out += ["", "Robustness from the Jacobian term: each seed's drop from clean accuracy "
                "(noisy minus clean), the first method's minus the second's (positive: it "
                "lost less; the clean gain taken out), " + _report.GAINS_TEXT + ":", "",
                _report.table(drops, col_key="sigma", col_title="comparison \\ sigma",
                              signed=True), *_report.holm_line(s, drops)]
    sens = [r for r in sensitivity if r["examples_per_class"] == n]
    if sens:
        out += ["", "Where the Jacobian term acts, mean ± std over seeds: the input-"
                "gradient norm of the logit of the teacher's top-1 class (raw-pixel units) "
                f"and its cosine with the teacher's (first {s.get('gradient_examples')} "
                "clean test images); the drift of the mean logits under noise, "
                "||E S(x+ξ) − S(x)||², and its random part, E||S(x+ξ) − E S(x+ξ)||² "
                "(whole test split, over the draws):", "",
                _report.table(sens, col_key="column", col_title="method \\ measure")]
    return out


def markdown(s: dict[str, Any]) -> str:
    out = ["## Study 2: robustness to Gaussian input noise", ""]
    out += _report.header(s)
    main = s.get("reading", _noise.CLIPPED)
    other = s.get("other_reading")
    out += ["", f"Data: `{s['dataset']}`; the final students of study 1 on test images "
            "with additive N(0, sigma^2) noise per pixel (pixels in [0, 1], noise added "
            f"before normalisation; {_reading_text(main)}"
            + (f"; the {other} reading follows each table" if other else "") + ")."]
    for n in s["examples_per_class"]:
        out += ["", f"### {n} examples per class"]
        out += _reading_tables(s, n, s["rows"], s.get("paired_gains") or [],
                               s.get("drop_gains") or [], s.get("sensitivity") or [], main,
                               main)
        if other:
            out += _reading_tables(s, n, s.get("other_rows") or [],
                                   s.get("other_gains") or [],
                                   s.get("other_drop_gains") or [],
                                   s.get("other_sensitivity") or [], other,
                                   f"{other} (for comparison)")
    return "\n".join(out)


def console(s: dict[str, Any]) -> str:
    if "rows" not in s:  # a teacher_only run
        return ""
    return markdown(s).split("\n", 2)[2].strip()


def plots(workdir: str, s: dict[str, Any]) -> list[str]:
    plt = _plots.pyplot()
    ns = s["examples_per_class"]
    methods = s["config"]["methods"]
    cols = min(2, len(ns))
    rows = -(-len(ns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.8 * rows), sharey=True,
                             squeeze=False)
    for ax, n in zip(axes.flat, ns):
        _plots.lines(ax, [r for r in s["rows"] if r["examples_per_class"] == n],
                     x_key="sigma", numeric=True, methods=methods)
        ax.set_xlabel(f"noise sigma (pixels in [0, 1], {s.get('reading', _noise.CLIPPED)})")
        ax.set_title(f"{s['dataset']}: {n} examples per class")
    for ax in list(axes.flat)[len(ns):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    paths = [_plots.save(fig, workdir, "accuracy_vs_sigma.png")]
    sens = s.get("sensitivity") or []
    if sens:
        paths.append(sensitivity_plot(workdir, s, sens, methods))
    return paths


def sensitivity_plot(workdir: str, s: dict[str, Any], sens: Sequence[dict[str, Any]],
                     methods: Sequence[str]) -> str:
    """Per size: drift and random part against sigma, and gradient cosine against norm."""
    plt = _plots.pyplot()
    ns = s["examples_per_class"]
    fig, axes = plt.subplots(len(ns), 3, figsize=(17, 4.2 * len(ns)), squeeze=False)
    for (drift_ax, spread_ax, grad_ax), n in zip(axes, ns):
        here = [r for r in sens if r["examples_per_class"] == n]
        for ax, quantity, title in ((drift_ax, "drift", "||E S(x+ξ) − S(x)||²"),
                                    (spread_ax, "spread", "E||S(x+ξ) − E S(x+ξ)||²")):
            _plots.lines(ax, [r for r in here if r["quantity"] == quantity], x_key="sigma",
                         numeric=True, methods=methods, ylabel=title)
            ax.set_xlabel("noise sigma")
            ax.set_title(f"{n} per class: {title}")
        by_method: dict[str, dict[str, dict[str, Any]]] = {}
        for r in here:
            if r["quantity"] in _noise.QUANTITIES and r["num_seeds"]:
                by_method.setdefault(r["method"], {})[r["quantity"]] = r
        for method, q in by_method.items():
            if len(q) < 2:
                continue
            norm, cosine = q["grad_norm"], q["grad_cosine"]
            grad_ax.errorbar(norm["mean"], cosine["mean"], xerr=norm["std"],
                             yerr=cosine["std"], capsize=3, label=norm["label"],
                             color=_plots.color(method, methods),
                             marker=_plots.marker(method), linestyle="none")
        grad_ax.set_xlabel("input-gradient norm (teacher's top-1 logit)")
        grad_ax.set_ylabel("cosine with the teacher's gradient")
        grad_ax.set_title(f"{n} per class: input gradients")
        grad_ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    axes[0][2].legend(fontsize=7)
    return _plots.save(fig, workdir, "sensitivity.png")


STUDY = _study.Study(
    name="noise_robustness", **_methods.FIELDS, summary=lambda config: {},
    paper=lambda config, method, n: None, markdown=markdown, plots=plots, console=console,
    select=select, evaluate=evaluate)
# This study's section of the results (a ``_report.Section``).
REPORT = STUDY


def cells(config: ConfigDict) -> list[_runs.Cell]:
    """The cells study 2 trains or reuses (the methods checked against the table)."""
    return _study.cells(STUDY, config)


def run(config: ConfigDict, workdir: str, *, command: str | None = None) -> dict[str, Any]:
    """Trains what study 1's students lack, evaluates them under noise, writes results."""
    return _study.run(STUDY, config, workdir, command=command)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return _cli.main(STUDY.name, run, console, default_config=DEFAULT_CONFIG,
                     default_workdir=DEFAULT_WORKDIR, about=ABOUT, argv=argv)


if __name__ == "__main__":
    main()
