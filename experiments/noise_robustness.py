"""Study 2: the students of study 1 on test inputs with additive Gaussian noise.

Each final student of study 1 (last step) is evaluated on the test split corrupted with
``N(0, sigma^2)`` per pixel, added to the raw ``[0, 1]`` pixels before normalisation,
for every ``sigma`` of ``config.noise_sigmas``. By default the noisy image is clipped
back to ``[0, 1]`` (``noise_clip``): a user's noisy photograph is still an image; the
unclipped reading (noise of mean zero everywhere, the setting of Proposition 1) is
``noise_clip = False``, and ``noise_both_readings = True`` evaluates both, the second
reported beside the first. Each ``sigma`` is drawn ``noise_draws`` times per seed; the
draws depend on the seed, sigma and draw index only, so all methods of a seed (and the
teacher) see the same noisy images (a paired comparison), and both readings share them.
A cell's accuracy at ``sigma`` is its mean over the draws; the std over seeds includes
the draws.

Besides accuracy, each student (and the teacher) is measured where the Jacobian term
acts (on the first ``noise_gradient_examples`` test images, clean):

* ``grad_norm``: the mean L2 norm of the input gradient of its logit of the teacher's
  top-1 class, with respect to the raw ``[0, 1]`` pixels;
* ``grad_cosine``: the mean cosine of that gradient with the teacher's (what
  ``loss.jacobian`` with ``normalize=True`` matches);

and, on the whole test split at every sigma > 0, from the logits ``S`` of the draws
``xi_1..xi_D`` (``D = noise_draws``, means over test images):

* ``drift``: ``||E_xi S(x + xi) - S(x)||^2``, how far the mean logits move under noise
  (systematic; clipping makes the noise's mean non-zero on black pixels), estimated
  without the bias of a finite mean (``||mean_d S_d - S(x)||^2 - spread / D``, so a
  value near zero can be slightly negative);
* ``spread``: ``E||S(x + xi) - E_xi S(x + xi)||^2``, the random part (sample variance
  over the draws, ``D - 1`` in the denominator).

This study imports study 1 on purpose: it shares study 1's config, work directory and
cells, so it reuses study 1's checkpoints and trains only the cells that are missing:

    python -m experiments.noise_robustness                       # = --workdir runs/limited_data
    python -m experiments.noise_robustness --workdir runs/limited_data --config.noise_sigmas=0,0.5,1

Outputs: the ``noise_robustness`` section of ``results.{json,csv,md}``,
``accuracy_vs_sigma.png`` and ``sensitivity.png``; each run directory caches its
measurements in ``noise.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from experiments import _cli, _data, _fit, _plots, _report, _study, _sweep, _workdir
from experiments import limited_data
from jaxkd import data, models, training

DEFAULT_CONFIG = limited_data.DEFAULT_CONFIG
DEFAULT_WORKDIR = limited_data.DEFAULT_WORKDIR
NOISE_FILE = "noise.json"
NOISE_SEED = 12345
CACHE_VERSION = 2
CLIPPED, UNCLIPPED = "clipped", "unclipped"
# The measurements of a student, in the order of the sensitivity table.
QUANTITIES = {
    "grad_norm": "input-gradient norm",
    "grad_cosine": "cosine with the teacher's gradient",
}


def readings(config: ConfigDict) -> list[str]:
    """The noise readings to evaluate, the main one (``noise_clip``) first."""
    main, other = (CLIPPED, UNCLIPPED) if config.noise_clip else (UNCLIPPED, CLIPPED)
    return [main, other] if config.noise_both_readings else [main]


def noise_key(seed: int, sigma: float, draw: int) -> jax.Array:
    """The key of draw ``draw`` at ``sigma`` for ``seed``: the same for every method."""
    key = jax.random.fold_in(jax.random.key(NOISE_SEED), seed)
    key = jax.random.fold_in(key, int(round(sigma * 1e6)))
    return jax.random.fold_in(key, draw)


def noisy_images(prepared: _data.PreparedData, sigma: float, seed: int, draw: int = 0, *,
                 clip: bool = True) -> np.ndarray:
    """The normalised test images with draw ``draw`` of ``N(0, sigma^2)`` pixel noise.

    The noise is added to the raw ``[0, 1]`` pixels; ``clip`` clips the result back to
    ``[0, 1]`` before normalising (both readings share the draw).
    """
    noisy = data.add_gaussian_noise(noise_key(seed, sigma, draw), prepared.raw_test, sigma)
    if clip:
        noisy = jnp.clip(noisy, 0.0, 1.0)
    return np.asarray(data.normalize(noisy, prepared.mean, prepared.std))


# ----------------------------------------------------------------------------------------
# Logits and input gradients of a trained network (a ``TrainState``), in inference mode.


def _logits(state: training.TrainState, images: jax.Array) -> jax.Array:
    return models.logits_fn(state.graphdef, state.params, state.rest)(images)


def _class_gradients(state: training.TrainState, raw: jax.Array, classes: jax.Array,
                     mean: jax.Array, std: jax.Array) -> jax.Array:
    """``[B, H*W*C]`` the gradient of logit ``classes[i]`` with respect to raw pixels."""
    def picked(r):
        logits = _logits(state, data.normalize(r, mean, std))
        return jnp.sum(jnp.take_along_axis(logits, classes[:, None], axis=1))
    # Inference mode: examples do not interact, so the gradient of the sum is per example.
    return jax.grad(picked)(raw).reshape(raw.shape[0], -1)


@functools.lru_cache(maxsize=16)
def _jitted(fn: Callable, mesh, num_arrays: int, num_extra: int) -> Callable:
    """``fn`` jitted once per mesh: state and ``extra`` replicated, the arrays sharded."""
    if mesh is None:
        return jax.jit(fn)
    return jax.jit(fn, in_shardings=(training.replicated(mesh),)
                   + (data.data_sharding(mesh),) * num_arrays
                   + (training.replicated(mesh),) * num_extra)


def _batched(fn: Callable, mesh, arrays: Sequence[np.ndarray], batch_size: int,
             *, state, extra: Sequence[Any] = ()) -> np.ndarray:
    """``fn(state, *batch, *extra)`` over rows of ``arrays`` in batches, concatenated.

    Every batch is padded to one size (a multiple of the mesh's devices), so ``fn``
    compiles once; the padding's rows are dropped.
    """
    devices = 1 if mesh is None else mesh.shape[training.DATA_AXIS]
    size = -(-min(batch_size, len(arrays[0])) // devices) * devices
    jitted = _jitted(fn, mesh, len(arrays), len(extra))
    out = []
    for start in range(0, len(arrays[0]), size):
        chunk = [a[start:start + size] for a in arrays]
        rows = len(chunk[0])
        if rows < size:
            chunk = [np.concatenate([c, np.repeat(c[-1:], size - rows, axis=0)]) for c in chunk]
        out.append(np.asarray(jitted(state, *chunk, *extra))[:rows])
    return np.concatenate(out)


def logits(state, images: np.ndarray, mesh, batch_size: int) -> np.ndarray:
    """``[N, K]`` logits of ``state``'s network (inference mode) on normalised ``images``."""
    return _batched(_logits, mesh, [images], batch_size, state=state)


def class_gradients(state, raw: np.ndarray, classes: np.ndarray, prepared, mesh,
                    batch_size: int) -> np.ndarray:
    """``[N, D]`` gradients of logit ``classes[i]`` with respect to the raw pixels ``raw``."""
    return _batched(_class_gradients, mesh, [raw, classes.astype(np.int32)], batch_size,
                    state=state, extra=(jnp.asarray(prepared.mean), jnp.asarray(prepared.std)))


def drift_and_spread(clean: np.ndarray, draws: Sequence[np.ndarray]) -> tuple[float, float]:
    """``(drift, spread)`` of the logits of the noise draws around the clean logits.

    Args:
      clean: ``[N, K]`` logits on the clean images, ``S(x)``.
      draws: ``D`` arrays ``[N, K]``, the logits ``S(x + xi_d)`` of the draws.

    Returns:
      ``spread``: the mean over images of ``sum_d ||S_d - mean_d S_d||^2 / (D - 1)``
      (NaN for one draw), an unbiased estimate of ``E||S(x+xi) - E S(x+xi)||^2``;
      ``drift``: the mean over images of ``||mean_d S_d - S(x)||^2 - spread / D``, an
      unbiased estimate of ``||E S(x+xi) - S(x)||^2`` (without the correction when D = 1).
    """
    stacked = np.stack([np.asarray(d, np.float64) for d in draws])  # [D, N, K]
    count = stacked.shape[0]
    mean = stacked.mean(axis=0)
    if count > 1:
        per_image = ((stacked - mean) ** 2).sum(axis=(0, 2)) / (count - 1)
        spread = float(per_image.mean())
    else:
        spread = math.nan
    biased = float(((mean - np.asarray(clean, np.float64)) ** 2).sum(axis=1).mean())
    drift = biased - spread / count if count > 1 else biased
    return drift, spread


def gradient_stats(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Mean gradient norm of ``student`` ``[N, D]`` and mean cosine with ``teacher``."""
    student = np.asarray(student, np.float64)
    teacher = np.asarray(teacher, np.float64)
    norms = np.linalg.norm(student, axis=1)
    cosine = (student * teacher).sum(axis=1) / np.maximum(
        norms * np.linalg.norm(teacher, axis=1), 1e-12)
    return {"grad_norm": float(norms.mean()), "grad_cosine": float(cosine.mean())}


# ----------------------------------------------------------------------------------------
# One network's measurements, cached in its run directory.


def _read_cache(path: str) -> dict[str, Any]:
    """``noise.json`` as ``{"version", "evals": {key: entry}, "seconds"}``; empty when
    missing, bad, or written by an earlier version (whose draws were another setting)."""
    empty = {"version": CACHE_VERSION, "evals": {}, "seconds": 0.0}
    try:
        cached = _workdir.read_json(path)
        if not isinstance(cached, dict):
            raise ValueError("not a JSON object")
        if cached.get("version") != CACHE_VERSION:  # one noise draw, no clipping
            return empty
        if not (isinstance(cached.get("evals"), dict)
                and isinstance(cached.get("seconds"), (int, float))):
            raise ValueError("not {'version', 'evals': {...}, 'seconds': s}")
    except FileNotFoundError:
        return empty
    except (OSError, ValueError) as e:
        print(f"{path}: unreadable ({e}); evaluating it again", file=sys.stderr)
        return empty
    return cached


def eval_key(reading: str, sigma: float, draws: int) -> str:
    """The cache key of one reading at one sigma with ``draws`` draws."""
    return f"{reading}/sigma={float(sigma)!r}/draws={draws if sigma > 0 else 1}"


def gradient_key(examples: int, teacher: str = "") -> str:
    """The cache key of the gradient measures: on how many images, against which teacher
    (:func:`teacher_id`: a student's cosine with another teacher is another number)."""
    return f"gradient/examples={examples}/teacher={teacher}"


def teacher_id(teacher_dir: str) -> str:
    """A short hash of the teacher's directory and recorded run config: caches of noise
    measures made with another teacher are not reused."""
    run = _workdir.recorded(teacher_dir)
    text = json.dumps({"dir": os.path.abspath(teacher_dir), "run": run}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Evaluator:
    """Measures trained networks under the config's noise (accuracy, drift, gradients).

    Args:
      prepared: the student's data (test split and its raw pixels).
      mesh: the data mesh (None: the default device).
      sigmas, readings, draws: ``noise_sigmas``, :func:`readings`, ``noise_draws``.
      gradient_examples: the first this many test images carry the gradient measures
        (0: all).
      batch_size: evaluation batch size.
      teacher: the teacher's :func:`teacher_id`, part of the gradient measures' cache key.
    """

    def __init__(self, prepared: _data.PreparedData, mesh, *, sigmas: Sequence[float],
                 readings: Sequence[str], draws: int, gradient_examples: int,
                 batch_size: int, teacher: str = ""):
        self.prepared, self.mesh, self.teacher = prepared, mesh, teacher
        self.sigmas = [float(s) for s in sigmas]
        self.readings, self.draws = list(readings), int(draws)
        total = len(prepared.splits.test.labels)
        self.gradient_examples = min(total, gradient_examples) if gradient_examples else total
        self.batch_size = batch_size
        self.teacher_gradients: Callable[[], np.ndarray] | None = None

    def teacher_reference(self, state) -> tuple[np.ndarray, np.ndarray]:
        """The teacher's top-1 classes on the gradient images and its gradients of them."""
        images = self.prepared.splits.test.images[:self.gradient_examples]
        top1 = np.argmax(logits(state, images, self.mesh, self.batch_size), -1)
        return top1, self._gradients(state, top1)

    def _gradients(self, state, classes: np.ndarray) -> np.ndarray:
        raw = self.prepared.raw_test[:self.gradient_examples]
        return class_gradients(state, raw, classes, self.prepared, self.mesh,
                               self.batch_size)

    def measure(self, run_dir: str, make_state: Callable, seed: int, *,
                teacher: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
                ) -> dict[str, Any]:
        """``run_dir``'s final network under noise, cached in ``run_dir/noise.json``.

        Returns ``{"accuracy": {reading: {sigma: mean over draws}}, "draws": {reading:
        {sigma: [accuracy per draw]}}, "drift"/"spread": {reading: {sigma: value}},
        "grad_norm", "grad_cosine", "seconds"}``. Only what the cache lacks is evaluated
        (a cache that cannot be read is evaluated again, with a note). ``teacher()``
        gives the teacher's top-1 classes ``[G]`` on the gradient images and its
        gradients ``[G, D]`` of them, for the gradient measures; without it they are
        skipped.
        """
        path = os.path.join(run_dir, NOISE_FILE)
        cached = _read_cache(path)
        evals = cached["evals"]
        wanted = [(r, s) for r in self.readings for s in self.sigmas]
        missing = [(r, s) for r, s in wanted if eval_key(r, s, self.draws) not in evals]
        g_key = gradient_key(self.gradient_examples, self.teacher)
        need_gradients = teacher is not None and g_key not in evals
        if missing or need_gradients:
            t0 = time.perf_counter()
            state = make_state()
            labels = self.prepared.splits.test.labels
            clean = logits(state, self.prepared.splits.test.images, self.mesh,
                           self.batch_size)
            for reading, sigma in missing:
                if sigma == 0:
                    draws = [clean]
                else:
                    draws = [logits(state, noisy_images(self.prepared, sigma, seed, d,
                                                        clip=reading == CLIPPED),
                                    self.mesh, self.batch_size) for d in range(self.draws)]
                drift, spread = (0.0, 0.0) if sigma == 0 else drift_and_spread(clean, draws)
                evals[eval_key(reading, sigma, self.draws)] = {
                    "accuracy": [float(np.mean(np.argmax(d, -1) == labels)) for d in draws],
                    "drift": drift, "spread": spread}
            if need_gradients:
                top1, reference = teacher()
                evals[g_key] = gradient_stats(self._gradients(state, top1), reference)
            cached["seconds"] += time.perf_counter() - t0
            _workdir.write_json(path, _report.json_safe(cached))
        out: dict[str, Any] = {"accuracy": {}, "draws": {}, "drift": {}, "spread": {},
                               "seconds": cached["seconds"]}
        for reading in self.readings:
            for key in ("accuracy", "draws", "drift", "spread"):
                out[key][reading] = {}
            for sigma in self.sigmas:
                entry = evals[eval_key(reading, sigma, self.draws)]
                out["accuracy"][reading][sigma] = float(np.mean(entry["accuracy"]))
                out["draws"][reading][sigma] = list(entry["accuracy"])
                for key in ("drift", "spread"):
                    value = entry.get(key)
                    out[key][reading][sigma] = math.nan if value is None else float(value)
        if g_key in evals:
            out.update(evals[g_key])
        return out


def noisy_gains(per_cell: dict[_sweep.Cell, dict[str, Any]], methods: Sequence[str],
                sizes: Sequence[Any], sigmas: Sequence[float], seeds: Sequence[int], *,
                reading: str = CLIPPED) -> list[dict[str, Any]]:
    """Noisy accuracy of ``with`` minus ``without`` (``limited_data.JACOBIAN_PAIRS``) per
    seed, in points, per size and sigma, for one ``reading``. A seed's students share
    their subset, initial weights and noise draws, so the difference is the Jacobian
    term's alone."""
    rows = []
    for without, with_ in limited_data.JACOBIAN_PAIRS:
        if without not in methods or with_ not in methods:
            continue
        for n in sizes:
            for sigma in sigmas:
                def acc(method, seed):
                    return per_cell[_sweep.Cell(method, n, seed)]["accuracy"][reading][sigma]
                diffs = [100.0 * (acc(with_, s) - acc(without, s))
                         for s in seeds if _sweep.Cell(with_, n, s) in per_cell
                         and _sweep.Cell(without, n, s) in per_cell]
                rows.append({"method": f"{with_} - {without}", "with": with_,
                             "label": f"{limited_data.method_label(with_)} vs "
                                      f"{limited_data.method_label(without)}",
                             "examples_per_class": n, "sigma": sigma, "checkpoint": "last",
                             "reading": reading, **_report.stats(diffs)})
    return rows


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
                       for q, title in QUANTITIES.items()]
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
        limited_data.method_label(method))


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
    if config.teacher_only:
        return _study.teacher_only(session)
    outcome = _study.sweep(session)
    prepared, mesh = session.data.student, session.mesh
    sigmas = [float(s) for s in config.noise_sigmas]
    kinds = readings(config)
    teacher_dir = _study.teacher_dir(config, workdir)
    tid = teacher_id(teacher_dir)
    evaluator = Evaluator(prepared, mesh, sigmas=sigmas, readings=kinds,
                          draws=config.noise_draws,
                          gradient_examples=config.noise_gradient_examples,
                          batch_size=config.train.eval_batch_size, teacher=tid)
    teacher_states, references = [], []

    def teacher_state():
        if not teacher_states:
            model = _fit.build_model(config.teacher, image_shape=prepared.image_shape,
                                     num_classes=prepared.num_classes, seed=config.teacher_seed)
            teacher_states.append(_fit.restore_state(teacher_dir, _fit.template_state(
                model, config.teacher_train, mesh)))
        return teacher_states[0]

    def teacher_reference():
        if not references:
            references.append(evaluator.teacher_reference(teacher_state()))
        return references[0]

    from jaxkd.training._progress import progress_bar  # tqdm, or lines in a log
    per_cell = {}
    with progress_bar(len(selected), desc="noise", unit="cell") as bar:
        for cell in selected:
            def student_state(cell=cell):
                template = _fit.template_state(
                    limited_data.make_student(config, session.data, cell.method, cell.seed),
                    config.train, mesh)
                return _fit.restore_state(_sweep.cell_dir(workdir, cell), template)
            per_cell[cell] = evaluator.measure(_sweep.cell_dir(workdir, cell), student_state,
                                               cell.seed, teacher=teacher_reference)
            bar.update(1)

    # Cached in this work directory, even when the teacher is another run's, under the
    # teacher's identity: another teacher is measured afresh.
    teacher_measures = {
        seed: evaluator.measure(os.path.join(workdir, "teacher_noise", tid, f"seed{seed}"),
                                teacher_state, seed, teacher=teacher_reference)
        for seed in _sweep.seeds(config)}
    measured = {"teacher": [{"examples_per_class": n, "measure": m} for n in sizes
                            for m in teacher_measures.values()]}
    for method in config.methods:
        measured[method] = [{"examples_per_class": c.examples_per_class, "measure": m}
                            for c, m in per_cell.items() if c.method == method]
    seeds = _sweep.seeds(config)
    main, others = kinds[0], kinds[1:]
    summary = {
        "dataset": config.dataset, "examples_per_class": sizes, "sigmas": sigmas,
        "reading": main, "draws": evaluator.draws,
        "gradient_examples": evaluator.gradient_examples,
        "teacher_test_accuracy": 100.0 * session.teacher_result["last"]["test"],
        "rows": accuracy_rows(measured, sizes, sigmas, main),
        "paired_gains": noisy_gains(per_cell, config.methods, sizes, sigmas, seeds,
                                    reading=main),
        "sensitivity": sensitivity_rows(measured, sizes, sigmas, main),
    }
    if others:
        summary.update(
            other_reading=others[0],
            other_rows=accuracy_rows(measured, sizes, sigmas, others[0]),
            other_gains=noisy_gains(per_cell, config.methods, sizes, sigmas, seeds,
                                    reading=others[0]),
            other_sensitivity=sensitivity_rows(measured, sizes, sigmas, others[0]))
    noise_seconds = sum(m["seconds"] for m in [*per_cell.values(), *teacher_measures.values()])
    return _report.finish(REPORT, workdir, summary, config=config, started=started,
                          command=command, num_cells=len(outcome.results),
                          total_seconds=outcome.seconds + noise_seconds)


def _reading_text(reading: str) -> str:
    return ("noisy pixels clipped back to [0, 1]" if reading == CLIPPED else
            "noisy pixels not clipped (they leave [0, 1])")


def _reading_tables(s: dict[str, Any], n, rows, gains, sensitivity, reading: str,
                    heading: str) -> list[str]:
    out = ["", f"#### {heading}", "",
           f"Test accuracy (%), {_reading_text(reading)}; each seed's accuracy is the "
           f"mean over its {s.get('draws', 1)} noise draws; mean ± std over seeds.", "",
           _report.table([r for r in rows if r["examples_per_class"] == n],
                         col_key="sigma", col_title="method \\ sigma")]
    gains = [r for r in gains if r["examples_per_class"] == n]
    if gains:
        out += ["", "Gain from the Jacobian term under noise, paired by seed (same "
                "subset, initial weights and noise draws), in points:", "",
                _report.table(gains, col_key="sigma", col_title="comparison \\ sigma",
                              signed=True)]
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
    main = s.get("reading", CLIPPED)
    other = s.get("other_reading")
    out += ["", f"Data: `{s['dataset']}`; the final students of study 1 on test images "
            "with additive N(0, sigma^2) noise per pixel (pixels in [0, 1], noise added "
            f"before normalisation; {_reading_text(main)}"
            + (f"; the {other} reading follows each table" if other else "") + ")."]
    for n in s["examples_per_class"]:
        out += ["", f"### {n} examples per class"]
        out += _reading_tables(s, n, s["rows"], s.get("paired_gains") or [],
                               s.get("sensitivity") or [], main, main)
        if other:
            out += _reading_tables(s, n, s.get("other_rows") or [],
                                   s.get("other_gains") or [],
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
        ax.set_xlabel(f"noise sigma (pixels in [0, 1], {s.get('reading', CLIPPED)})")
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
            if r["quantity"] in QUANTITIES and r["num_seeds"]:
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


# This study's section of the results (a ``_report.Section``).
REPORT = types.SimpleNamespace(name="noise_robustness", markdown=markdown, plots=plots)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return _cli.main(REPORT.name, run, console, default_config=DEFAULT_CONFIG,
                     default_workdir=DEFAULT_WORKDIR, argv=argv)


if __name__ == "__main__":
    main()
