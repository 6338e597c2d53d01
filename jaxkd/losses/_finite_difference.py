r"""A forward-passes-only estimate of ``||J_T(x) - J_S(x)||_F^2``: finite differences.

The loss, :func:`finite_difference_loss`; its maths (the bias, the central form, the
step) and the differences themselves are in :mod:`jaxkd.losses._differences`, which
:func:`teacher_targets` shares.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd.losses import _checks, _common, _contract, _targets
from jaxkd.losses._common import Distribution
from jaxkd.losses._differences import (DEFAULT_STEPS, Fn, example_steps, quotients,
                                       resolve_step)

__all__ = ["DEFAULT_STEPS", "finite_difference_loss"]


def _student_part(student_fn: Fn, x: jax.Array, u: jax.Array, h: jax.Array,
                  q_t: jax.Array) -> jax.Array:
    diff = q_t - quotients(student_fn, x, u, h)
    return jnp.mean(jnp.sum(jnp.square(diff), axis=-1), axis=0)  # over [n, B, K]


def finite_difference_loss(student_fn: Fn,
                           teacher_fn: Fn | _targets.TeacherTargets,
                           x: jax.typing.ArrayLike,
                           *,
                           key: jax.Array | None = None,
                           num_probes: int = 1,
                           distribution: Distribution = "rademacher",
                           step: float | None = None) -> jax.Array:
    r"""Central-difference estimate of ``||J_T(x) - J_S(x)||_F^2``, forward passes only.

    .. math::
        \frac{1}{k} \sum_{j=1}^{k} \Big\| \frac{d(x + h u_j) - d(x - h u_j)}{2h}
        \Big\|_2^2, \qquad d = T - S,\ u_j \in \mathbb{R}^D,\ \mathbb{E}[u u^\top] = I_D

    The probes are those :func:`jvp_projection_loss` draws from the same ``key``, so for
    ``h -> 0`` the two agree probe by probe. Each probe is two forward passes of each
    network (one call on a ``2 k B`` batch); the student's gradient is first order. The
    expectation over the probes is ``||J_T - J_S||_F^2 + (h^2/3) E<J_d u, d'''[u,u,u]>
    + O(h^4)``: biased by O(h^2) for smooth networks (derived in the
    docstring of ``jaxkd/losses/_differences.py``), exact for affine ``T - S``, and 0
    when the student equals the teacher.

    Args:
      student_fn: pure ``[B, ...] -> [B, K]`` student, examples independent.
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher, examples independent; or its
        :class:`TeacherTargets` on ``x`` computed with ``projections=("fd",)`` and the
        same ``num_probes``, ``distribution`` and ``step`` (their probes are used).
      x: ``[batch_size, ...]`` floating inputs.
      key: a ``jax.random.key`` for the probes; required with ``teacher_fn``; with
        targets None, or the targets' key (a concrete other key raises, a traced one makes
        the rows NaN).
      num_probes: probes per example ``k >= 1``.
      distribution: ``"rademacher"``, ``"gaussian"`` or ``"orthogonal"`` (``k <= D``).
      step: the step relative to each example's RMS, ``h_b = step * RMS(x_b)``; None:
        ``eps^(1/3)`` of the narrowest floating dtype of ``x`` and the networks'
        computations (:data:`DEFAULT_STEPS`; with targets, the targets' step, which must
        be no smaller than the student's default).

    Returns:
      ``[batch_size]`` estimates, float32 (or wider).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxkd.losses import finite_difference_loss
      >>> teacher = lambda x: 2.0 * x  # affine: the difference quotient is exact
      >>> student = lambda x: x
      >>> est = finite_difference_loss(student, teacher, jnp.ones((1, 3)),
      ...                              key=jax.random.key(0))
      >>> print(est.round(4))
      [3.]
    """
    if isinstance(teacher_fn, _targets.TeacherTargets):
        targets = teacher_fn
        x = _checks.check_network_loss(x, {"student_fn": student_fn})
        u, q_t = _contract.for_projection(targets, "fd", x, key, num_probes, distribution)
        _checks.check_network_outputs(x, jax.eval_shape(student_fn, x), targets.logits)
        stored = targets.fd_step
        assert stored is not None  # for_projection refused targets without "fd"
        if step is None:
            own = resolve_step(None, x, student_fn)
            if own > stored:
                raise ValueError(
                    f"`step`: the student's default step is {own:.3g} (its narrowest "
                    f"dtype), larger than the step {stored:.3g} the `targets` were "
                    f"computed with; compute them with step={own:.3g}, or pass "
                    f"step={stored:.3g} to accept it.")
            step = stored
        elif resolve_step(step, x) != stored:
            raise _contract.mismatch("step", step, stored)
        loss = _student_part(student_fn, x, u, example_steps(x, step), q_t)
        return _contract.nan_unless_same(targets, x, loss, key)
    x = _checks.check_network_loss(x, {"student_fn": student_fn, "teacher_fn": teacher_fn},
                                   key=key, num_probes=num_probes)
    _checks.network_outputs(x, student_fn, teacher_fn)
    h = example_steps(x, resolve_step(step, x, student_fn, teacher_fn))
    key = _checks.check_key("key", key)
    u = _common.sample_probes(key, x.shape, num_probes, distribution, x.dtype)
    q_t = jax.lax.stop_gradient(quotients(teacher_fn, x, u, h))
    return _student_part(student_fn, x, u, h, q_t)
