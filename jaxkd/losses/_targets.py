"""What the losses need of the teacher, computed once: :func:`teacher_targets`.

The teacher is a constant target: its logits, the input gradients of its selected outputs,
its probe projections and its attention gradients do not depend on the student. A loss
given ``teacher_fn`` computes them on every call (a teacher forward and backward pass per
step and per student); :func:`teacher_targets` computes them once, as a
:class:`TeacherTargets` pytree that every Jacobian loss accepts in ``teacher_fn``'s place.
The teacher-side computations live here, and the losses call the same functions, so the
two routes run the same operations; what a loss checks of the targets it is given lives in
:mod:`jaxkd.losses._contract`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses import _checks, _common, _differences

Fn = Callable[[jax.Array], jax.Array]

OutputMode = Literal["teacher_top1", "label", "top_k", "all"]
OUTPUT_MODES: tuple[str, ...] = typing.get_args(OutputMode)
Projection = Literal["vjp", "jvp", "fd"]
PROJECTIONS: tuple[str, ...] = typing.get_args(Projection)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["logits", "indices", "gradients", "key_data", "vjp_probes", "vjp_gradients",
                 "jvp_probes", "jvp_tangents", "attention", "attention_gradients",
                 "fd_probes", "fd_quotients", "fingerprint"],
    meta_fields=["outputs", "k", "projections", "num_probes", "distribution", "p", "eps",
                 "fd_step"])
@dataclasses.dataclass(frozen=True)
class TeacherTargets:
    """The teacher's part of the losses on one batch, from :func:`teacher_targets`.

    A pytree: its array leaves (``None`` when not computed) all have the batch as their
    **leading** axis, so ``jax.tree.map(lambda a: a[idx], targets)`` takes the targets of
    some examples, ``jax.device_put(targets, NamedSharding(mesh, P("data")))`` shards them
    like the batch, and they pass through ``jax.jit`` (and can be saved and loaded as a
    dict of arrays). The other fields are static metadata: the options they were computed
    with, which the losses check against their own (see :func:`teacher_targets`).

    Attributes:
      logits: ``[B, K]`` the teacher's outputs ``teacher_fn(x)``.
      indices: ``[B, n]`` the selected outputs (``outputs`` mode), or None.
      gradients: ``[B, n, D]`` their input gradients, flattened, not normalised, or None.
      key_data: ``[B, ...]`` uint32 data of the probes' key (the same in every row), or
        None: only to check a key given to a projection loss.
      vjp_probes: ``[B, num_probes, K]`` output-space probes ``v``, or None.
      vjp_gradients: ``[B, num_probes, D]`` the products ``v^T J_T(x)``, or None.
      jvp_probes: ``[B, num_probes, ...]`` input-space probes ``u`` (shaped like ``x``), or
        None.
      jvp_tangents: ``[B, num_probes, K]`` the products ``J_T(x) u``, or None.
      attention: ``[B, H * W]`` the teacher's attention maps, or None.
      attention_gradients: ``[B, D]`` input gradient of each map at its peak, or None.
      fd_probes: ``[B, num_probes, ...]`` the finite differences' input probes, or None.
      fd_quotients: ``[B, num_probes, K]`` the teacher's central differences
        ``(T(x + h u) - T(x - h u)) / 2h``, or None.
      fingerprint: ``[B, 3]`` float32 :func:`fingerprint` of the batch ``x`` the targets
        were computed on, which the losses compare with their ``x``; None (targets built
        by hand) skips that comparison.
      outputs: the ``outputs`` mode of ``gradients`` (None: not computed).
      k: the ``k`` of ``outputs="top_k"``.
      projections: which of ``"vjp"``, ``"jvp"``, ``"fd"`` were computed.
      num_probes: probes per example of the projections.
      distribution: the probes' distribution.
      p: the exponent of the attention maps (None: not computed).
      eps: the floor of the attention maps' norms they were computed with.
      fd_step: the finite differences' relative step (None: not computed).
    """

    logits: jax.Array
    indices: jax.Array | None = None
    gradients: jax.Array | None = None
    key_data: jax.Array | None = None
    vjp_probes: jax.Array | None = None
    vjp_gradients: jax.Array | None = None
    jvp_probes: jax.Array | None = None
    jvp_tangents: jax.Array | None = None
    attention: jax.Array | None = None
    attention_gradients: jax.Array | None = None
    fingerprint: jax.Array | None = None
    outputs: str | None = None
    k: int = 1
    projections: tuple[str, ...] = ()
    num_probes: int = 1
    distribution: str = "rademacher"
    p: float | None = None
    eps: float = _common.DEFAULT_EPS
    fd_probes: jax.Array | None = None
    fd_quotients: jax.Array | None = None
    fd_step: float | None = None


def batch_first(a: jax.Array) -> jax.Array:
    """``[n, B, ...]`` -> ``[B, n, ...]`` (and back: the swap is its own inverse)."""
    return jnp.swapaxes(a, 0, 1)


def _batched_like(a: jax.Array, ref: jax.Array) -> jax.Array:
    """``a`` ``[B, ...]`` given the sharding of ``ref`` ``[B, ...]``'s batch axis.

    Arrays built from shapes alone (the indices of ``outputs="all"``, the key's data)
    carry no sharding under an ``Explicit``-axis mesh; adding zeros taken from ``ref``
    gives them the batch's, so that every leaf of the targets is sharded alike.
    """
    zeros = jnp.zeros_like(ref[(slice(None),) + (0,) * (ref.ndim - 1)], dtype=a.dtype)
    return a + zeros[(slice(None),) + (None,) * (a.ndim - 1)]


def _signs(size: int) -> jax.Array:
    """``[size]`` fixed pseudo-random signs +-1.0 (float32), the same on every device.

    A 32-bit integer hash of the position (multiplications and shifts of ``uint32``, exact
    on every backend), its top bit read as the sign.
    """
    h = jnp.arange(size, dtype=jnp.uint32)
    h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
    h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
    h = h ^ (h >> 16)
    return 1.0 - 2.0 * (h >> 31).astype(jnp.float32)


def fingerprint(x: jax.Array) -> jax.Array:
    """``[B, 3]`` a cheap summary of each example of ``x`` ``[B, ...]``, in float32.

    The sums over the example of ``x``, ``x**2`` and ``s * x`` for fixed signs ``s``
    (:func:`_signs`): two batches that differ in an example almost surely differ in its
    row, also when they hold the same values in another order (a flipped or shifted
    image keeps the first two sums, not the third). Three reductions of ``x``: a
    fraction of one network pass. How two fingerprints are compared (the round-off
    they may differ by) is ``same_batch`` in ``jaxkd/losses/_contract.py``.
    """
    flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
    return jax.lax.stop_gradient(jnp.stack(
        [jnp.sum(flat, axis=-1), jnp.sum(flat * flat, axis=-1),
         jnp.sum(flat * _signs(flat.shape[-1])[None], axis=-1)], axis=-1))


def check_outputs_mode(x: jax.Array, labels: Any, outputs: str, k: int) -> None:
    """``outputs`` is a mode, with its ``labels`` (for ``"label"``) or ``k`` (``"top_k"``)."""
    _checks.check_choice("outputs", outputs, OUTPUT_MODES)
    if outputs == "label":
        if labels is None:
            raise ValueError('`outputs="label"` needs `labels` ([batch_size] integer class '
                             'indices); got labels=None.')
        check_labels(x, labels)
    if outputs == "top_k":
        _checks.check_count("k", k)


def check_labels(x: jax.Array, labels: Any) -> None:
    """``labels`` ``[batch_size]`` integer, one per example of ``x``."""
    _checks.check_integer("labels", labels)
    _checks.check_rank("labels", labels, 1, "[batch_size]")
    if jnp.shape(labels)[0] != x.shape[0]:
        raise ValueError(f"`labels` must have shape [{x.shape[0]}] to match `x` of shape "
                         f"{x.shape}, got {jnp.shape(labels)}.")


def check_classes(labels: Any, outputs: str, k: int, num_classes: int) -> None:
    """``k <= K`` for ``"top_k"``; concrete labels in ``[0, K)`` for ``"label"``."""
    if outputs == "top_k" and k > num_classes:
        raise ValueError(f"`k` must be <= the number of classes K={num_classes}, got k={k}.")
    if outputs == "label" and _checks.is_concrete(labels):
        # Concrete labels are checked here; traced ones (under jit) give NaN rows.
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"`labels` must be class indices in [0, {num_classes}), got "
                             f"values from {values.min()} to {values.max()}.")


def output_indices(teacher_out: jax.Array, labels: Any, outputs: str, k: int) -> jax.Array:
    """``[n, B]`` indices of the outputs to match, chosen from the teacher (or labels)."""
    batch, num_classes = teacher_out.shape
    if outputs == "teacher_top1":
        return jnp.argmax(teacher_out, axis=-1)[None]
    if outputs == "label":
        return jnp.asarray(labels)[None]
    if outputs == "top_k":
        return jax.lax.top_k(teacher_out, k)[1].T
    return jnp.broadcast_to(jnp.arange(num_classes)[:, None], (num_classes, batch))


def one_hot_rows(index: jax.Array, ref: jax.Array) -> jax.Array:
    """``[n, B, K]`` one-hot rows of ``index`` ``[n, B]``, with ``ref`` ``[B, K]``'s dtype
    and sharding (:func:`_common.like`)."""
    return _common.like(jax.nn.one_hot(index, ref.shape[-1], dtype=ref.dtype), ref)


def selected_gradients(teacher_fn: Fn, x: jax.Array, labels: Any, outputs: str,
                       k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(teacher_fn(x) [B, K], indices [n, B], gradients [n, B, D])`` of the selected
    outputs: one VJP of the teacher, applied to each one-hot row."""
    out, vjp = jax.vjp(teacher_fn, x)
    index = output_indices(jax.lax.stop_gradient(out), labels, outputs, k)
    g_t = _common.flat_rows(_common.rows_of_vjp(vjp, one_hot_rows(index, out)))
    return jax.lax.stop_gradient(out), index, jax.lax.stop_gradient(g_t)


def vjp_rows(teacher_fn: Fn, x: jax.Array, v: jax.Array) -> jax.Array:
    """``[n, B, D]`` the products ``v_j^T J_T(x)``, probes cast to the output's dtype."""
    out, vjp = jax.vjp(teacher_fn, x)
    g_t = _common.rows_of_vjp(vjp, _common.like(v.astype(out.dtype), out))
    return jax.lax.stop_gradient(_common.flat_rows(g_t))


def jvp_rows(teacher_fn: Fn, x: jax.Array, u: jax.Array) -> jax.Array:
    """``[n, B, K]`` the products ``J_T(x) u_j`` (forward mode)."""
    return jax.lax.stop_gradient(_checks.widen(_common.tangents(teacher_fn, x,
                                                                _common.like(u, x))))


def attention_rows(feature_fn: Fn, x: jax.Array, p: float,
                   eps: float) -> tuple[jax.Array, jax.Array]:
    """``(Q [B, H*W], g [B, D])``: the attention maps and, not normalised, the input
    gradient of each map's value at its peak."""
    q, vjp = jax.vjp(lambda y: _common.attention_map(feature_fn(y), p=p, eps=eps), x)
    (g,) = vjp(peak_cotangent(q))
    return jax.lax.stop_gradient(q), jax.lax.stop_gradient(_checks.widen(g).reshape(
        x.shape[0], -1))


def peak_cotangent(q: jax.Array) -> jax.Array:
    """``[B, H*W]`` one-hot at each map's largest value (the teacher's peak)."""
    peak = jnp.argmax(jax.lax.stop_gradient(q), axis=-1)
    return _common.like(jax.nn.one_hot(peak, q.shape[-1], dtype=q.dtype)[None], q)[0]


def raw_key_data(key: jax.Array) -> jax.Array:
    """The uint32 data of ``key`` (a typed key or a legacy uint32 key array)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return jnp.asarray(key)


def teacher_targets(teacher_fn: Fn,
                    x: jax.typing.ArrayLike,
                    *,
                    labels: jax.typing.ArrayLike | None = None,
                    outputs: OutputMode | None = "teacher_top1",
                    k: int = 1,
                    projections: Sequence[Projection] = (),
                    key: jax.Array | None = None,
                    num_probes: int = 1,
                    distribution: _common.Distribution = "rademacher",
                    teacher_feature_fn: Fn | None = None,
                    p: float = 2.0,
                    eps: float = _common.DEFAULT_EPS,
                    step: float | None = None) -> TeacherTargets:
    r"""The teacher's part of the losses on a batch, computed once.

    Every Jacobian loss spends a teacher forward and backward pass per call. The
    teacher's part does not depend on the student: compute it once with this function
    (over a fixed data set, on another machine, once for several students), then pass
    the :class:`TeacherTargets` in ``teacher_fn``'s place (``teacher_feature_fn``'s for
    :func:`attention_jacobian_loss`). The loss then runs only the student's part, and
    gives the value and the student gradients of the loss given ``teacher_fn``, up to
    float round-off.

    What is computed:

    * always: ``logits = teacher_fn(x)`` (e.g. for :func:`distillation_loss`);
    * ``outputs`` (not None): the input gradients of the selected outputs, chosen as
      :func:`jacobian_matching_loss` chooses them (``labels`` for ``"label"``, ``k`` for
      ``"top_k"``), not normalised, so they serve ``normalize=True`` and ``False``;
    * ``projections``: for ``"vjp"`` and/or ``"jvp"``, the probes drawn from ``key``
      exactly as :func:`vjp_projection_loss` / :func:`jvp_projection_loss` draw them with
      the same ``key``, ``num_probes`` and ``distribution``, and the teacher's products;
      for ``"fd"``, :func:`finite_difference_loss`'s probes (the JVP's) and the teacher's
      central differences with relative ``step`` (None: the teacher's default);
    * ``teacher_feature_fn`` (not None): the attention maps (exponent ``p``) and their
      input gradients at the peak, for :func:`attention_jacobian_loss`.

    The contract: the loss must be called with the options the targets were computed
    with, on the batch they were computed on, else it raises ``ValueError`` naming
    both values: ``outputs`` (and ``k`` for
    ``"top_k"``; ``labels`` for ``"label"``, which the loss may omit: given and
    concrete they must equal the targets', traced ones that differ give NaN rows);
    ``num_probes`` and ``distribution`` for the projections; ``p`` for attention. A
    projection loss takes its probes from the targets: call it with ``key=None`` or the
    targets' key; a concrete ``key`` that differs is an error, a traced one (inside
    ``jit``) makes the loss NaN in every row. The batch: the targets hold a
    :func:`fingerprint` of ``x``, and a loss given another ``x`` of the same shape
    raises ``ValueError`` naming ``x`` and the rows that differ (concrete), or gives NaN
    in those rows (traced); the same ``x`` recomputed always matches (the comparison
    allows the float32 round-off of the sums, see
    ``same_batch`` in ``jaxkd/losses/_contract.py``). What no check can see: targets of
    *another teacher* on the same ``x``, whose arrays have the same shapes (targets do
    not identify their teacher). The noise expansions take
    targets of ``outputs="all"`` with ``curvature="none"`` (their Laplacian terms need the
    teacher's Hessian traces); :func:`noisy_distillation_loss` needs the teacher at noisy
    inputs: both refuse what they cannot use with a ``TypeError`` that says why.

    Targets precomputed over a data set fix the probes of each example (one draw, reused
    every epoch) where the loss given ``teacher_fn`` and a per-step key draws new ones:
    still unbiased per step, but the draws no longer average out over training.

    Mixed precision: gradients and products are stored in float32 for bfloat16 teachers
    (as the losses compute them); ``logits`` keep the teacher's dtype.

    Args:
      teacher_fn: pure ``[B, ...] -> [B, K]`` teacher, examples independent.
      x: ``[batch_size, ...]`` floating inputs.
      labels: ``[batch_size]`` integer classes; required for ``outputs="label"``.
      outputs: ``"teacher_top1"``, ``"label"``, ``"top_k"``, ``"all"``, or None for no
        input gradients.
      k: number of teacher outputs for ``outputs="top_k"``.
      projections: any of ``"vjp"``, ``"jvp"``, ``"fd"``.
      key: a ``jax.random.key`` for the probes; required with ``projections``.
      num_probes: probes per example of the projections.
      distribution: ``"rademacher"``, ``"gaussian"`` or ``"orthogonal"``.
      teacher_feature_fn: pure ``[B, ...] -> [B, H, W, C]`` teacher feature map, or None.
      p: exponent of the attention maps.
      eps: floor of the attention maps' norms.
      step: the relative step of ``"fd"`` (see :func:`finite_difference_loss`).

    Returns:
      A :class:`TeacherTargets` whose arrays all have ``batch_size`` as leading axis.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxkd.losses import jacobian_matching_loss, teacher_targets
      >>> teacher = lambda x: jnp.stack([x[:, 0] + x[:, 1], -x[:, 0]], axis=-1)
      >>> student = lambda x: jnp.stack([2.0 * x[:, 0], -x[:, 0]], axis=-1)
      >>> x = jnp.ones((1, 2))
      >>> targets = teacher_targets(teacher, x)  # once
      >>> targets.logits.shape, targets.gradients.shape  # [B, K], [B, n, D]
      ((1, 2), (1, 1, 2))
      >>> print(jacobian_matching_loss(student, targets, x).round(4))  # as with `teacher`
      [0.5858]
      >>> jacobian_matching_loss(student, targets, x, outputs="all")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ValueError: `outputs`: the loss was called with outputs='all' but `targets` were ...
    """
    x = _checks.check_network_loss(x, {"teacher_fn": teacher_fn})
    teacher_out = jax.eval_shape(teacher_fn, x)
    _checks.check_function_output("teacher_fn", teacher_out)
    _checks.check_logits("teacher_fn(x)", teacher_out)
    if teacher_out.shape[0] != x.shape[0]:
        raise ValueError(f"`teacher_fn` must map a batch `x` of shape {x.shape} to "
                         f"[{x.shape[0]}, K] outputs (one row per example), got shape "
                         f"{teacher_out.shape}.")
    if outputs is not None:
        check_outputs_mode(x, labels, outputs, k)
        check_classes(labels, outputs, k, teacher_out.shape[-1])
    chosen: tuple[str, ...] = ((projections,) if isinstance(projections, str)
                               else tuple(projections))
    for name in chosen:
        _checks.check_choice("projections", name, PROJECTIONS)
    probe_key = None
    if chosen:
        probe_key = _checks.check_key("key", key)
        _checks.check_count("num_probes", num_probes)
        _checks.check_choice("distribution", distribution, _common.DISTRIBUTIONS)
    elif key is not None:
        raise ValueError("`key` draws the probes of `projections`, which is empty: pass "
                         "projections=('vjp',), ('jvp',), ('fd',) or several, or no key.")
    if teacher_feature_fn is not None:
        _checks.check_function("teacher_feature_fn", teacher_feature_fn, "x -> [B, H, W, C]")
        maps = jax.eval_shape(teacher_feature_fn, x)
        _checks.check_function_output("teacher_feature_fn", maps, "[B, H, W, C]")
        _checks.check_rank("teacher_feature_fn(x)", maps, 4, "[batch_size, height, width, "
                           "channels]")
        _checks.check_finite_positive("p", p)
    _checks.check_finite_positive("eps", eps)

    fields: dict[str, Any] = {}
    if outputs is not None:
        logits, index, g_t = selected_gradients(teacher_fn, x, labels, outputs, k)
        fields.update(indices=_batched_like(batch_first(index), logits),
                      gradients=batch_first(g_t))
    else:
        logits = jax.lax.stop_gradient(teacher_fn(x))
    if probe_key is not None:
        data = raw_key_data(probe_key)
        fields["key_data"] = _batched_like(jnp.broadcast_to(data, x.shape[:1] + data.shape),
                                           logits)
        if "vjp" in chosen:
            v = _common.sample_probes(probe_key, teacher_out.shape, num_probes, distribution,
                                      _checks.wide_dtype(teacher_out.dtype))
            fields.update(vjp_probes=batch_first(_common.like(v, logits.astype(v.dtype))),
                          vjp_gradients=batch_first(vjp_rows(teacher_fn, x, v)))
        if "jvp" in chosen:
            u = _common.sample_probes(probe_key, x.shape, num_probes, distribution, x.dtype)
            fields.update(jvp_probes=batch_first(_common.like(u, x)),
                          jvp_tangents=batch_first(jvp_rows(teacher_fn, x, u)))
        if "fd" in chosen:
            fields.update(_differences.teacher_fields(teacher_fn, x, probe_key, num_probes,
                                                      distribution, step))
    if teacher_feature_fn is not None:
        q_t, g_q = attention_rows(teacher_feature_fn, x, p, eps)
        fields.update(attention=q_t, attention_gradients=g_q)
    return TeacherTargets(logits=logits, **fields, fingerprint=fingerprint(x),
                          outputs=outputs, k=k, projections=chosen, num_probes=num_probes,
                          distribution=distribution,
                          p=None if teacher_feature_fn is None else float(p),
                          eps=float(eps))


def refuse(loss: str, argument: str, why: str,
           instead: str = "Pass the teacher as a function.") -> TypeError:
    """The error of a loss that cannot take :class:`TeacherTargets`, saying why."""
    return TypeError(f"{loss} does not take TeacherTargets as `{argument}`: {why} {instead}")
