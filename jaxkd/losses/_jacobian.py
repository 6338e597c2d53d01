"""Jacobian matching: compare the input gradients of teacher and student outputs.

All functions here take the networks as pure functions ``fn(x) -> [B, K]`` that treat
the examples of a batch independently. Then the Jacobian of the batched function is
block-diagonal, and one vector-Jacobian product (VJP) with a cotangent of shape
``[B, K]`` returns every example's input gradient at once: no per-example ``vmap`` of
the network. Several outputs per example (top-k, all K) are one ``vmap`` over the
cotangents of the same linearisation.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxkd.losses import _checks, _common, _contract, _remat, _targets
from jaxkd.losses._common import DEFAULT_EPS, safe_normalize
from jaxkd.losses._targets import OUTPUT_MODES, OutputMode  # noqa: F401 (re-exported)

Fn = Callable[[jax.Array], jax.Array]


def jacobian_matching_loss(student_fn: Fn,
                           teacher_fn: Fn | _targets.TeacherTargets,
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
        \quad (\texttt{normalize=True}),

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
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher, examples independent; or its
        :class:`TeacherTargets` on ``x`` (:func:`teacher_targets`, computed with the same
        ``outputs``, ``k`` and ``labels``): then no teacher pass runs here.
      x: ``[batch_size, ...]`` floating inputs (e.g. NHWC images).
      labels: ``[batch_size]`` integer classes; required for ``outputs="label"`` (with
        targets, optional: they hold the labels they were computed with).
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
    return matching_loss(_common.vjp_input_gradients, student_fn, teacher_fn, x, labels,
                         outputs, k, normalize, eps, remat_chunks)


def matching_loss(student_gradients: Callable[[Fn, jax.Array, jax.Array], jax.Array],
                  student_fn: Fn, teacher_fn: Fn | _targets.TeacherTargets,
                  x: jax.typing.ArrayLike, labels, outputs: OutputMode, k: int,
                  normalize: bool, eps: float, remat_chunks: int | None = None) -> jax.Array:
    """:func:`jacobian_matching_loss` with the student's input gradients computed by
    ``student_gradients(student_fn, x, cotangents)`` (which fixes how they differentiate)."""
    given_targets = isinstance(teacher_fn, _targets.TeacherTargets)
    networks = {"student_fn": student_fn} if given_targets else {"student_fn": student_fn,
                                                                 "teacher_fn": teacher_fn}
    x = _checks.check_network_loss(x, networks, remat_chunks=remat_chunks)
    _checks.check_flag("normalize", normalize)
    _checks.check_positive("eps", eps)

    def student_part(x, cotangents, g_t):
        g_s = student_gradients(student_fn, x, cotangents.astype(student_out.dtype))
        g_s = _common.flat_rows(g_s)
        if normalize:
            g_t, g_s = safe_normalize(g_t, eps), safe_normalize(g_s, eps)
        per_output = jnp.sum(jnp.square(g_t - g_s), axis=-1)  # [n, B]
        return (jnp.sum(per_output, axis=0) if outputs == "all"
                else jnp.mean(per_output, axis=0),)

    def student_loss(cotangents, g_t):
        if remat_chunks is None:
            return student_part(x, cotangents, g_t)[0]
        return _remat.map_chunks(student_part, remat_chunks, (x, cotangents, g_t), (0, 1, 1),
                                 (0,), remat=True)[0]

    if isinstance(teacher_fn, _targets.TeacherTargets):
        targets = teacher_fn
        index, g_t = _contract.for_jacobian(targets, x, labels, outputs, k)
        student_out = jax.eval_shape(student_fn, x)
        _checks.check_network_outputs(x, student_out, targets.logits)
        loss = student_loss(_targets.one_hot_rows(index, targets.logits), g_t)
        if outputs == "label":
            # As below for out-of-range labels; and traced labels that differ from the
            # targets' (a concrete mismatch raised above) make their rows NaN, not wrong.
            index = index[0]
            valid = (index >= 0) & (index < targets.logits.shape[-1])
            if labels is not None:
                valid = valid & (jnp.asarray(labels) == index)
            loss = jnp.where(valid, loss, jnp.nan)
        return _contract.nan_unless_same(targets, x, loss)

    _targets.check_outputs_mode(x, labels, outputs, k)
    student_out, teacher_out = _checks.network_outputs(x, student_fn, teacher_fn)
    num_classes = teacher_out.shape[-1]
    _targets.check_classes(labels, outputs, k, num_classes)

    def teacher_part(x, *label_chunk):  # label_chunk: (labels,) for outputs="label", else ()
        chunk_labels = label_chunk[0] if label_chunk else None
        out, index, g_t = _targets.selected_gradients(teacher_fn, x, chunk_labels, outputs, k)
        return g_t, _targets.one_hot_rows(index, out)  # [n, B, D], [n, B, K]

    label_args: tuple[jax.Array, ...] = (jnp.asarray(labels),) if outputs == "label" else ()
    if remat_chunks is None:
        g_t, cotangents = teacher_part(x, *label_args)
    else:
        g_t, cotangents = _remat.map_chunks(teacher_part, remat_chunks, (x,) + label_args,
                                            (0,) * (1 + len(label_args)), (1, 1), remat=False)
    loss = student_loss(cotangents, g_t)
    if outputs == "label":
        # Under jit a label outside [0, K) cannot raise; its one-hot row would be zero and
        # its loss a silent 0. Make it NaN instead, so that it shows (the training loop's
        # non-finite guard reports it). The gradient of the other rows is unchanged.
        labels = label_args[0]
        loss = jnp.where((labels >= 0) & (labels < num_classes), loss, jnp.nan)
    return loss
