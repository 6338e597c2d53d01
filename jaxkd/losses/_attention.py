"""Attention transfer (Zagoruyko & Komodakis 2017) and its input Jacobian.

Feature maps are NHWC ``[batch, height, width, channels]``. The attention map of a
layer is the channel sum of ``|A_c|^p``, flattened over space and L2-normalised.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses import _checks, _contract, _remat, _targets
from jaxkd.losses._common import DEFAULT_EPS, attention_map, safe_normalize

FeatureFn = Callable[[jax.Array], jax.Array]
# One feature map, or a list or tuple of matched layers' maps (other sequences are not
# taken for layers).
Features = (jax.typing.ArrayLike | list[jax.typing.ArrayLike]
            | tuple[jax.typing.ArrayLike, ...])
FEATURE_SIGNATURE = "x -> [B, H, W, C]"
FEATURE_LAYOUT = "[B, H, W, C]"


def _check_pair(student, teacher, student_name, teacher_name):
    for name, f in ((student_name, student), (teacher_name, teacher)):
        _checks.check_floating(name, f)
        _checks.check_rank(name, f, 4, "[batch_size, height, width, channels]")
        _checks.check_not_empty(name, f)
    s, t = np.shape(student), np.shape(teacher)
    if s[:3] != t[:3]:
        raise ValueError(f"`{student_name}` and `{teacher_name}` must agree in batch size and "
                         f"spatial size [B, H, W, .] (channels may differ), got shapes {s} and "
                         f"{t}.")


def attention_transfer_loss(student_features: Features, teacher_features: Features,
                            *,
                            p: float = 2.0) -> jax.Array:
    r"""Attention transfer: squared distance of normalised attention maps, per example.

    .. math::
        \sum_{\text{layers}} \| Q(A_S) - Q(A_T) \|_2^2

    Pass one feature map each, or equal-length sequences of matched layers (summed).
    Channels may differ between student and teacher; batch and spatial size may not.
    The teacher is a constant target.

    Args:
      student_features: ``[batch_size, H, W, C_s]`` or a sequence of such maps.
      teacher_features: ``[batch_size, H, W, C_t]`` or a sequence matched to the student's.
      p: exponent of :func:`attention_map`.

    Returns:
      ``[batch_size]`` losses, each in ``[0, 4 * num_layers]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkd.losses import attention_transfer_loss
      >>> s = jnp.zeros((1, 1, 2, 1)).at[0, 0, 0, 0].set(1.0)
      >>> t = jnp.zeros((1, 1, 2, 4)).at[0, 0, 1, :].set(1.0)
      >>> print(attention_transfer_loss(s, t))
      [2.]
    """
    if isinstance(student_features, (list, tuple)) or isinstance(teacher_features, (list, tuple)):
        if (not isinstance(student_features, (list, tuple))
                or not isinstance(teacher_features, (list, tuple))
                or len(student_features) != len(teacher_features) or not student_features):
            raise ValueError("`student_features` and `teacher_features` must both be arrays, or "
                             "non-empty sequences of the same length (matched layers).")
        first, *rest = (attention_transfer_loss(s, t, p=p)
                        for s, t in zip(student_features, teacher_features))
        return sum(rest, start=first)
    _check_pair(student_features, teacher_features, "student_features", "teacher_features")
    q_t = jax.lax.stop_gradient(attention_map(teacher_features, p=p))
    q_s = attention_map(student_features, p=p)
    return jnp.sum(jnp.square(q_s - q_t), axis=-1)


def attention_jacobian_loss(student_feature_fn: FeatureFn,
                            teacher_feature_fn: FeatureFn | _targets.TeacherTargets,
                            x: jax.typing.ArrayLike,
                            *,
                            p: float = 2.0,
                            eps: float = DEFAULT_EPS,
                            remat_chunks: int | None = None) -> jax.Array:
    r"""Jacobian of attention: match input gradients of the attention at the teacher's peak.

    Let ``j*`` be the position of the largest value of the teacher's attention map
    ``Q(A_T(x))`` (:func:`attention_map`). With ``g_N = grad_x Q(A_N(x))[j*]`` for
    ``N`` in {teacher, student}, flattened over the input,

    .. math::
        \Big\| \frac{g_T}{\|g_T\|_2} - \frac{g_S}{\|g_S\|_2} \Big\|_2^2

    (Srinivas & Fleuret 2018, transfer experiments). One VJP per network for the batch.

    Args:
      student_feature_fn: pure ``[B, ...] -> [B, H, W, C_s]`` student feature map.
      teacher_feature_fn: pure ``[B, ...] -> [B, H, W, C_t]`` teacher feature map; or the
        :class:`TeacherTargets` on ``x`` computed with ``teacher_feature_fn=`` and the same
        ``p`` (their maps and gradients are used).
      x: ``[batch_size, ...]`` floating inputs.
      p: exponent of :func:`attention_map`.
      eps: floor of the norms.
      remat_chunks: ``None`` or ``n >= 1``: rematerialise in ``n`` slices of the batch
        (as in :func:`jacobian_matching_loss`).

    Returns:
      ``[batch_size]`` losses in ``[0, 4]`` (float32 for bfloat16 feature maps).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkd.losses import attention_jacobian_loss
      >>> fn = lambda x: jnp.tanh(x)[:, :, :, None] * jnp.ones((1, 1, 1, 3))
      >>> print(attention_jacobian_loss(fn, fn, jnp.ones((2, 2, 2))))
      [0. 0.]
    """
    given_targets = isinstance(teacher_feature_fn, _targets.TeacherTargets)
    networks: dict[str, FeatureFn | _targets.TeacherTargets] = {
        "student_feature_fn": student_feature_fn}
    if not given_targets:
        networks["teacher_feature_fn"] = teacher_feature_fn
    x = _checks.check_network_loss(x, networks, signature=FEATURE_SIGNATURE,
                                   remat_chunks=remat_chunks)
    student_maps = jax.eval_shape(student_feature_fn, x)
    _checks.check_function_output("student_feature_fn", student_maps, FEATURE_LAYOUT)
    if isinstance(teacher_feature_fn, _targets.TeacherTargets):
        q_t, g_t = _contract.for_attention(teacher_feature_fn, x, p, eps)
        _check_student_maps(student_maps, q_t)
    else:
        teacher_maps = jax.eval_shape(teacher_feature_fn, x)
        _checks.check_function_output("teacher_feature_fn", teacher_maps, FEATURE_LAYOUT)
        _check_pair(student_maps, teacher_maps, "student_feature_fn(x)",
                    "teacher_feature_fn(x)")

    def teacher_part(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        assert not isinstance(teacher_feature_fn, _targets.TeacherTargets)  # called without
        return _targets.attention_rows(teacher_feature_fn, x, p, eps)  # maps, raw gradients

    def student_part(x, q_t, g_t):
        # attention_map upcasts a bfloat16 feature map to float32 before its power and norm.
        q_s, vjp = jax.vjp(lambda y: attention_map(student_feature_fn(y), p=p, eps=eps), x)
        (g_s,) = vjp(_targets.peak_cotangent(q_t).astype(q_s.dtype))
        g_s = safe_normalize(_checks.widen(g_s).reshape(x.shape[0], -1), eps)
        return (jnp.sum(jnp.square(safe_normalize(g_t, eps) - g_s), axis=-1),)

    if isinstance(teacher_feature_fn, _targets.TeacherTargets):
        if remat_chunks is None:
            loss = student_part(x, q_t, g_t)[0]
        else:
            loss = _remat.map_chunks(student_part, remat_chunks, (x, q_t, g_t), (0, 0, 0),
                                     (0,), remat=True)[0]
        return _contract.nan_unless_same(teacher_feature_fn, x, loss)
    if remat_chunks is None:
        return student_part(x, *teacher_part(x))[0]
    q_t, g_t = _remat.map_chunks(teacher_part, remat_chunks, (x,), (0,), (0, 0), remat=False)
    return _remat.map_chunks(student_part, remat_chunks, (x, q_t, g_t), (0, 0, 0), (0,),
                             remat=True)[0]


def _check_student_maps(student_maps, q_t):
    _checks.check_floating("student_feature_fn(x)", student_maps)
    _checks.check_rank("student_feature_fn(x)", student_maps, 4,
                       "[batch_size, height, width, channels]")
    b, h, w = student_maps.shape[:3]
    if (b, h * w) != tuple(q_t.shape):
        raise ValueError(f"`student_feature_fn(x)` of shape {student_maps.shape} must agree "
                         f"with the targets' attention maps {tuple(q_t.shape)} [B, H * W] in "
                         f"batch size and spatial size.")
