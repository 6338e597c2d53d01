"""Study 2: the students of study 1 on test inputs with additive Gaussian noise.

Each final student of study 1 (last step) is evaluated on the test split corrupted with
``N(0, sigma^2)`` per pixel, added to the raw ``[0, 1]`` pixels before normalisation,
for every ``sigma`` of ``config.noise_sigmas``. The noise draw depends on the seed and
sigma only, so all methods of a seed see the same noisy images (a paired comparison);
the std over seeds includes the draw. The teacher is evaluated the same way.

It shares study 1's config and work directory, so it reuses study 1's checkpoints and
trains only the cells that are missing:

    python -m experiments.noise_robustness                       # = --workdir runs/limited_data
    python -m experiments.noise_robustness --workdir runs/limited_data --config.noise_sigmas=0,0.5,1

Outputs: the ``noise_robustness`` section of ``results.{json,csv,md}`` and
``accuracy_vs_sigma.png``; each cell caches its accuracies in ``noise.json``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from experiments import _common, _report, limited_data
from jaxkd import data

STUDY = "noise_robustness"
DEFAULT_CONFIG = limited_data.DEFAULT_CONFIG
DEFAULT_WORKDIR = limited_data.DEFAULT_WORKDIR
NOISE_FILE = "noise.json"
NOISE_SEED = 12345


def noisy_test(prepared: _common.PreparedData, sigma: float, seed: int,
               batch_size: int) -> list[dict[str, np.ndarray]]:
    """Test batches with ``N(0, sigma^2)`` pixel noise (draw fixed by seed and sigma)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(NOISE_SEED), seed),
                             int(round(sigma * 1e6)))
    noisy = data.add_gaussian_noise(key, prepared.raw_test, sigma)
    images = np.asarray(data.normalize(noisy, prepared.mean, prepared.std))
    test = prepared.splits.test
    return [{"image": images[i:i + batch_size], "label": test.labels[i:i + batch_size]}
            for i in range(0, len(test), batch_size)]


def _accuracies(run_dir: str, make_state, sigmas: Sequence[float], batches_for,
                mesh) -> dict[float, float]:
    """Accuracy per sigma of the final state in ``run_dir``, cached in ``noise.json``."""
    path = os.path.join(run_dir, NOISE_FILE)
    cached = _common.read_json(path) if os.path.exists(path) else {}
    missing = [s for s in sigmas if repr(float(s)) not in cached]
    if missing:
        state = make_state()
        for s in missing:
            cached[repr(float(s))] = _common.evaluate(state, batches_for(s), mesh)
        _common.write_json(path, cached)
    return {float(s): cached[repr(float(s))] for s in sigmas}


def run(config: ConfigDict, workdir: str, *, command: str | None = None) -> dict[str, Any]:
    """Trains or reuses study 1's students, evaluates them under noise, writes results."""
    t0 = time.perf_counter()
    sizes = list(config.noise_examples_per_class) or _common.examples_per_class(config)
    selected = [c for c in limited_data.cells(config) if c.examples_per_class in sizes]
    results, teacher_result, prepared = limited_data.sweep(config, workdir, selected=selected)
    mesh = _common.make_mesh(config.num_devices)
    sigmas = [float(s) for s in config.noise_sigmas]
    batch = config.train.eval_batch_size
    cache: dict[tuple[float, int], list] = {}

    def batches_for(seed):
        def get(sigma):
            if (sigma, seed) not in cache:
                cache[(sigma, seed)] = noisy_test(prepared, sigma, seed, batch)
            return cache[(sigma, seed)]
        return get

    per_cell = {}
    from tqdm.auto import tqdm
    for cell in tqdm(selected, desc="noise", unit="cell", dynamic_ncols=True):
        def make_state(cell=cell):
            template = _common.template_state(
                limited_data.make_student(config, prepared, cell.seed), config.train, mesh)
            return _common.restore_state(_common.cell_dir(workdir, cell), template,
                                         step=config.train.num_steps)
        per_cell[cell] = _accuracies(_common.cell_dir(workdir, cell), make_state, sigmas,
                                     batches_for(cell.seed), mesh)

    teacher_dir = os.path.join(workdir, "teacher")

    def teacher_state():
        model = _common.build_model(config.teacher, image_shape=prepared.image_shape,
                                    num_classes=prepared.num_classes, seed=config.teacher_seed)
        return _common.restore_state(teacher_dir, _common.template_state(
            model, config.teacher_train, mesh), step=config.teacher_train.num_steps)

    teacher_state_cache = []

    def cached_teacher_state():
        if not teacher_state_cache:
            teacher_state_cache.append(teacher_state())
        return teacher_state_cache[0]

    teacher_acc = {seed: _accuracies(os.path.join(teacher_dir, f"noise_seed{seed}"),
                                     cached_teacher_state, sigmas, batches_for(seed), mesh)
                   for seed in _common.seeds(config)}

    rows = []
    for n in sizes:
        for sigma in sigmas:
            rows.append({"method": "teacher", "label": "teacher (all training data)",
                         "examples_per_class": n, "sigma": sigma,
                         **_report.stats([100 * teacher_acc[s][sigma] for s in teacher_acc])})
        for method in config.methods:
            for sigma in sigmas:
                values = [100 * acc[sigma] for c, acc in per_cell.items()
                          if c.method == method and c.examples_per_class == n]
                rows.append({"method": method, "label": _common.method_label(method),
                             "examples_per_class": n, "sigma": sigma,
                             **_report.stats(values)})
    summary = {
        "dataset": config.dataset, "examples_per_class": sizes, "sigmas": sigmas,
        "teacher_test_accuracy": 100.0 * teacher_result["last"]["test"], "rows": rows,
    }
    return _common.write_summary(workdir, STUDY, summary, config=config, started=t0,
                                 seconds=[teacher_result["seconds"]]
                                 + [r["seconds"] for r in results.values()],
                                 command=command)


def main(argv: Sequence[str] | None = None) -> None:
    _common.main(STUDY, run, default_config=DEFAULT_CONFIG, default_workdir=DEFAULT_WORKDIR,
                 argv=argv)


if __name__ == "__main__":
    main()
