"""Jacobian matching: compare the input gradients of teacher and student outputs.

All functions here take the networks as pure functions ``fn(x) -> [B, K]`` that treat
the examples of a batch independently. Then the Jacobian of the batched function is
block-diagonal, and one vector-Jacobian product (VJP) with a cotangent of shape
``[B, K]`` returns every example's input gradient at once: no per-example ``vmap`` of
the network. Several outputs per example (top-k, all K) are one ``vmap`` over the
cotangents of the same linearisation.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses import _checks, _common, _remat
from jaxkd.losses._common import DEFAULT_EPS, safe_normalize

Fn = Callable[[jax.Array], jax.Array]

OutputMode = Literal["teacher_top1", "label", "top_k", "all"]
OUTPUT_MODES: tuple[str, ...] = typing.get_args(OutputMode)


def _output_indices(teacher_out: jax.Array, labels, outputs: str, k: int) -> jax.Array:
    """``[n, B]`` indices of the outputs to match, chosen from the teacher (or labels)."""
    batch, num_classes = teacher_out.shape
    if outputs == "teacher_top1":
        return jnp.argmax(teacher_out, axis=-1)[None]
    if outputs == "label":
        return jnp.asarray(labels)[None]
    if outputs == "top_k":
        return jax.lax.top_k(teacher_out, k)[1].T
    return jnp.broadcast_to(jnp.arange(num_classes)[:, None], (num_classes, batch))


def _check_outputs_mode(x, labels, outputs: str, k: int) -> None:
    _checks.check_choice("outputs", outputs, OUTPUT_MODES)
    if outputs == "label":
        if labels is None:
            raise ValueError('`outputs="label"` needs `labels` ([batch_size] integer class '
                             'indices); got labels=None.')
        _checks.check_integer("labels", labels)
        _checks.check_rank("labels", labels, 1, "[batch_size]")
        if jnp.shape(labels)[0] != x.shape[0]:
            raise ValueError(f"`labels` must have shape [{x.shape[0]}] to match `x` of shape "
                             f"{x.shape}, got {jnp.shape(labels)}.")
    if outputs == "top_k":
        _checks.check_count("k", k)


def jacobian_matching_loss(student_fn: Fn,
                           teacher_fn: Fn,
                           x: jax.typing.ArrayLike,
                           *,
                           labels: jax.typing.ArrayLike | None = None,
                           outputs: OutputMode = "teacher_top1",
                           k: int = 1,
                           normalize: bool = True,
                           eps: float = DEFAULT_EPS,
                           remat_chunks: int | None = None) -> jax.Array:
    r"""Jacobian matching: distance between teacher and student input gradients.

    For each selected output ``i`` the input gradients ``g_T = grad_x T^i(x)`` and
    ``g_S = grad_x S^i(x)`` are flattened over the input and compared:

    .. math::
        \mathrm{JM}_i(x) = \Big\| \frac{g_T}{\|g_T\|_2} - \frac{g_S}{\|g_S\|_2} \Big\|_2^2
        \quad (\texttt{normalize=True}), \qquad
        \| g_T - g_S \|_2^2 \quad (\texttt{normalize=False}).

    Which outputs ``i``:

    * ``"teacher_top1"``: the teacher's arg-max class (one VJP per network);
    * ``"label"``: the true class ``labels``;
    * ``"top_k"``: the teacher's ``k`` largest outputs, terms **averaged** over the k;
    * ``"all"``: all K outputs, terms **summed**, so that ``normalize=False, outputs="all"``
      is ``sum_i ||grad T^i - grad S^i||^2 = ||J_T - J_S||_F^2``, the Jacobian term of
      Proposition 1 of Srinivas & Fleuret (2018) (and the quantity that
      :func:`vjp_projection_loss` and :func:`jvp_projection_loss` estimate).

    The normalised form is the practical loss of KD implementations of the paper; it is
    invariant to positive rescaling of either network's outputs. Norms are floored as
    ``sqrt(||g||^2 + eps^2)`` so a zero gradient gives a finite loss and gradient.

    The teacher is a constant target (its gradients are wrapped in ``stop_gradient``).
    Differentiating this loss with respect to the student's parameters goes through the
    student's VJP (reverse-over-reverse); :func:`jvp_projection_loss` avoids that.

    One selected output per example (``"teacher_top1"``, ``"label"``, ``"top_k"`` with
    ``k=1``) is one VJP per network with a ``[B, K]`` one-hot cotangent, exactly what one
    would write by hand; several are one ``vmap`` over the cotangents of one linearisation.

    Mixed precision: the networks may compute in bfloat16 (e.g. a Flax module with
    ``dtype=jnp.bfloat16``); their input gradients are upcast to float32 before the
    normalisation and the reductions, and the loss is float32 (float64 stays float64).

    Out-of-range labels: concrete ``labels`` outside ``[0, K)`` raise ``ValueError``;
    traced ones (under ``jit``) give ``NaN`` for their rows, so that the error shows in the
    loss (the training loop's non-finite guard stops on it) instead of a silent 0.

    Args:
      student_fn: pure ``[B, ...] -> [B, K]`` student, examples independent (inference mode).
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher, examples independent.
      x: ``[batch_size, ...]`` floating inputs (e.g. NHWC images).
      labels: ``[batch_size]`` integer classes; required for ``outputs="label"``.
      outputs: which outputs to match: ``"teacher_top1"``, ``"label"``, ``"top_k"``, ``"all"``.
      k: number of teacher outputs for ``outputs="top_k"`` (``1 <= k <= K``).
      normalize: compare L2-normalised gradients (True) or raw gradients (False).
      eps: floor of the gradient norm when normalising.
      remat_chunks: ``None`` (default) or ``n >= 1``: rematerialise, computing the loss over
        ``n`` slices of the batch in turn, the student's part under ``jax.checkpoint``.
        The term's live memory falls about ``n``-fold (its peak no longer adds to the
        step's), for one more student forward and backward pass in the backward pass;
        values and gradients are unchanged up to float round-off. ``n=1`` saves nothing
        (``jax.checkpoint`` of the whole network only moves the peak).

    Returns:
      ``[batch_size]`` losses (float32 for bfloat16, float16 or float32 inputs).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkd.losses import jacobian_matching_loss
      >>> teacher = lambda x: jnp.stack([x[:, 0] + x[:, 1], -x[:, 0]], axis=-1)
      >>> student = lambda x: jnp.stack([2.0 * x[:, 0], -x[:, 0]], axis=-1)
      >>> x = jnp.ones((1, 2))
      >>> print(jacobian_matching_loss(student, teacher, x, normalize=False, outputs="all"))
      [2.]
      >>> print(jacobian_matching_loss(student, teacher, x).round(4))  # 2 - 2 cos(45 deg)
      [0.5858]

    References:
      Srinivas & Fleuret, "Knowledge Transfer with Jacobian Matching", ICML 2018.
    """
    return matching_loss(_common.vjp_input_gradients, student_fn, teacher_fn, x, labels, outputs, k,
                         normalize, eps, remat_chunks)


def matching_loss(student_gradients: Callable[[Fn, jax.Array, jax.Array], jax.Array],
                  student_fn: Fn, teacher_fn: Fn, x: jax.typing.ArrayLike, labels,
                  outputs: OutputMode, k: int, normalize: bool, eps: float,
                  remat_chunks: int | None = None) -> jax.Array:
    """:func:`jacobian_matching_loss` with the student's input gradients computed by
    ``student_gradients(student_fn, x, cotangents)`` (which fixes how they differentiate)."""
    x = _checks.check_network_loss(x, {"student_fn": student_fn, "teacher_fn": teacher_fn},
                                   remat_chunks=remat_chunks)
    _check_outputs_mode(x, labels, outputs, k)
    student_out, teacher_out = _checks.network_outputs(x, student_fn, teacher_fn)
    num_classes = teacher_out.shape[-1]
    if outputs == "top_k" and k > num_classes:
        raise ValueError(f"`k` must be <= the number of classes K={num_classes}, got k={k}.")
    if outputs == "label" and _checks.is_concrete(labels):
        # Concrete labels are checked here; traced ones (under jit) give NaN rows below.
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"`labels` must be class indices in [0, {num_classes}), got "
                             f"values from {values.min()} to {values.max()}.")

    def teacher_part(x, *label_chunk):  # label_chunk: (labels,) for outputs="label", else ()
        out, vjp = jax.vjp(teacher_fn, x)
        index = _output_indices(jax.lax.stop_gradient(out), *(label_chunk or (None,)),
                                outputs, k)
        # [n, B, K] one-hot rows selecting the outputs.
        cotangents = _common.like(jax.nn.one_hot(index, num_classes, dtype=out.dtype), out)
        g_t = _checks.widen(_common.rows_of_vjp(vjp, cotangents))
        return jax.lax.stop_gradient(g_t.reshape(g_t.shape[:2] + (-1,))), cotangents

    def student_part(x, cotangents, g_t):
        g_s = student_gradients(student_fn, x, cotangents.astype(student_out.dtype))
        g_s = _checks.widen(g_s).reshape(g_s.shape[:2] + (-1,))
        if normalize:
            g_t, g_s = safe_normalize(g_t, eps), safe_normalize(g_s, eps)
        per_output = jnp.sum(jnp.square(g_t - g_s), axis=-1)  # [n, B]
        return (jnp.sum(per_output, axis=0) if outputs == "all"
                else jnp.mean(per_output, axis=0),)

    label_args = (jnp.asarray(labels),) if outputs == "label" else ()
    if remat_chunks is None:
        g_t, cotangents = teacher_part(x, *label_args)
        (loss,) = student_part(x, cotangents, g_t)
    else:
        g_t, cotangents = _remat.map_chunks(teacher_part, remat_chunks, (x,) + label_args,
                                            (0,) * (1 + len(label_args)), (1, 1), remat=False)
        (loss,) = _remat.map_chunks(student_part, remat_chunks, (x, cotangents, g_t),
                                    (0, 1, 1), (0,), remat=True)
    if outputs == "label":
        # Under jit a label outside [0, K) cannot raise; its one-hot row would be zero and
        # its loss a silent 0. Make it NaN instead, so that it shows (the training loop's
        # non-finite guard reports it). The gradient of the other rows is unchanged.
        labels = label_args[0]
        loss = jnp.where((labels >= 0) & (labels < num_classes), loss, jnp.nan)
    return loss
