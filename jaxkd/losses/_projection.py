"""Random-projection estimators of the squared Frobenius distance of input Jacobians.

``||J_T(x) - J_S(x)||_F^2`` costs K backward passes exactly. For a probe ``v`` with
``E[v v^T] = I``, ``E ||v^T A||^2 = E[v^T A A^T v] = tr(A A^T) = ||A||_F^2`` and likewise
``E ||A u||^2 = tr(A^T A)`` for input-space probes: one pass per probe, unbiased
(Hutchinson's trace estimator; the idea behind Sobolev training, Czarnecki et al. 2017,
and the Jacobian regulariser of Hoffman et al. 2019).

Note what is estimated: the squared distance of the *raw* Jacobians. Projecting the
normalised gradients of :func:`jacobian_matching_loss` is a different quantity (the
normalisation does not commute with the projection), so these estimators pair with
``jacobian_matching_loss(..., normalize=False, outputs="all")``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxkd.losses import _checks, _common, _contract, _remat, _targets
from jaxkd.losses._common import (DISTRIBUTIONS, Distribution,  # noqa: F401 (re-exported)
                                  sample_probes)

Fn = Callable[[jax.Array], jax.Array]


def _check_common(student_fn: Fn, teacher_fn: Fn, x: jax.typing.ArrayLike,
                  key: jax.Array | None, num_probes: int, remat_chunks: int | None
                  ) -> tuple[jax.Array, jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """``x`` as an array and the shapes and dtypes of both networks' outputs on it, checked."""
    x = _checks.check_network_loss(x, {"student_fn": student_fn, "teacher_fn": teacher_fn},
                                   key=key, num_probes=num_probes, remat_chunks=remat_chunks)
    return (x, *_checks.network_outputs(x, student_fn, teacher_fn))


