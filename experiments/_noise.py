"""Study 2's measures of one trained network under Gaussian input noise, cached per run.

Accuracy on the test split with ``N(0, sigma^2)`` noise added to the raw ``[0, 1]``
pixels (clipped back to ``[0, 1]``, or not: the two *readings*), drawn per seed, sigma
and draw only so that every method of a seed sees the same images; the drift and the
random part of the logits over the draws; the input gradient of the teacher's top-1
logit and its cosine with the teacher's (docs/experiments.md defines each measure).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from experiments import _data, _report, _runs
from jaxkd import data, models, training

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
        cached = _runs.read_json(path)
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
    run = _runs.recorded(teacher_dir)
    text = json.dumps({"dir": os.path.abspath(teacher_dir), "run": run}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Evaluator:
    """Measures trained networks under the config's noise (accuracy, drift, gradients):
    ``sigmas``, ``readings`` and ``draws`` as ``noise_sigmas``, :func:`readings` and
    ``noise_draws``; the first ``gradient_examples`` test images (0: all) carry the
    gradient measures, keyed in the cache by ``teacher`` (:func:`teacher_id`)."""

    def __init__(self, prepared: _data.PreparedData, mesh, *, sigmas: Sequence[float],
                 readings: Sequence[str], draws: int, gradient_examples: int,
                 batch_size: int, teacher: str = ""):
        self.prepared, self.mesh, self.teacher = prepared, mesh, teacher
        self.sigmas = [float(s) for s in sigmas]
        self.readings, self.draws = list(readings), int(draws)
        total = len(prepared.splits.test.labels)
        self.gradient_examples = min(total, gradient_examples) if gradient_examples else total
        self.batch_size = batch_size

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
        """``run_dir``'s final network under noise, cached in ``run_dir/noise.json`` (only
        what the cache lacks is evaluated): ``{"accuracy", "draws", "drift", "spread": {reading:
        {sigma: ...}}, "grad_norm", "grad_cosine", "seconds"}``; the gradient measures need
        ``teacher()``, the teacher's top-1 classes ``[G]`` and gradients ``[G, D]``."""
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
            _runs.write_json(path, _report.json_safe(cached))
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
