r"""The maths of the finite-difference estimate of ``||J_T(x) - J_S(x)||_F^2``: the step
and the central differences, shared by the loss and by :func:`teacher_targets`.

For ``d = T - S`` and an input probe ``u`` with ``E[u u^T] = I_D``, ``E ||J_d u||^2 =
||J_d||_F^2`` (Hutchinson, as in :func:`jvp_projection_loss`). The central difference

.. math::
    q(h) = \frac{d(x + h u) - d(x - h u)}{2h}
         = J_d u + \frac{h^2}{6}\, \partial^3 d[u, u, u] + O(h^4)

needs two evaluations of each network per probe and no derivative at all, so the
student's parameter gradient is one reverse pass through forward passes (first order),
where the VJP and exact routes differentiate a reverse pass (reverse-over-reverse) and
the JVP route a forward-mode one (reverse-over-forward).

**Bias.** Squaring, ``||q||^2 = ||J_d u||^2 + (h^2/3) <J_d u, d'''[u, u, u]> + O(h^4)``,
so the estimate's expectation over the probes is

.. math::
    \|J_d\|_F^2 + \frac{h^2}{3}\, \mathbb{E}_u \big\langle J_d u,\,
        \partial^3 d[u, u, u] \big\rangle + O(h^4),

which for Gaussian probes (Isserlis) is ``h^2 sum_k <grad d_k, grad Laplacian(d_k)>``. The
bias vanishes with ``d``: a student equal to the teacher gives exactly 0 (both networks
use the same ``h``, so their truncation errors cancel), and an affine ``d`` has none.
ReLU networks are piecewise affine: their ``d'''`` is zero almost everywhere, and the
error comes instead from probes whose segment ``[x - hu, x + hu]`` crosses a kink, with
probability O(h).

**Why central.** The forward form ``(d(x + h u) - d(x)) / h`` could reuse a clean pass
``d(x)``; its error per probe is ``(h/2) d''[u, u]``, O(h). The odd moments of a symmetric
probe vanish, so its expected bias is also O(h^2), but with the extra term
``(h^2/4) E ||d''[u, u]||^2``, which does not vanish as the student's Jacobian approaches
the teacher's unless the curvatures match too, and its best step ``~ eps^(1/2)`` leaves a
round-off of ``eps^(1/2)`` against the central ``eps^(2/3)`` (0.09 against 0.04 in
bfloat16). At one probe the two forms cost the same two passes of each network; the
saving needs the clean student pass of another term, which a train step computes in
train mode (BatchNorm batch statistics, dropout) and the Jacobian terms may not reuse.

**Step.** Round-off in evaluating ``d`` is ``~ eps |d|`` per evaluation, so ``q`` carries
``~ eps |d| / h`` of it against ``h^2 |d'''| / 6`` of truncation; for a network that
varies on the scale ``s`` of its inputs (``|d'''| ~ |d| / s^3``) the sum is least at
``h ~ eps^(1/3) s``. The step is therefore relative to each example's RMS
``s_b = sqrt(mean(x_b^2))`` (1 for an all-zero example), ``h_b = step * s_b``, and the
default ``step`` is ``eps^(1/3)`` of the narrowest floating dtype the networks compute in
(read from their traced programs, with ``x``'s own dtype): ``4.9e-3`` for float32, ``0.2``
for bfloat16, ``0.099`` for float16 (:data:`DEFAULT_STEPS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses import _checks, _common
from jaxkd.losses._common import Distribution

Fn = Callable[[jax.Array], jax.Array]


def default_step(dtype) -> float:
    """``eps^(1/3)`` of a floating ``dtype``: the relative step that balances round-off
    (``eps / h``) against the central difference's truncation (``h^2``)."""
    return float(np.finfo(np.dtype(dtype)).eps) ** (1.0 / 3.0)


DEFAULT_STEPS: dict[str, float] = {name: default_step(name)
                                   for name in ("float32", "bfloat16", "float16", "float64")}


