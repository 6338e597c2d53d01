"""What a loss checks of the :class:`TeacherTargets` it is given in the teacher's place.

Targets are the teacher's part of a loss on one batch, computed with some options
(:func:`teacher_targets`). A loss given them checks, before it runs, that it was called
with the same options and on the same batch: a concrete mismatch raises ``ValueError``
naming the argument. What cannot be compared before the program runs (a traced key or
batch inside ``jax.jit``) makes the loss NaN in the rows that differ
(:func:`nan_unless_same`), which the training loop's non-finite guard stops on.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses import _checks, _common
from jaxkd.losses._targets import (OUTPUT_MODES, TeacherTargets, batch_first, check_labels,
                                   fingerprint, raw_key_data)


def mismatch(option: str, called: Any, computed: Any) -> ValueError:
    return ValueError(f"`{option}`: the loss was called with {option}={called!r} but "
                      f"`targets` were computed with {option}={computed!r}; compute the "
                      f"targets with {option}={called!r}, or call the loss with "
                      f"{option}={computed!r}.")


def same_batch(stored: jax.Array, x: jax.Array) -> jax.Array:
    r"""``[B]`` whether each example of ``x`` is the one the fingerprint ``stored`` is of.

    ``stored`` and :func:`fingerprint` of ``x`` ``[B, ...]`` are float32 sums over the
    ``D`` values of each example: of ``x``, ``x**2`` and ``s x`` (signs ``s = +-1``). The
    same ``x`` summed in another order (another device, another sharding, another XLA
    fusion) gives other roundings: a float32 sum of ``D`` terms ``a_i`` is within
    ``gamma_{D-1} sum |a_i|`` of the exact sum, ``gamma_n = n eps / (1 - n eps)``
    (Higham, *Accuracy and Stability of Numerical Algorithms*, 4.2), whatever the order.
    Two such sums differ by at most ``2 gamma_{D-1} A``, with ``A = sum |x|`` for the
    sums of ``x`` and ``s x`` and ``A = sum x**2`` for the squares, so a row matches when
    each of its sums is within

    .. math:: \tau = 3\, D\, \epsilon_{32}\, A

    of the stored one: ``3 D eps`` bounds ``2 gamma_{D-1}`` with ``A`` itself computed in
    float32 while ``D eps <= 0.2`` (every image size in use: ``D eps = 0.018`` for
    224x224x3). The same ``x`` therefore always matches; another example matches only if
    its three sums agree with the stored ones to about ``D eps`` relative, which real
    data does not do by chance. Non-finite sums match when they are equal (or both NaN).
    """
    flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
    given = fingerprint(x)
    size = flat.shape[-1]
    abs_sum = jnp.sum(jnp.abs(flat), axis=-1)
    scale = jnp.stack([abs_sum, given[:, 1], abs_sum], axis=-1)
    tol = 3.0 * size * float(np.finfo(np.float32).eps) * scale
    stored = stored.astype(jnp.float32)
    close = ((given == stored) | (jnp.abs(given - stored) <= tol)
             | (jnp.isnan(given) & jnp.isnan(stored)))
    return jnp.all(close, axis=-1)


def _held(leaf: jax.Array | None, what: str, hint: str) -> jax.Array:
    """``leaf``, a field of targets, which must have been computed (not None)."""
    if leaf is None:
        raise ValueError(f"`targets` hold no {what}: compute them with {hint}.")
    return leaf


def _check_batch(targets: TeacherTargets, x: jax.Array) -> None:
    """``targets`` must be of the batch ``x``: its size, and (concrete) its examples."""
    if targets.logits.shape[0] != x.shape[0]:
        raise ValueError(f"`targets` were computed for a batch of {targets.logits.shape[0]} "
                         f"examples, `x` has {x.shape[0]} (shape {x.shape}).")
    stored = targets.fingerprint
    if stored is not None and _checks.is_concrete(x) and _checks.is_concrete(stored):
        with jax.ensure_compile_time_eval():  # concrete: computed now, also inside a jit
            rows = np.flatnonzero(~np.asarray(same_batch(stored, x)))
        if rows.size:
            raise ValueError(f"`x` is not the batch `targets` were computed on: examples "
                             f"{rows[:5].tolist()} ({rows.size} of {x.shape[0]}) differ "
                             f"(their sums of x, x**2 or a signed sum beyond float32 "
                             f"round-off); compute the targets on this `x`, or pass theirs.")


def _check_input_size(leaf: jax.Array, x: jax.Array, what: str) -> None:
    size = int(np.prod(x.shape[1:]))
    if leaf.shape[-1] != size:
        raise ValueError(f"`targets` hold {what} of inputs of size {leaf.shape[-1]}, `x` has "
                         f"examples of size {size} (shape {x.shape}).")


def for_jacobian(targets: TeacherTargets, x: jax.Array, labels: Any, outputs: str,
                 k: int) -> tuple[jax.Array, jax.Array]:
    """``(indices [n, B], gradients [n, B, D])`` of ``targets`` for
    :func:`jacobian_matching_loss`, after checking the contract."""
    _checks.check_choice("outputs", outputs, OUTPUT_MODES)
    hint = "teacher_targets(..., outputs=...)"
    gradients = _held(targets.gradients, "input gradients", hint)
    indices = _held(targets.indices, "output indices", hint)
    _check_batch(targets, x)
    if outputs != targets.outputs:
        raise mismatch("outputs", outputs, targets.outputs)
    if outputs == "top_k" and k != targets.k:
        raise mismatch("k", k, targets.k)
    _check_input_size(gradients, x, "input gradients")
    if outputs == "label" and labels is not None:
        check_labels(x, labels)
        if _checks.is_concrete(labels) and _checks.is_concrete(indices):
            given, stored = np.asarray(labels), np.asarray(indices)[:, 0]
            if not np.array_equal(given, stored):
                rows = np.flatnonzero(given != stored)
                raise ValueError(f"`labels` differ from those `targets` were computed with, "
                                 f"at rows {rows[:5].tolist()} (e.g. {given[rows[0]]} vs "
                                 f"{stored[rows[0]]}); pass labels=None to use the targets'.")
    return (jax.lax.stop_gradient(batch_first(indices)),
            jax.lax.stop_gradient(batch_first(gradients)))


def for_projection(targets: TeacherTargets, which: str, x: jax.Array, key: Any,
                   num_probes: int, distribution: str) -> tuple[jax.Array, jax.Array]:
    """``(probes [n, B, ...], teacher products [n, B, ...])`` of ``targets`` for the
    ``which`` (``"vjp"`` / ``"jvp"`` / ``"fd"``) projection loss, after checking the contract."""
    _checks.check_count("num_probes", num_probes)
    _checks.check_choice("distribution", distribution, _common.DISTRIBUTIONS)
    probes, products = {"vjp": (targets.vjp_probes, targets.vjp_gradients),
                        "jvp": (targets.jvp_probes, targets.jvp_tangents),
                        "fd": (targets.fd_probes, targets.fd_quotients)}[which]
    hint = f"teacher_targets(..., projections=({which!r},), key=...)"
    products = _held(products, f"{which.upper()} projections", hint)
    probes = _held(probes, f"{which.upper()} probes", hint)
    _check_batch(targets, x)
    if num_probes != targets.num_probes:
        raise mismatch("num_probes", num_probes, targets.num_probes)
    if distribution != targets.distribution:
        raise mismatch("distribution", distribution, targets.distribution)
    if which == "vjp":
        _check_input_size(products, x, "VJP projections")
    elif probes.shape[2:] != x.shape[1:]:
        raise ValueError(f"`targets` hold {which.upper()} probes of examples of shape "
                         f"{probes.shape[2:]}, `x` has examples of shape {x.shape[1:]}.")
    if key is not None:
        stored = _held(targets.key_data, "key data", hint)
        if _checks.is_concrete(key) and _checks.is_concrete(stored):
            given, first = np.asarray(raw_key_data(key)), np.asarray(stored[0])
            if given.shape != first.shape or not np.array_equal(given, first):
                raise ValueError(f"`key`: the loss was given a key (data {given.tolist()}) "
                                 f"that differs from the key `targets` drew their probes "
                                 f"with (data {first.tolist()}); with targets the loss "
                                 f"takes its probes from them: pass key=None.")
    return (jax.lax.stop_gradient(batch_first(probes)),
            jax.lax.stop_gradient(batch_first(products)))


def for_attention(targets: TeacherTargets, x: jax.Array, p: float,
                  eps: float = _common.DEFAULT_EPS) -> tuple[jax.Array, jax.Array]:
    """``(maps [B, H*W], gradients [B, D])`` of ``targets`` for
    :func:`attention_jacobian_loss`, after checking the contract."""
    hint = "teacher_targets(..., teacher_feature_fn=...)"
    gradients = _held(targets.attention_gradients, "attention gradients", hint)
    maps = _held(targets.attention, "attention maps", hint)
    _check_batch(targets, x)
    if float(p) != targets.p:
        raise mismatch("p", p, targets.p)
    if float(eps) != targets.eps:
        raise mismatch("eps", eps, targets.eps)
    _check_input_size(gradients, x, "attention gradients")
    return jax.lax.stop_gradient(maps), jax.lax.stop_gradient(gradients)


def nan_unless_same(targets: TeacherTargets, x: jax.Array, loss: jax.Array,
                    key: Any = None) -> jax.Array:
    """``loss`` ``[B]``, NaN in the rows that ``targets`` did not compute on ``x`` (or
    whose probes they drew with another key than ``key``; None: the targets' own).

    The checks of a loss given targets (:func:`for_jacobian`, :func:`for_projection`,
    :func:`for_attention`) raise on a concrete mismatch; a traced batch or key (a train
    step's, inside ``jit``) cannot be compared before the program runs, so its rows are
    made NaN here, which the training loop's non-finite guard stops on.
    """
    same = None
    stored = targets.fingerprint
    if stored is not None and not (_checks.is_concrete(x) and _checks.is_concrete(stored)):
        same = same_batch(stored, x)
    if key is not None and targets.key_data is not None:
        data = targets.key_data.reshape(targets.key_data.shape[0], -1)
        same_key = jnp.all(data == raw_key_data(key).reshape(1, -1), axis=1)
        same = same_key if same is None else same & same_key
    return loss if same is None else jnp.where(same, loss, jnp.nan)
