"""Trace-time argument checks shared by every loss.

Every check runs on static information (shapes, dtypes, Python scalars), so it costs
nothing under ``jax.jit`` and raises before XLA sees the program. Messages name the
argument and what was expected, in the style of optax's losses.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(value: Any) -> bool:
    """True when ``value`` is known at trace time (a Python or NumPy number)."""
    return not isinstance(value, jax.core.Tracer)


# What the losses accept as an array argument: arrays, tracers, NumPy and Python scalars,
# and the ShapeDtypeStructs of jax.eval_shape. Lists and tuples are not arrays (as in
# jax.numpy, which refuses them too): they get a TypeError naming the argument.
_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct, int, float)


def describe(value: Any) -> str:
    """A short description of ``value`` for an error message (never its contents)."""
    if isinstance(value, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def check_array(name: str, x: Any) -> None:
    if not isinstance(x, _ARRAY_TYPES):
        hint = " (convert it with jnp.asarray)" if isinstance(x, (list, tuple)) else ""
        raise TypeError(f"`{name}`: expected an array, got {type(x).__name__}{hint}.")


def as_array(name: str, x: Any) -> jax.Array:
    """``jnp.asarray(x)`` after :func:`check_array`."""
    check_array(name, x)
    return jnp.asarray(x)


def check_function(name: str, fn: Any, signature: str = "x -> [B, K]") -> None:
    """``fn`` must be callable: the network as a pure function, not its output."""
    if not callable(fn):
        raise TypeError(f"`{name}` must be a function {signature} (the network as a pure "
                        f"function of the batch, e.g. `lambda x: model.apply(params, x)`), "
                        f"got {describe(fn)}.")


def check_function_output(name: str, out: Any, layout: str = "[B, K]") -> None:
    """``out = fn(x)`` must be one array (not a dict, tuple or other pytree)."""
    if not isinstance(out, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
        raise TypeError(f"`{name}` must return one array {layout}, got {describe(out)}.")


def wide_dtype(dtype: Any) -> np.dtype:
    """The dtype the losses compute in: ``dtype`` promoted to at least float32.

    bfloat16 and float16 network outputs and input gradients are upcast before any
    normalisation, softmax or reduction; float32 and float64 are kept.
    """
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


def widen(x: jax.Array) -> jax.Array:
    """``x`` in :func:`wide_dtype` (a no-op for float32 and float64)."""
    return x.astype(wide_dtype(x.dtype))


def widened(fn: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """``fn`` with its output upcast by :func:`widen` (the network itself is unchanged)."""
    return lambda x: widen(fn(x))


def check_floating(name: str, x: jax.typing.ArrayLike) -> None:
    check_array(name, x)
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype (e.g. float32, bfloat16), "
                        f"got {dtype}.")


def check_integer(name: str, x: jax.typing.ArrayLike) -> None:
    check_array(name, x)
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"`{name}` must have an integer dtype (class indices), got {dtype}.")


def check_rank(name: str, x: jax.typing.ArrayLike, rank: int, layout: str) -> None:
    shape = np.shape(x)
    if len(shape) != rank:
        raise ValueError(f"`{name}` must have rank {rank} ({layout}), got shape {shape}.")


def check_min_rank(name: str, x: jax.typing.ArrayLike, rank: int, layout: str) -> None:
    shape = np.shape(x)
    if len(shape) < rank:
        raise ValueError(f"`{name}` must have rank >= {rank} ({layout}), got shape {shape}.")


def check_same_shape(name_a: str, a: jax.typing.ArrayLike,
                     name_b: str, b: jax.typing.ArrayLike) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"`{name_a}` and `{name_b}` must have the same shape, got "
                         f"{np.shape(a)} and {np.shape(b)}.")


def check_not_empty(name: str, x: jax.typing.ArrayLike) -> None:
    """``x`` ``[batch_size, ...]`` must hold at least one example."""
    shape = np.shape(x)
    if shape and shape[0] == 0:
        raise ValueError(f"`{name}` has an empty batch (shape {shape}): the losses need at "
                         f"least one example.")


def check_logits(name: str, logits: jax.typing.ArrayLike) -> None:
    """``logits`` ``[batch_size, num_classes]``, floating, at least one example."""
    check_floating(name, logits)
    check_rank(name, logits, 2, "[batch_size, num_classes]")
    check_not_empty(name, logits)


def check_logit_pair(student_logits: jax.typing.ArrayLike,
                     teacher_logits: jax.typing.ArrayLike,
                     student_name: str = "student_logits",
                     teacher_name: str = "teacher_logits") -> None:
    check_logits(student_name, student_logits)
    check_logits(teacher_name, teacher_logits)
    s, t = np.shape(student_logits), np.shape(teacher_logits)
    if s[0] != t[0]:
        raise ValueError(f"`{student_name}` and `{teacher_name}` must have the same batch size, "
                         f"got shapes {s} and {t}.")
    if s[1] != t[1]:
        raise ValueError(f"`{student_name}` and `{teacher_name}` must have the same number of "
                         f"classes K, got shapes {s} and {t}.")


def check_network_outputs(x: jax.Array, student_out: jax.Array, teacher_out: jax.Array) -> None:
    """Checks the outputs of ``student_fn(x)`` and ``teacher_fn(x)``: ``[B, K]`` each."""
    check_function_output("student_fn", student_out)
    check_function_output("teacher_fn", teacher_out)
    check_logit_pair(student_out, teacher_out, "student_fn(x)", "teacher_fn(x)")
    if student_out.shape[0] != x.shape[0]:
        raise ValueError(f"`student_fn` must map a batch `x` of shape {x.shape} to "
                         f"[{x.shape[0]}, K] outputs (one row per example), got shape "
                         f"{student_out.shape}.")


def _is_real_array(value: Any) -> bool:
    """An array (or tracer) of a real, non-boolean dtype."""
    if not isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return False
    dtype = jnp.result_type(value)
    return bool(jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))


def check_real(name: str, value: Any) -> None:
    """``value`` must be a real number (a Python or NumPy number, or a real array; a
    traced one under ``jit`` too), not a bool, a string or None."""
    if isinstance(value, (bool, np.bool_)) or not (
            isinstance(value, numbers.Real) or _is_real_array(value)):
        raise TypeError(f"`{name}` must be a real number, got {describe(value)}"
                        f"{f' {value!r}' if isinstance(value, (str, bool)) else ''}.")


def check_positive(name: str, value: Any) -> None:
    """``value`` must be a real number, finite and > 0 when concrete (a temperature, an
    exponent, a floor, a noise scale: inf or nan is none of these)."""
    check_real(name, value)
    if is_concrete(value):
        values = np.asarray(value)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"`{name}` must be finite and > 0, got {value}.")
        if not np.all(values > 0):
            raise ValueError(f"`{name}` must be > 0, got {value}.")


# A noise scale: the same check, under the name its callers read.
check_finite_positive = check_positive


def check_count(name: str, value: Any) -> None:
    """``value`` must be a Python or NumPy integer >= 1 (it fixes a shape: never traced)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be an integer >= 1, got {describe(value)}"
                        f"{f' {value!r}' if isinstance(value, (str, bool, float)) else ''}.")
    if value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def check_flag(name: str, value: Any) -> None:
    """``value`` must be a bool (a string such as ``"False"`` would be true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {describe(value)} {value!r}.")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """``value`` must be one of the strings ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be one of {tuple(choices)} (a string), got "
                        f"{describe(value)}.")
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")


