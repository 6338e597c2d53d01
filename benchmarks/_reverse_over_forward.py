r"""Experiment: Jacobian matching with a reverse-over-forward parameter gradient.

Not part of the library: in the real train step it was not consistently faster than
:func:`jaxkd.losses.jacobian_matching_loss` (see ``docs/benchmarks.md``), so it lives
here, as the benchmark mode ``jm_top1_rof``, with tests proving it equal to the library
loss (``tests/benchmarks/test_reverse_over_forward.py``).

:func:`jacobian_matching_loss` differentiates the student's input gradient
``g_S = J_S(x)^T c`` (``c``: one-hot rows selecting outputs) by reverse mode over its own
reverse pass. The same parameter gradient has a forward-mode form. For a cotangent ``r``
of ``g_S`` (the derivative of the loss with respect to the input gradient),

.. math::
    \nabla_\theta \langle g_S, r \rangle
    = \nabla_\theta \langle c, J_S(x)\, r \rangle
    = \nabla_\theta \Big\langle c, \frac{d}{d\epsilon} S(x + \epsilon r) \Big|_{\epsilon=0}
      \Big\rangle,

so the backward pass of the input gradient is the gradient of one Jacobian-vector product
(``jax.jvp`` of the student along ``r``): reverse over forward. :func:`input_gradients`
wraps ``g_S`` in a ``jax.custom_vjp`` with that rule; :func:`jacobian_matching_loss_rof`
is :func:`jacobian_matching_loss` built on it, with the same arguments and the same value
and gradients up to float round-off.

Why it is not a clear win. For a ReLU network reverse-over-reverse is already at the FLOP
floor: ReLU masks and pooling switches are piecewise constant, so the second reverse pass
only transposes the input-gradient pass (two convolutions per layer, as in a training
step's backward). The reverse-over-forward rule does the same two, plus a tangent forward
pass, plus the primal forward it must recompute inside the custom backward (XLA merges it
with the training step's forward only when the two are the same function, i.e. for
networks without BatchNorm). Measured: 10 % faster on the SmallCNN, 10 % slower or
worse on the BatchNorm VGG, within noise on the WRN.

The cotangent of ``x`` (a Hessian-vector product) is also defined, so the function stays
correct under any transformation; XLA removes it when only parameter gradients are used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxkd.losses._jacobian import DEFAULT_EPS, matching_loss

Fn = Callable[[jax.Array], jax.Array]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _vjp_rows(closed, x, cotangents, consts):
    _, vjp = jax.vjp(lambda y: closed(y, *consts), x)
    (g,) = jax.vmap(vjp)(cotangents)
    return g


def _vjp_rows_fwd(closed, x, cotangents, consts):
    return _vjp_rows(closed, x, cotangents, consts), (x, cotangents, consts)


def _vjp_rows_bwd(closed, residuals, r):
    x, cotangents, consts = residuals

    def pairing(x, cotangents, consts):
        # sum_j <c_j, J(x) r_j> = sum_j <J(x)^T c_j, r_j>: the input gradients paired
        # with their cotangents, written with forward-mode products only.
        def one(c, rj):
            _, tangent = jax.jvp(lambda y: closed(y, *consts), (x,), (rj,))
            return jnp.sum(c * tangent)
        return jnp.sum(jax.vmap(one)(cotangents, r))

    return jax.grad(pairing, argnums=(0, 1, 2))(x, cotangents, consts)


_vjp_rows.defvjp(_vjp_rows_fwd, _vjp_rows_bwd)


def input_gradients(fn: Fn, x: jax.Array, cotangents: jax.Array) -> jax.Array:
    """Input gradients ``c_j^T J_fn(x)`` with a reverse-over-forward backward pass.

    The values are those of ``jax.vmap(jax.vjp(fn, x)[1])(cotangents)``; differentiating
    them (in ``fn``'s closed-over parameters, in ``x`` or in ``cotangents``) goes through
    the gradient of a Jacobian-vector product instead of a second reverse pass.

    Args:
      fn: pure ``[B, ...] -> [B, K]`` function; it may close over traced parameters
        (they are hoisted with ``jax.closure_convert``).
      x: ``[B, ...]`` inputs.
      cotangents: ``[n, B, K]`` cotangents (e.g. one-hot rows selecting outputs).

    Returns:
      ``[n, B, ...]`` input gradients, one per cotangent.
    """
    closed, consts = jax.closure_convert(fn, x)
    return _vjp_rows(closed, x, cotangents, tuple(consts))


def jacobian_matching_loss_rof(student_fn: Fn,
                               teacher_fn: Fn,
                               x: jax.typing.ArrayLike,
                               *,
                               labels: jax.typing.ArrayLike | None = None,
                               outputs: str = "teacher_top1",
                               k: int = 1,
                               normalize: bool = True,
                               eps: float = DEFAULT_EPS) -> jax.Array:
    r""":func:`jacobian_matching_loss` with a reverse-over-forward parameter gradient.

    Same arguments, value and gradients (up to float round-off) as
    :func:`jaxkd.losses.jacobian_matching_loss`; only the way the student's input
    gradient is differentiated differs (see the module docstring): the backward pass
    through ``g_S = grad_x S^i(x)`` is the gradient of one forward-mode product
    ``J_S(x) r`` per selected output, never a reverse pass over a reverse pass.

    Args:
      student_fn: pure ``[B, ...] -> [B, K]`` student, examples independent (inference mode).
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher, examples independent.
      x: ``[batch_size, ...]`` floating inputs (e.g. NHWC images).
      labels: ``[batch_size]`` integer classes; required for ``outputs="label"``.
      outputs: ``"teacher_top1"``, ``"label"``, ``"top_k"`` or ``"all"``.
      k: number of teacher outputs for ``outputs="top_k"``.
      normalize: compare L2-normalised gradients (True) or raw gradients (False).
      eps: floor of the gradient norm when normalising.

    Returns:
      ``[batch_size]`` losses.

    Examples:
      >>> import jax.numpy as jnp
      >>> from benchmarks._reverse_over_forward import jacobian_matching_loss_rof
      >>> teacher = lambda x: jnp.stack([x[:, 0] + x[:, 1], -x[:, 0]], axis=-1)
      >>> student = lambda x: jnp.stack([2.0 * x[:, 0], -x[:, 0]], axis=-1)
      >>> x = jnp.ones((1, 2))
      >>> print(jacobian_matching_loss_rof(student, teacher, x).round(4))
      [0.5858]
    """
    return matching_loss(input_gradients, student_fn, teacher_fn, x, labels, outputs, k,
                         normalize, eps)
