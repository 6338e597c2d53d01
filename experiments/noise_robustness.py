"""Study 2: the students of study 1 on test inputs with additive Gaussian noise.

Each final student of study 1 (last step) is evaluated on the test split corrupted with
``N(0, sigma^2)`` per pixel, added to the raw ``[0, 1]`` pixels before normalisation,
for every ``sigma`` of ``config.noise_sigmas``. The noise draw depends on the seed and
sigma only, so all methods of a seed see the same noisy images (a paired comparison);
the std over seeds includes the draw. The teacher is evaluated the same way.

This study imports study 1 on purpose: it shares study 1's config, work directory and
cells, so it reuses study 1's checkpoints and trains only the cells that are missing:

    python -m experiments.noise_robustness                       # = --workdir runs/limited_data
    python -m experiments.noise_robustness --workdir runs/limited_data --config.noise_sigmas=0,0.5,1

Outputs: the ``noise_robustness`` section of ``results.{json,csv,md}`` and
``accuracy_vs_sigma.png``; each run directory caches its accuracies in ``noise.json``.
"""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from experiments import _cli, _data, _fit, _plots, _report, _study, _sweep, _workdir
from experiments import limited_data
from jaxkd import data

DEFAULT_CONFIG = limited_data.DEFAULT_CONFIG
DEFAULT_WORKDIR = limited_data.DEFAULT_WORKDIR
NOISE_FILE = "noise.json"
NOISE_SEED = 12345


def noisy_test(prepared: _data.PreparedData, sigma: float, seed: int,
               batch_size: int) -> list[dict[str, np.ndarray]]:
    """Test batches with ``N(0, sigma^2)`` pixel noise (draw fixed by seed and sigma)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(NOISE_SEED), seed),
                             int(round(sigma * 1e6)))
    noisy = data.add_gaussian_noise(key, prepared.raw_test, sigma)
    images = np.asarray(data.normalize(noisy, prepared.mean, prepared.std))
    return _data.eval_batches(images, prepared.splits.test.labels, batch_size)


def _read_cache(path: str) -> dict[str, Any]:
    """``noise.json`` as ``{"accuracy": {...}, "seconds": s}``; empty when missing or bad."""
    try:
        cached = _workdir.read_json(path)
        if not (isinstance(cached, dict) and isinstance(cached.get("accuracy", {}), dict)
                and isinstance(cached.get("seconds", 0.0), (int, float))):
            raise ValueError("not {'accuracy': {sigma: accuracy}, 'seconds': s}")
    except FileNotFoundError:
        cached = {}
    except (OSError, ValueError) as e:
        print(f"{path}: unreadable ({e}); evaluating its sigmas again", file=sys.stderr)
        cached = {}
    cached.setdefault("accuracy", {})
    cached.setdefault("seconds", 0.0)
    return cached


def accuracies(run_dir: str, make_state: Callable, sigmas: Sequence[float],
               batches_for: Callable[[float], list], mesh) -> dict[str, Any]:
    """``{"accuracy": {sigma: acc}, "seconds": s}`` of ``run_dir``'s final state.

    Cached in ``run_dir/noise.json``; only the missing sigmas are evaluated, and
    ``seconds`` adds up the time spent evaluating them. A cache that cannot be read (cut
    short, edited by hand) is evaluated again, with a note, rather than stopping the study.
    """
    path = os.path.join(run_dir, NOISE_FILE)
    cached = _read_cache(path)
    missing = [s for s in sigmas if repr(float(s)) not in cached["accuracy"]]
    if missing:
        t0 = time.perf_counter()
        state = make_state()
        for s in missing:
            cached["accuracy"][repr(float(s))] = _fit.evaluate(state, batches_for(s), mesh)
        cached["seconds"] += time.perf_counter() - t0
        _workdir.write_json(path, cached)
    return {"accuracy": {float(s): cached["accuracy"][repr(float(s))] for s in sigmas},
            "seconds": cached["seconds"]}


def noisy_gains(per_cell: dict[_sweep.Cell, dict[str, Any]], methods: Sequence[str],
                sizes: Sequence[Any], sigmas: Sequence[float], seeds: Sequence[int]
                ) -> list[dict[str, Any]]:
    """Noisy accuracy of ``with`` minus ``without`` (``limited_data.JACOBIAN_PAIRS``) per
    seed, in points, per size and sigma. A seed's students share their subset, initial
    weights and noise draw, so the difference is the Jacobian term's alone."""
    rows = []
    for without, with_ in limited_data.JACOBIAN_PAIRS:
        if without not in methods or with_ not in methods:
            continue
        for n in sizes:
            for sigma in sigmas:
                diffs = [100.0 * (per_cell[_sweep.Cell(with_, n, s)]["accuracy"][sigma]
                                  - per_cell[_sweep.Cell(without, n, s)]["accuracy"][sigma])
                         for s in seeds if _sweep.Cell(with_, n, s) in per_cell
                         and _sweep.Cell(without, n, s) in per_cell]
                rows.append({"method": f"{with_} - {without}", "with": with_,
                             "label": f"{limited_data.method_label(with_)} vs "
                                      f"{limited_data.method_label(without)}",
                             "examples_per_class": n, "sigma": sigma, "checkpoint": "last",
                             **_report.stats(diffs)})
    return rows


def run(config: ConfigDict, workdir: str, *, command: str | None = None) -> dict[str, Any]:
    """Trains or reuses study 1's students, evaluates them under noise, writes results."""
    t0 = time.perf_counter()
    with _study.opened(limited_data.STUDY, config, workdir, command=command):
        return _run(config, workdir, command=command, started=t0)