def _float_dtypes(jaxpr) -> set:
    """The floating dtypes of every value of ``jaxpr`` and of the programs nested in it."""
    found = {v.aval.dtype for v in (*jaxpr.invars, *jaxpr.constvars)
             if hasattr(v.aval, "dtype")}
    for eqn in jaxpr.eqns:
        found.update(v.aval.dtype for v in eqn.outvars if hasattr(v.aval, "dtype"))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    found |= _float_dtypes(sub)
    return {d for d in found if jnp.issubdtype(d, jnp.floating)}


def compute_eps(x: jax.Array, *fns: Fn) -> float:
    """The machine epsilon of the narrowest floating dtype of ``x`` and of what ``fns``
    compute on it (a network may take and return float32 and compute in bfloat16)."""
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    dtypes = {np.dtype(x.dtype)}
    for fn in fns:
        dtypes |= {np.dtype(d) for d in _float_dtypes(jax.make_jaxpr(fn)(spec).jaxpr)}
    return max(float(np.finfo(d).eps) for d in dtypes)


def resolve_step(step: float | None, x: jax.Array, *fns: Fn) -> float:
    """``step`` checked finite and > 0, or the default for ``x`` and ``fns``."""
    if step is None:
        return compute_eps(x, *fns) ** (1.0 / 3.0)
    numbers = (int, float, np.floating, np.integer)
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers):
        raise TypeError(f"`step` must be None (the default for the networks' dtype) or a "
                        f"finite float > 0 (a Python number: it fixes the program), got "
                        f"{_checks.describe(step)}.")
    if not np.isfinite(step) or step <= 0:
        raise ValueError(f"`step` must be None (the default for the networks' dtype) or a "
                         f"finite float > 0 (relative to each example's RMS), got {step!r}.")
    return float(step)


def example_steps(x: jax.Array, step: float) -> jax.Array:
    """``[B]`` absolute steps ``step * RMS(x_b)`` (RMS 1 for an all-zero example), in
    :func:`_checks.wide_dtype`."""
    wide = _checks.widen(x).reshape(x.shape[0], -1)
    rms = jnp.sqrt(jnp.mean(jnp.square(jax.lax.stop_gradient(wide)), axis=-1))
    return jnp.asarray(step, wide.dtype) * jnp.where(rms > 0, rms, jnp.ones_like(rms))


def quotients(fn: Fn, x: jax.Array, u: jax.Array, h: jax.Array) -> jax.Array:
    """``[n, B, K]`` central differences ``(fn(x + h u_j) - fn(x - h u_j)) / 2h``.

    One call of ``fn`` on the ``2 n B`` displaced examples (examples are independent), in
    ``x``'s dtype; the outputs are widened before they are subtracted.
    """
    n, batch = u.shape[0], x.shape[0]
    hu = h.reshape((1, batch) + (1,) * (x.ndim - 1)) * _checks.widen(u)
    wide = _checks.widen(x)[None]
    points = jnp.concatenate([wide + hu, wide - hu]).astype(x.dtype)
    out = _checks.widen(fn(points.reshape((2 * n * batch,) + x.shape[1:])))
    out = out.reshape((2, n, batch) + out.shape[1:])
    return (out[0] - out[1]) / (2 * h[None, :, None])


def teacher_fields(teacher_fn: Fn, x: jax.Array, key: jax.Array, num_probes: int,
                   distribution: Distribution, step: float | None) -> dict[str, Any]:
    """The ``"fd"`` fields of :func:`teacher_targets`: the step, the probes ``[B, n, ...]``
    (those the loss draws from ``key``) and the teacher's quotients ``[B, n, K]``."""
    step = resolve_step(step, x, teacher_fn)
    u = _common.sample_probes(key, x.shape, num_probes, distribution, x.dtype)
    q_t = jax.lax.stop_gradient(quotients(teacher_fn, x, u, example_steps(x, step)))
    return {"fd_step": step, "fd_probes": jnp.swapaxes(_common.like(u, x), 0, 1),
            "fd_quotients": jnp.swapaxes(q_t, 0, 1)}
