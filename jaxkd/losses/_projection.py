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

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxkd.losses import _checks
from jaxkd.losses._jacobian import like

Fn = Callable[[jax.Array], jax.Array]

DISTRIBUTIONS = ("rademacher", "gaussian", "orthogonal")


def sample_probes(key: jax.Array, shape: tuple[int, ...], num_probes: int,
                  distribution: str = "rademacher", dtype=jnp.float32) -> jax.Array:
    """Probes ``[num_probes, batch, ...]`` with identity second moment per example.

    * ``"rademacher"``: entries +-1 (the lowest-variance i.i.d. choice for trace estimation);
    * ``"gaussian"``: standard normal entries;
    * ``"orthogonal"``: per example, ``num_probes`` mutually orthogonal directions drawn
      uniformly (Haar), scaled by ``sqrt(D)`` so that ``E[u u^T] = I``; needs
      ``num_probes <= D`` and has no more variance than independent probes.

    Args:
      key: a ``jax.random.key``.
      shape: ``(batch, ...)`` the shape of one probe for the whole batch.
      num_probes: number of probes per example.
      distribution: one of ``"rademacher"``, ``"gaussian"``, ``"orthogonal"``.
      dtype: floating dtype of the probes.

    Returns:
      ``[num_probes, *shape]`` probes.
    """
    _checks.check_count("num_probes", num_probes)
    _checks.check_choice("distribution", distribution, DISTRIBUTIONS)
    full = (num_probes,) + tuple(shape)
    if distribution == "rademacher":
        return jax.random.rademacher(key, full, dtype=dtype)
    if distribution == "gaussian":
        return jax.random.normal(key, full, dtype=dtype)
    batch, dim = shape[0], math.prod(shape[1:])
    if num_probes > dim:
        raise ValueError(f'`num_probes` must be <= {dim} (the dimension probed) for '
                         f'distribution="orthogonal", got {num_probes}.')
    g = jax.random.normal(key, (batch, dim, num_probes), dtype=dtype)
    q, r = jnp.linalg.qr(g)
    # Fix the signs so that q is Haar-distributed (Mezzadri 2007).
    q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    probes = jnp.sqrt(jnp.asarray(dim, dtype)) * jnp.moveaxis(q, -1, 0)  # [n, B, D]
    return probes.reshape(full)


def _check_common(x, key, num_probes):
    _checks.check_floating("x", x)
    _checks.check_min_rank("x", x, 2, "[batch_size, ...]")
    _checks.check_key("key", key)
    _checks.check_count("num_probes", num_probes)


def vjp_projection_loss(student_fn: Fn,
                        teacher_fn: Fn,
                        x: jax.typing.ArrayLike,
                        *,
                        key: jax.Array,
                        num_probes: int = 1,
                        distribution: str = "rademacher") -> jax.Array:
    r"""Output-space (VJP) unbiased estimate of ``||J_T(x) - J_S(x)||_F^2``.

    .. math::
        \frac{1}{k} \sum_{j=1}^{k} \big\| v_j^\top (J_T(x) - J_S(x)) \big\|_2^2,
        \qquad v_j \in \mathbb{R}^K,\ \mathbb{E}[v v^\top] = I_K

    One reverse pass per probe through each network (batched over probes); the variance
    falls as ``1/num_probes`` for independent probes. The teacher is a constant target.

    Args:
      student_fn: pure ``[B, ...] -> [B, K]`` student, examples independent.
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher, examples independent.
      x: ``[batch_size, ...]`` floating inputs.
      key: a ``jax.random.key`` for the probes (fold in the step when training).
      num_probes: probes per example ``k >= 1``.
      distribution: ``"rademacher"``, ``"gaussian"`` or ``"orthogonal"`` (``k <= K``).

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
    x = jnp.asarray(x)
    _check_common(x, key, num_probes)
    teacher_out, teacher_vjp = jax.vjp(teacher_fn, x)
    student_out, student_vjp = jax.vjp(student_fn, x)
    _checks.check_network_outputs(x, student_out, teacher_out)
    v = like(sample_probes(key, teacher_out.shape, num_probes, distribution, teacher_out.dtype),
             teacher_out)
    (g_t,) = jax.vmap(teacher_vjp)(v)
    (g_s,) = jax.vmap(student_vjp)(v.astype(student_out.dtype))
    diff = jax.lax.stop_gradient(g_t) - g_s
    return jnp.mean(jnp.sum(jnp.square(diff.reshape(diff.shape[:2] + (-1,))), axis=-1), axis=0)


def jvp_projection_loss(student_fn: Fn,
                        teacher_fn: Fn,
                        x: jax.typing.ArrayLike,
                        *,
                        key: jax.Array,
                        num_probes: int = 1,
                        distribution: str = "rademacher") -> jax.Array:
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
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher, examples independent.
      x: ``[batch_size, ...]`` floating inputs.
      key: a ``jax.random.key`` for the probes.
      num_probes: probes per example ``k >= 1``.
      distribution: ``"rademacher"``, ``"gaussian"`` or ``"orthogonal"`` (``k <= D``).

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
    x = jnp.asarray(x)
    _check_common(x, key, num_probes)
    u = like(sample_probes(key, x.shape, num_probes, distribution, x.dtype), x)
    teacher_out, t_u = jax.vmap(lambda ui: jax.jvp(teacher_fn, (x,), (ui,)), out_axes=(None, 0))(u)
    student_out, s_u = jax.vmap(lambda ui: jax.jvp(student_fn, (x,), (ui,)), out_axes=(None, 0))(u)
    _checks.check_network_outputs(x, student_out, teacher_out)
    diff = jax.lax.stop_gradient(t_u) - s_u  # [n, B, K]
    return jnp.mean(jnp.sum(jnp.square(diff), axis=-1), axis=0)