def _from_targets(which: _targets.Projection, student_fn: Fn, targets: _targets.TeacherTargets,
                  x: jax.typing.ArrayLike, key: jax.Array | None, num_probes: int,
                  distribution: Distribution, remat_chunks: int | None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``x`` and the probes and teacher products of ``targets``, checked for this loss."""
    x = _checks.check_network_loss(x, {"student_fn": student_fn}, remat_chunks=remat_chunks)
    probes, products = _contract.for_projection(targets, which, x, key, num_probes,
                                                distribution)
    student_out = jax.eval_shape(student_fn, x)
    _checks.check_network_outputs(x, student_out, targets.logits)
    return x, probes, products


def _student_only(student_part, args, remat_chunks):
    """``student_part(*args)[0]`` (``x``, probes and teacher products given), in chunks when
    ``remat_chunks``."""
    if remat_chunks is None:
        return student_part(*args)[0]
    return _remat.map_chunks(student_part, remat_chunks, args, (0, 1, 1), (0,), remat=True)[0]


def _two_parts(teacher_part, student_part, args, teacher_axes, remat_chunks):
    """``student_part(*args, *teacher_part(*args))[0]``, in chunks when ``remat_chunks``."""
    if remat_chunks is None:
        return student_part(*args, *teacher_part(*args))[0]
    in_axes = (0,) + (1,) * (len(args) - 1)  # x [B, ...], probes [n, B, ...]
    teacher_out = _remat.map_chunks(teacher_part, remat_chunks, args, in_axes, teacher_axes,
                                    remat=False)
    return _remat.map_chunks(student_part, remat_chunks, tuple(args) + tuple(teacher_out),
                             in_axes + tuple(teacher_axes), (0,), remat=True)[0]


def vjp_projection_loss(student_fn: Fn,
                        teacher_fn: Fn | _targets.TeacherTargets,
                        x: jax.typing.ArrayLike,
                        *,
                        key: jax.Array | None = None,
                        num_probes: int = 1,
                        distribution: Distribution = "rademacher",
                        remat_chunks: int | None = None) -> jax.Array:
    r"""Output-space (VJP) unbiased estimate of ``||J_T(x) - J_S(x)||_F^2``.

    .. math::
        \frac{1}{k} \sum_{j=1}^{k} \big\| v_j^\top (J_T(x) - J_S(x)) \big\|_2^2,
        \qquad v_j \in \mathbb{R}^K,\ \mathbb{E}[v v^\top] = I_K

    One reverse pass per probe through each network (batched over probes); the variance
    falls as ``1/num_probes`` for independent probes. The teacher is a constant target.

    Args:
      student_fn: pure ``[B, ...] -> [B, K]`` student, examples independent.
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher, examples independent; or its
        :class:`TeacherTargets` on ``x`` computed with ``projections=("vjp",)`` and the
        same ``num_probes`` and ``distribution`` (their probes are used).
      x: ``[batch_size, ...]`` floating inputs.
      key: a ``jax.random.key`` for the probes (fold in the step when training); required
        with ``teacher_fn``; with targets None, or the targets' key (a concrete other key
        raises, a traced one makes the rows NaN).
      num_probes: probes per example ``k >= 1``.
      distribution: ``"rademacher"``, ``"gaussian"`` or ``"orthogonal"`` (``k <= K``).
      remat_chunks: ``None`` or ``n >= 1``: rematerialise in ``n`` slices of the batch
        (as in :func:`jacobian_matching_loss`); the same probes, the same values.

    Returns:
      ``[batch_size]`` estimates; their expectation over ``key`` is
      ``jacobian_matching_loss(..., normalize=False, outputs="all")``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxkd.losses import vjp_projection_loss
      >>> teacher = lambda x: 2.0 * x
      >>> student = lambda x: x
      >>> x = jnp.ones((1, 3))
      >>> est = vjp_projection_loss(student, teacher, x, key=jax.random.key(0))
      >>> print(est)  # exact for Rademacher probes when J_T - J_S is the identity
      [3.]
    """
    def student_part(x, v, g_t):
        out, vjp = jax.vjp(student_fn, x)
        g_s = _checks.widen(_common.rows_of_vjp(vjp, _common.like(v.astype(out.dtype), out)))
        diff = g_t - g_s.reshape(g_s.shape[:2] + (-1,))
        return (jnp.mean(jnp.sum(jnp.square(diff), axis=-1), axis=0),)

    if isinstance(teacher_fn, _targets.TeacherTargets):
        x, v, g_t = _from_targets("vjp", student_fn, teacher_fn, x, key, num_probes,
                                  distribution, remat_chunks)
        loss = _student_only(student_part, (x, v, g_t), remat_chunks)
        return _contract.nan_unless_same(teacher_fn, x, loss, key)
    x, student_out, teacher_out = _check_common(student_fn, teacher_fn, x, key, num_probes,
                                                remat_chunks)
    # Probes in float32 (or wider) whatever the networks' dtype, cast to each network's
    # output dtype for its VJP: a bfloat16 network sees its probes rounded, as it would.
    assert key is not None  # _check_common raised otherwise
    v = sample_probes(key, teacher_out.shape, num_probes, distribution,
                      _checks.wide_dtype(teacher_out.dtype))

    def teacher_part(x, v):
        return (_targets.vjp_rows(teacher_fn, x, v),)

    return _two_parts(teacher_part, student_part, (x, v), (1,), remat_chunks)


def jvp_projection_loss(student_fn: Fn,
                        teacher_fn: Fn | _targets.TeacherTargets,
                        x: jax.typing.ArrayLike,
                        *,
                        key: jax.Array | None = None,
                        num_probes: int = 1,
                        distribution: Distribution = "rademacher",
                        remat_chunks: int | None = None) -> jax.Array:
    r"""Input-space (JVP) unbiased estimate of ``||J_T(x) - J_S(x)||_F^2``.

    .. math::
        \frac{1}{k} \sum_{j=1}^{k} \big\| (J_T(x) - J_S(x))\, u_j \big\|_2^2,
        \qquad u_j \in \mathbb{R}^D,\ \mathbb{E}[u u^\top] = I_D

    Forward mode only: each probe is one JVP through each network, with no reverse
    pass to form the estimate, so the gradient with respect to the student's parameters
    is reverse-over-forward (never reverse-over-reverse). The variance falls as
    ``1/num_probes``; it is larger than the VJP route's when ``D >> K`` for the same k,
    the price of avoiding a backward pass.

    Args:
      student_fn: pure ``[B, ...] -> [B, K]`` student, examples independent.
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher, examples independent; or its
        :class:`TeacherTargets` on ``x`` computed with ``projections=("jvp",)`` and the
        same ``num_probes`` and ``distribution`` (their probes are used).
      x: ``[batch_size, ...]`` floating inputs.
      key: a ``jax.random.key`` for the probes; required with ``teacher_fn``; with
        targets None, or the targets' key (a concrete other key raises, a traced one makes
        the rows NaN).
      num_probes: probes per example ``k >= 1``.
      distribution: ``"rademacher"``, ``"gaussian"`` or ``"orthogonal"`` (``k <= D``).
      remat_chunks: ``None`` or ``n >= 1``: rematerialise in ``n`` slices of the batch
        (as in :func:`jacobian_matching_loss`); the same probes, the same values.

    Returns:
      ``[batch_size]`` estimates with the same expectation as :func:`vjp_projection_loss`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxkd.losses import jvp_projection_loss
      >>> teacher = lambda x: 2.0 * x
      >>> student = lambda x: x
      >>> print(jvp_projection_loss(student, teacher, jnp.ones((1, 3)), key=jax.random.key(0)))
      [3.]
    """
    def student_part(x, u, t_u):
        diff = t_u - _checks.widen(_common.tangents(student_fn, x, _common.like(u, x)))
        return (jnp.mean(jnp.sum(jnp.square(diff), axis=-1), axis=0),)  # over [n, B, K]

    if isinstance(teacher_fn, _targets.TeacherTargets):
        x, u, t_u = _from_targets("jvp", student_fn, teacher_fn, x, key, num_probes,
                                  distribution, remat_chunks)
        loss = _student_only(student_part, (x, u, t_u), remat_chunks)
        return _contract.nan_unless_same(teacher_fn, x, loss, key)
    x, _, _ = _check_common(student_fn, teacher_fn, x, key, num_probes, remat_chunks)
    assert key is not None  # _check_common raised otherwise
    u = sample_probes(key, x.shape, num_probes, distribution, x.dtype)

    def teacher_part(x, u):
        return (_targets.jvp_rows(teacher_fn, x, u),)

    return _two_parts(teacher_part, student_part, (x, u), (1,), remat_chunks)