def check_key(name: str, key: Any) -> jax.Array:
    """``key`` must be a ``jax.random.key`` (or a legacy ``uint32`` key array); returns it."""
    if key is None:
        raise ValueError(f"`{name}` is required: pass a jax.random.key.")
    if isinstance(key, (jax.Array, np.ndarray)) and (
            jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.dtype == jnp.uint32):
        return jnp.asarray(key)
    raise TypeError(f"`{name}` must be a jax.random.key, got {describe(key)}.")


def check_remat_chunks(remat_chunks: Any) -> None:
    """``remat_chunks`` must be None or an integer >= 1."""
    if remat_chunks is None:
        return
    if not isinstance(remat_chunks, (int, np.integer)) or isinstance(remat_chunks, bool):
        raise TypeError(f"`remat_chunks` must be None (no rematerialisation) or an integer "
                        f">= 1, got {describe(remat_chunks)}.")
    if remat_chunks < 1:
        raise ValueError(f"`remat_chunks` must be None (no rematerialisation) or an integer "
                         f">= 1 (the number of slices of the batch), got {remat_chunks!r}.")


def check_batch(x: Any, name: str = "x") -> jax.Array:
    """``x`` as an array ``[batch_size, ...]``: floating, rank >= 2, at least one example."""
    x = as_array(name, x)
    check_floating(name, x)
    check_min_rank(name, x, 2, "[batch_size, ...]")
    check_not_empty(name, x)
    return x


_ABSENT = object()


def check_network_loss(x: Any, functions: dict[str, Any], *,
                       signature: str = "x -> [B, K]",
                       key: Any = _ABSENT,
                       num_probes: Any = _ABSENT,
                       remat_chunks: Any = None) -> jax.Array:
    """The checks every loss of networks starts with; returns ``x`` as an array.

    Args:
      x: the input batch: floating, ``[batch_size, ...]``, not empty.
      functions: ``{argument name: network}``; each must be callable (``signature``
        describes it in the message).
      signature: how the networks map ``x``, for the message.
      key: checked (required) when given.
      num_probes: checked (an integer >= 1) when given.
      remat_chunks: ``None`` or an integer >= 1.
    """
    for name, fn in functions.items():
        check_function(name, fn, signature)
    x = check_batch(x)
    if key is not _ABSENT:
        check_key("key", key)
    if num_probes is not _ABSENT:
        check_count("num_probes", num_probes)
    check_remat_chunks(remat_chunks)
    return x


def network_outputs(x: jax.Array, student_fn: Callable, teacher_fn: Callable
                    ) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """The shapes of ``student_fn(x)`` and ``teacher_fn(x)`` (no FLOPs), checked ``[B, K]``."""
    student_out = jax.eval_shape(student_fn, x)
    teacher_out = jax.eval_shape(teacher_fn, x)
    check_network_outputs(x, student_out, teacher_out)
    return student_out, teacher_out
