"""A linear probe of a teacher on another task: what its features and its outputs know.

Study 3 distils a source-task teacher's *outputs* into a target-task student; the probe
measures what they say about the target classes. Per size and seed, on the target
subset of that cell (``_data.subset``), a multinomial logistic regression (scikit-learn,
standardised inputs, fixed ``C``, L-BFGS: deterministic) is fitted on the teacher's
``features`` (the input of its classifier ``head``), its ``outputs`` (the source logits
LwF distils) and the ``pixels`` (no teacher), and scored on the target validation and
test splits. The fits are cached in ``<workdir>/teacher_probe.json`` under an identity
of the teacher, the data and the probe.
"""

from __future__ import annotations

import functools
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import _data, _report, _runs
from jaxkd import data, models, sharding

PROBE_FILE = "teacher_probe.json"
CACHE_VERSION = 1
C = 1.0                # inverse L2 strength of the logistic regression (on standardised inputs)
MAX_ITER = 5000        # L-BFGS iterations; a fit that stops there is reported as not converged
BATCH_SIZE = 512       # images per teacher forward pass
INPUTS = ("features", "outputs", "pixels")
SPLITS = ("test", "validation")


def fit_probe(train_x: np.ndarray, train_y: np.ndarray,
              evals: Mapping[str, tuple[np.ndarray, np.ndarray]], *, c: float = C,
              max_iter: int = MAX_ITER) -> dict[str, Any]:
    """Fits the probe on ``(train_x [N, D], train_y [N])``; its accuracy (%) on each of
    ``evals`` (``{name: (x, y)}``), ``converged`` and ``iterations``.

    Inputs are standardised with the training set's mean and std (a constant feature stays
    0); a constant input leaves only the intercepts, i.e. the majority class.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    flat = lambda x: np.asarray(x, np.float64).reshape(len(x), -1)  # noqa: E731
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported as converged=False
        model.fit(flat(train_x), np.asarray(train_y))
    iterations = int(np.max(model[-1].n_iter_))
    out = {name: 100.0 * float(np.mean(model.predict(flat(x)) == np.asarray(y)))
           if len(y) else float("nan") for name, (x, y) in evals.items()}
    return {**out, "converged": iterations < max_iter, "iterations": iterations}


class _Identity(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


@functools.lru_cache(maxsize=4)
def _jitted_forward(graphdef: nnx.GraphDef, mesh):
    def forward(variables, x):
        model = models.merge(graphdef, *variables)  # inference mode
        if not isinstance(getattr(model, "head", None), nnx.Linear):
            raise ValueError(f"{type(model).__name__} has no linear classifier `head`: its "
                             "penultimate features cannot be read.")
        head, model.head = model.head, _Identity()
        features = jnp.reshape(model(x), (x.shape[0], -1))
        return features, head(features)
    return jax.jit(forward, in_shardings=(sharding.replicated(mesh),
                                          sharding.data_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))


def teacher_outputs(teacher: models.Split, images: np.ndarray, mesh=None, *,
                    batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's penultimate features ``[N, D]`` (the input of its ``head``) and its
    logits ``[N, K]`` on ``images``, in inference mode, batch-sharded over ``mesh``."""
    mesh = sharding.data_mesh() if mesh is None else mesh
    devices = mesh.shape[sharding.DATA_AXIS]
    batch_size = -(-batch_size // devices) * devices  # a multiple of the devices
    forward = _jitted_forward(teacher.graphdef, mesh)
    variables = sharding.replicate((teacher.params, teacher.rest), mesh)
    if not len(images):  # an empty split: no rows, the shapes of one batch
        f, z = teacher_outputs(teacher, np.zeros((1, *np.shape(images)[1:]), np.float32),
                               mesh, batch_size=batch_size)
        return f[:0], z[:0]
    features, logits = [], []
    for i in range(0, len(images), batch_size):
        x = np.asarray(images[i:i + batch_size], np.float32)
        n = len(x)
        if n < batch_size:  # one compiled shape
            x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
        f, z = jax.device_get(forward(variables, data.shard_batch(
            {"x": x}, sharding.data_sharding(mesh))["x"]))
        features.append(np.asarray(f[:n]))
        logits.append(np.asarray(z[:n]))
    return np.concatenate(features), np.concatenate(logits)


def positions(pool: data.Dataset, subset: data.Dataset) -> np.ndarray:
    """The indices into ``pool`` of the examples of ``subset`` (by ``source_index``)."""
    order = np.argsort(pool.source_index, kind="stable")
    found = np.searchsorted(pool.source_index, subset.source_index, sorter=order)
    index = order[np.minimum(found, len(order) - 1)]
    if not np.array_equal(pool.source_index[index], subset.source_index):
        raise ValueError(f"{subset.name!r} is not a subset of {pool.name!r}.")
    return index


def _key(name: str, n, seed: int) -> str:
    return f"{name}/n{n}/seed{seed}"


def _read_cache(path: str | None, identity: Any) -> dict[str, Any]:
    """The cached fits of ``identity``; empty when missing, unreadable or another's."""
    if path is None:
        return {}
    try:
        cached = _runs.read_json(path)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        print(f"{path}: unreadable ({e}); fitting the probe again", file=sys.stderr)
        return {}
    if (not isinstance(cached, dict) or cached.get("identity") != identity
            or not isinstance(cached.get("fits"), dict)):
        return {}
    return cached["fits"]


def run(teacher: models.Split, target: _data.PreparedData, sizes: Sequence[Any],
        seeds: Sequence[int], *, mesh=None, cache: str | None = None,
        identity: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every probe fit of the sweep: ``{"fits": {"<input>/n<size>/seed<s>": fit},
    "dims": {input: D}, "seconds"}`` (:func:`fit_probe`'s fits).

    ``cache``: a JSON file holding the fits of ``identity`` (``CACHE_VERSION`` and the
    probe's settings are added to it); only what it lacks is fitted, then it is
    rewritten. Identical subsets (``"all"`` for every seed) are fitted once.
    """
    t0 = time.perf_counter()
    identity = _runs.canonical({"version": CACHE_VERSION, "C": C, "max_iter": MAX_ITER,
                                **dict(identity or {})})
    fits = _read_cache(cache, identity)
    splits = target.splits
    subsets = {(n, s): positions(splits.train, _data.subset(splits.train, n, s))
               for n in sizes for s in seeds}
    wanted = [(name, n, s) for name in INPUTS for n in sizes for s in seeds]
    todo = [w for w in wanted if _key(*w) not in fits or "dims" not in fits.get("_", {})]
    if todo:
        used = np.unique(np.concatenate(list(subsets.values())))
        where = np.full(len(splits.train), -1)
        where[used] = np.arange(len(used))
        inputs = {}
        for split, images, rows in (("train", splits.train.images, used),
                                    ("validation", splits.validation.images, None),
                                    ("test", splits.test.images, None)):
            images = images if rows is None else images[rows]
            features, logits = teacher_outputs(teacher, images, mesh)
            inputs[split] = {"features": features, "outputs": logits,
                             "pixels": images.reshape(len(images), -1)}
        done: dict[bytes, dict[str, Any]] = {}
        for name, n, s in todo:
            rows = where[subsets[(n, s)]]
            memo = name.encode() + rows.tobytes()
            if memo not in done:
                evals = {split: (inputs[split][name], getattr(splits, split).labels)
                         for split in SPLITS}
                done[memo] = fit_probe(inputs["train"][name][rows],
                                       splits.train.labels[subsets[(n, s)]], evals)
            fits[_key(name, n, s)] = done[memo]
        fits["_"] = {"dims": {name: int(np.prod(inputs["test"][name].shape[1:]))
                              for name in INPUTS}}
        if cache is not None:
            _runs.write_json(cache, {"identity": identity, "fits": fits})
    return {"fits": {_key(*w): fits[_key(*w)] for w in wanted},
            "dims": fits["_"]["dims"], "seconds": time.perf_counter() - t0}


LABELS = {"features": "teacher features ({d}-d input of its classifier)",
          "outputs": "teacher outputs ({d} source logits, what LwF distils)",
          "pixels": "raw pixels ({d} values, no teacher)"}


def rows(probe: Mapping[str, Any], sizes: Sequence[Any], seeds: Sequence[int]
         ) -> list[dict[str, Any]]:
    """Accuracy (%) per input x size x split, stats over seeds (``_report.stats``)."""
    out = []
    for name in INPUTS:
        for n in sizes:
            fits = [probe["fits"][_key(name, n, s)] for s in seeds]
            for split in SPLITS:
                out.append({"method": f"probe:{name}",
                            "label": LABELS[name].format(d=probe["dims"][name]),
                            "examples_per_class": n, "split": split,
                            "converged": all(f["converged"] for f in fits),
                            **_report.stats([f[split] for f in fits])})
    return out


def _at(probe_rows, name: str, n, split: str = "test") -> dict[str, Any] | None:
    return next((r for r in probe_rows if r["method"] == f"probe:{name}"
                 and r["examples_per_class"] == n and r["split"] == split), None)


def _sizes(sizes: Sequence[Any]) -> str:
    names = [f"{n}/class" for n in sizes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def reading(probe_rows: Sequence[Mapping[str, Any]],
            scratch: Mapping[Any, float] | None = None) -> str:
    """One sentence read from the numbers (test means): whether the teacher's outputs
    carry less or more about the target than its features, at which sizes, with the
    numbers, raw pixels' and those of the student trained from scratch (``scratch``:
    ``{size: test accuracy}``, when given)."""
    sizes = list(dict.fromkeys(r["examples_per_class"] for r in probe_rows))
    means = {}
    for n in sizes:
        found = [_at(probe_rows, name, n) for name in INPUTS]
        if all(r and r.get("num_seeds") for r in found):
            means[n] = [r["mean"] for r in found]
    if not means:
        return ""
    less = [n for n, (f, o, _) in means.items() if o < f]
    more = [n for n in means if n not in less]
    if not more:
        verdict = "less about the target classes than its features at every size"
    elif not less:
        verdict = "at least as much about the target classes as its features at every size"
    else:
        verdict = (f"less about the target classes than its features at {_sizes(less)}, "
                   f"at least as much at {_sizes(more)}")
    text = (f"Reading (test accuracy, means over seeds): the teacher's outputs carry "
            f"{verdict} (outputs vs features: "
            + ", ".join(f"{o:.1f} vs {f:.1f} % at {n}/class" for n, (f, o, _) in means.items())
            + "); raw pixels: "
            + ", ".join(f"{p:.1f} %" for _, _, p in means.values()))
    known = [n for n in means if scratch and scratch.get(n) is not None]
    if known:
        text += ("; the student trained from scratch: "
                 + ", ".join(f"{scratch[n]:.1f} %" for n in known))
    return text + "."


def markdown(probe_rows: Sequence[Mapping[str, Any]] | None,
             scratch: Mapping[Any, float] | None = None) -> list[str]:
    """The probe's table (test accuracy) and its reading, as results.md lines."""
    if not probe_rows:
        return []
    test = [r for r in probe_rows if r["split"] == "test"]
    lines = ["", "### What the teacher knows about the target task (linear probe)", "",
             "Multinomial logistic regression (standardised inputs, C = "
             f"{C:g}, L-BFGS) fitted on each cell's target training subset, on the "
             "teacher's penultimate features, on its source logits, and on raw pixels (no "
             "teacher); "
             "target test accuracy (%), mean ± std over seeds.", "",
             _report.table(test, col_key="examples_per_class",
                           col_title="probe input \\ examples/class")]
    if not all(r["converged"] for r in probe_rows):
        lines += ["", f"Some fits stopped at {MAX_ITER} iterations before converging."]
    sentence = reading(test, scratch)
    return lines + (["", sentence] if sentence else [])
