"""Numerics shared by the losses: one home for what more than one loss module computes.

Every loss module (and :mod:`jaxkd.losses._targets`) imports these from here, never from a
sibling loss module, so that each loss can change without touching the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from jaxkd.losses import _checks

Fn = Callable[[jax.Array], jax.Array]

Distribution = Literal["rademacher", "gaussian", "orthogonal"]
DISTRIBUTIONS: tuple[str, ...] = ("rademacher", "gaussian", "orthogonal")

# Floor of the gradient norm in `safe_normalize`: sqrt(||g||^2 + eps^2). It keeps the loss
# and its gradient finite at g = 0 (the gradient of g/||g|| is then bounded by 1/eps) and
# moves the normalised vector by a relative eps^2 / (2 ||g||^2): 5e-13 at ||g|| = 1e-3.
DEFAULT_EPS = 1e-6


def safe_normalize(g: jax.Array, eps: float = DEFAULT_EPS) -> jax.Array:
    """``g / sqrt(||g||^2 + eps^2)`` along the last axis: finite, with finite gradient, at 0."""
    return g * jax.lax.rsqrt(jnp.sum(jnp.square(g), axis=-1, keepdims=True) + eps**2)


def like(stack: jax.Array, ref: jax.Array) -> jax.Array:
    """``stack`` ``[n, *ref.shape]`` given ``ref``'s sharding type, values unchanged.

    Under an ``Explicit``-axis mesh (``jax.make_mesh``'s default) a VJP cotangent or JVP
    tangent must carry the same sharding as the output or input it pairs with; probes
    and one-hot rows built from shapes alone carry none. Adding zeros shaped like ``ref``
    broadcasts its sharding onto the stack (a no-op without such a mesh).
    """
    return stack + jnp.zeros_like(ref)[None]


def rows_of_vjp(vjp: Callable, cotangents: jax.Array) -> jax.Array:
    """``[n, B, ...]``: ``vjp`` (one linearisation) applied to each of the ``n`` rows.

    One row (``n == 1``: the teacher's top-1, the label, one probe) is a direct call with
    the ``[B, K]`` cotangent; a ``vmap`` over a size-1 axis costs the same FLOPs but was
    measured 1.1-1.3x slower on XLA:CPU for convolutional networks.
    """
    if cotangents.shape[0] == 1:
        (g,) = vjp(cotangents[0])
        return g[None]
    (g,) = jax.vmap(vjp)(cotangents)
    return g


def vjp_input_gradients(fn: Fn, x: jax.Array, cotangents: jax.Array) -> jax.Array:
    """``[n, B, ...]`` input gradients ``c_j^T J_fn(x)``: one VJP, applied to each row."""
    _, vjp = jax.vjp(fn, x)
    return rows_of_vjp(vjp, cotangents)


def tangents(fn: Fn, x: jax.Array, u: jax.Array) -> jax.Array:
    """``[n, B, K]`` Jacobian-vector products ``J_fn(x) u_j``; one row is a direct ``jvp``."""
    if u.shape[0] == 1:
        return jax.jvp(fn, (x,), (u[0],))[1][None]
    return jax.vmap(lambda ui: jax.jvp(fn, (x,), (ui,))[1])(u)


def flat_rows(g: jax.Array) -> jax.Array:
    """``[n, B, ...]`` -> ``[n, B, D]``, in :func:`_checks.wide_dtype`."""
    return _checks.widen(g).reshape(g.shape[:2] + (-1,))


def sample_probes(key: jax.Array, shape: tuple[int, ...], num_probes: int,
                  distribution: Distribution = "rademacher", dtype=jnp.float32) -> jax.Array:
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

    Examples:
      >>> import jax
      >>> from jaxkd.losses import sample_probes
      >>> sample_probes(jax.random.key(0), (2, 3), 4).shape
      (4, 2, 3)
    """
    _checks.check_key("key", key)
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


def attention_map(features: jax.typing.ArrayLike, *, p: float = 2.0,
                  eps: float = DEFAULT_EPS) -> jax.Array:
    r"""Spatial attention map of a feature map: ``Q = sum_c |A_c|^p``, L2-normalised.

    .. math::
        Q(A) = \frac{\mathrm{vec}(\sum_c |A_c|^p)}{\| \mathrm{vec}(\sum_c |A_c|^p) \|_2}

    Args:
      features: ``[batch_size, height, width, channels]`` feature map (NHWC).
      p: exponent ``> 0`` (2 in the paper).
      eps: floor of the norm, so an all-zero map stays finite.

    Returns:
      ``[batch_size, height * width]`` unit-norm attention maps.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkd.losses import attention_map
      >>> a = jnp.zeros((1, 2, 2, 3)).at[0, 0, 1, :].set(1.0)
      >>> print(attention_map(a))
      [[0. 1. 0. 0.]]

    References:
      Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.
    """
    _checks.check_floating("features", features)
    _checks.check_rank("features", features, 4, "[batch_size, height, width, channels]")
    _checks.check_not_empty("features", features)
    _checks.check_positive("p", p)
    _checks.check_positive("eps", eps)
    features = _checks.widen(jnp.asarray(features))
    q = jnp.sum(jnp.abs(features) ** p, axis=-1)
    return safe_normalize(q.reshape(q.shape[0], -1), eps)


def softened_kl(student_logits: jax.Array, teacher_logits: jax.Array,
                temperature: jax.typing.ArrayLike) -> jax.Array:
    """``tau^2 KL(softmax(t/tau) || softmax(s/tau))`` per row, teacher held constant.

    A class the teacher gives probability 0 (a ``-inf`` logit: a masked class) adds
    nothing, as ``0 log 0 = 0`` (``xlogy``): the KL over the classes the teacher allows.
    The selection is made on the teacher's probability alone, so the student's terms of
    a masked class are never evaluated as ``0 * inf``, in the value or its gradient.
    """
    tau = jnp.asarray(temperature)
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    log_p_t = jax.nn.log_softmax(teacher_logits / tau, axis=-1)
    log_p_s = jax.nn.log_softmax(student_logits / tau, axis=-1)
    allowed = log_p_t > -jnp.inf
    diff = jnp.where(allowed, log_p_t - log_p_s, 0.0)
    return tau**2 * jnp.sum(jnp.exp(log_p_t) * diff, axis=-1)


def soft_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array,
                       temperature: jax.typing.ArrayLike) -> jax.Array:
    """``-sum_i softmax(t/tau)_i log softmax(s/tau)_i`` per row (masked classes of the
    teacher, of probability 0, adding nothing, as in :func:`softened_kl`)."""
    p_t = jax.nn.softmax(teacher_logits / temperature, axis=-1)
    log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    return -jnp.sum(p_t * jnp.where(p_t > 0, log_p_s, 0.0), axis=-1)