def _run(config: ConfigDict, workdir: str, *, command: str | None, started: float
         ) -> dict[str, Any]:
    sizes = list(config.noise_examples_per_class) or _sweep.sizes(config)
    selected = [c for c in _sweep.cells(config) if c.examples_per_class in sizes]
    session = _study.start(limited_data.STUDY, config, workdir, selected)
    outcome = _study.sweep(session)
    prepared, mesh = session.data.student, session.mesh
    sigmas = [float(s) for s in config.noise_sigmas]
    batches: dict[tuple[float, int], list] = {}

    def batches_for(seed: int):
        def get(sigma: float):
            if (sigma, seed) not in batches:
                batches[(sigma, seed)] = noisy_test(prepared, sigma, seed,
                                                    config.train.eval_batch_size)
            return batches[(sigma, seed)]
        return get

    from jaxkd.training._progress import progress_bar  # tqdm, or lines in a log
    per_cell = {}
    bar = progress_bar(len(selected), desc="noise", unit="cell")
    for cell in selected:
        def student_state(cell=cell):
            template = _fit.template_state(
                limited_data.make_student(config, session.data, cell.method, cell.seed),
                config.train, mesh)
            return _fit.restore_state(_sweep.cell_dir(workdir, cell), template)
        per_cell[cell] = accuracies(_sweep.cell_dir(workdir, cell), student_state, sigmas,
                                    batches_for(cell.seed), mesh)
        bar.update(1)
    bar.close()

    teacher_dir = _study.teacher_dir(config, workdir)
    teacher_states = []

    def teacher_state():
        if not teacher_states:
            model = _fit.build_model(config.teacher, image_shape=prepared.image_shape,
                                     num_classes=prepared.num_classes, seed=config.teacher_seed)
            teacher_states.append(_fit.restore_state(teacher_dir, _fit.template_state(
                model, config.teacher_train, mesh)))
        return teacher_states[0]

    # Cached under this work directory even when the teacher is another run's.
    teacher_acc = {seed: accuracies(os.path.join(workdir, "teacher", f"noise_seed{seed}"),
                                    teacher_state, sigmas, batches_for(seed), mesh)
                   for seed in _sweep.seeds(config)}

    rows = []
    for n in sizes:
        for sigma in sigmas:
            rows.append({"method": "teacher", "label": "teacher (all training data)",
                         "examples_per_class": n, "sigma": sigma, **_report.stats(
                             [100 * a["accuracy"][sigma] for a in teacher_acc.values()])})
        for method in config.methods:
            for sigma in sigmas:
                values = [100 * a["accuracy"][sigma] for c, a in per_cell.items()
                          if c.method == method and c.examples_per_class == n]
                rows.append({"method": method, "label": limited_data.method_label(method),
                             "examples_per_class": n, "sigma": sigma,
                             **_report.stats(values)})
    summary = {
        "dataset": config.dataset, "examples_per_class": sizes, "sigmas": sigmas,
        "teacher_test_accuracy": 100.0 * session.teacher_result["last"]["test"],
        "rows": rows,
        "paired_gains": noisy_gains(per_cell, config.methods, sizes, sigmas,
                                    _sweep.seeds(config)),
    }
    noise_seconds = sum(a["seconds"] for a in [*per_cell.values(), *teacher_acc.values()])
    return _report.finish(REPORT, workdir, summary, config=config, started=started,
                          command=command, num_cells=len(outcome.results),
                          total_seconds=outcome.seconds + noise_seconds)


def markdown(s: dict[str, Any]) -> str:
    out = ["## Study 2: robustness to Gaussian input noise", ""]
    out += _report.header(s)
    out += ["", f"Data: `{s['dataset']}`; the final students of study 1 on test images "
            "with additive N(0, sigma^2) noise per pixel (pixels in [0, 1], noise added "
            "before normalisation); test accuracy (%), mean ± std over seeds."]
    for n in s["examples_per_class"]:
        out += ["", f"### {n} examples per class", ""]
        out.append(_report.table([r for r in s["rows"] if r["examples_per_class"] == n],
                                 col_key="sigma", col_title="method \\ sigma"))
        gains = [r for r in s.get("paired_gains") or [] if r["examples_per_class"] == n]
        if gains:
            out += ["", "Gain from the Jacobian term under noise, paired by seed (same "
                    "subset, initial weights and noise draw), in points:", ""]
            out.append(_report.table(gains, col_key="sigma", col_title="comparison \\ sigma",
                                     signed=True))
    return "\n".join(out)


def console(s: dict[str, Any]) -> str:
    return markdown(s).split("\n", 2)[2].strip()


def plots(workdir: str, s: dict[str, Any]) -> list[str]:
    plt = _plots.pyplot()
    ns = s["examples_per_class"]
    cols = min(2, len(ns))
    rows = -(-len(ns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.8 * rows), sharey=True,
                             squeeze=False)
    for ax, n in zip(axes.flat, ns):
        _plots.lines(ax, [r for r in s["rows"] if r["examples_per_class"] == n],
                     x_key="sigma", numeric=True, methods=s["config"]["methods"])
        ax.set_xlabel("noise sigma (pixels in [0, 1])")
        ax.set_title(f"{s['dataset']}: {n} examples per class")
    for ax in list(axes.flat)[len(ns):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    return [_plots.save(fig, workdir, "accuracy_vs_sigma.png")]


# This study's section of the results (a ``_report.Section``).
REPORT = types.SimpleNamespace(name="noise_robustness", markdown=markdown, plots=plots)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return _cli.main(REPORT.name, run, console, default_config=DEFAULT_CONFIG,
                     default_workdir=DEFAULT_WORKDIR, argv=argv)


if __name__ == "__main__":
    main()
