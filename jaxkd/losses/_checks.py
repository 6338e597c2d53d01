"""Trace-time argument checks shared by every loss.

Every check runs on static information (shapes, dtypes, Python scalars), so it costs
nothing under ``jax.jit`` and raises before XLA sees the program. Messages name the
argument and what was expected, in the style of optax's losses.
"""

from __future__ import annotations

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


def check_logits(name: str, logits: jax.typing.ArrayLike) -> None:
    check_floating(name, logits)
    check_rank(name, logits, 2, "[batch_size, num_classes]")


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


def check_positive(name: str, value: Any) -> None:
    if is_concrete(value) and not np.all(np.asarray(value) > 0):
        raise ValueError(f"`{name}` must be > 0, got {value}.")


def check_count(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")


def check_key(name: str, key: Any) -> None:
    if key is None:
        raise ValueError(f"`{name}` is required: pass a jax.random.key.")


def check_finite_positive(name: str, value: Any) -> None:
    """A concrete ``value`` must be finite and > 0 (a noise scale: inf or nan is no scale)."""
    if is_concrete(value):
        values = np.asarray(value)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"`{name}` must be finite and > 0, got {value}.")
    check_positive(name, value)


def check_remat_chunks(remat_chunks: Any) -> None:
    if remat_chunks is None:
        return
    if (not isinstance(remat_chunks, int) or isinstance(remat_chunks, bool)
            or remat_chunks < 1):
        raise ValueError(f"`remat_chunks` must be None (no rematerialisation) or an integer "
                         f">= 1 (the number of slices of the batch), got {remat_chunks!r}.")


def check_batch(x: Any, name: str = "x") -> jax.Array:
    """``x`` as an array ``[batch_size, ...]``: floating, rank >= 2, at least one example."""
    x = as_array(name, x)
    check_floating(name, x)
    check_min_rank(name, x, 2, "[batch_size, ...]")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` has an empty batch (shape {x.shape}): the losses need at "
                         f"least one example.")
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
