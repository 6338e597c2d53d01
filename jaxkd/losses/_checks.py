"""Trace-time argument checks shared by every loss.

Every check runs on static information (shapes, dtypes, Python scalars), so it costs
nothing under ``jax.jit`` and raises before XLA sees the program. Messages name the
argument and what was expected, in the style of optax's losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(value: Any) -> bool:
    """True when ``value`` is known at trace time (a Python or NumPy number)."""
    return not isinstance(value, jax.core.Tracer)


def check_floating(name: str, x: jax.typing.ArrayLike) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype (float32 or float64), got {dtype}.")


def check_integer(name: str, x: jax.typing.ArrayLike) -> None:
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
