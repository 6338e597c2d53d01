"""Model -> pure functions: the bridge from Flax NNX modules to the losses.

The losses take pure functions ``x [B, ...] -> logits [B, K]`` that treat examples
independently. An NNX model is split once into ``(graphdef, params, rest)``:
``params`` are the trainable ``nnx.Param`` leaves (what gets differentiated and
optimised), ``rest`` is everything else (BatchNorm running statistics). The helpers
below merge them back inside the function, so the result is pure in ``params`` and can
be passed to ``jax.jvp`` / ``jax.vjp`` / ``jax.grad``.

BatchNorm policy: :func:`logits_fn`, :func:`features_fn` and :func:`feature_fn` run in
inference mode (running statistics). That makes every example's output, and hence its
input Jacobian, a function of that example alone; a train-mode (batch-statistics)
forward would couple the examples of a batch and make "the Jacobian of example i"
depend on the batch it sits in. Only :func:`apply` with ``train=True`` uses batch
statistics; it returns the updated running statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

import jax
from flax import nnx

from jaxkd.models._base import Features

# The module type a graphdef rebuilds: a model split from a ``Classifier`` merges back
# into one (and so has ``features``).
M = TypeVar("M", bound=nnx.Module)


class Split(NamedTuple):
    """A model as data: static ``graphdef``, trainable ``params``, other state ``rest``."""
    graphdef: nnx.GraphDef
    params: nnx.State
    rest: nnx.State


def split(model: nnx.Module) -> Split:
    """Splits ``model`` into ``Split(graphdef, params, rest)`` (``rest``: BatchNorm stats)."""
    # Two filters, two states: the trainable leaves and everything else (``...``).
    graphdef, params, *others = nnx.split(model, nnx.Param, ...)
    (rest,) = others
    return Split(graphdef, params, rest)


def merge(graphdef: nnx.GraphDef[M], params: nnx.State, rest: nnx.State, *,
          train: bool = False) -> M:
    """Rebuilds the model in train (batch statistics) or inference (running stats) mode."""
    # copy=True: the merged model owns fresh Variables, so a train-mode pass never
    # mutates the caller's ``rest`` (NNX merge shares Variables by default).
    model = nnx.merge(graphdef, params, rest, copy=True)
    model.set_attributes(use_running_average=not train, deterministic=not train,
                         raise_if_not_found=False)
    return model


def apply(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, x: jax.Array, *,
          train: bool = False) -> tuple[jax.Array, Features, nnx.State]:
    """One forward pass: ``(logits [B, K], features {name: [B, H, W, C]}, new_rest)``.

    With ``train=True`` BatchNorm normalises with the batch statistics and ``new_rest``
    holds the updated running statistics; with ``train=False`` ``new_rest`` is ``rest``.
    """
    model = merge(graphdef, params, rest, train=train)
    logits, features = model(x, return_features=True)
    return logits, features, nnx.state(model, nnx.Not(nnx.Param))


def logits_fn(graphdef: nnx.GraphDef, params: nnx.State,
              rest: nnx.State) -> Callable[[jax.Array], jax.Array]:
    """The pure inference-mode function ``x [B, ...] -> logits [B, K]``.

    Example::

      student_fn = logits_fn(*split(model))
      jax.jvp(student_fn, (x,), (u,))
    """
    def fn(x: jax.Array) -> jax.Array:
        return merge(graphdef, params, rest)(x)
    return fn


def features_fn(graphdef: nnx.GraphDef, params: nnx.State,
                rest: nnx.State) -> Callable[[jax.Array], Features]:
    """The pure inference-mode function ``x -> {name: [B, H, W, C]}``."""
    def fn(x: jax.Array) -> Features:
        return merge(graphdef, params, rest).features(x)
    return fn


def feature_fn(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
               name: str) -> Callable[[jax.Array], jax.Array]:
    """The pure inference-mode function ``x -> features[name]`` (``[B, H, W, C]``)."""
    def fn(x: jax.Array) -> jax.Array:
        features = merge(graphdef, params, rest).features(x)
        if name not in features:
            raise KeyError(f"model has no feature tap {name!r}; taps: {sorted(features)}.")
        return features[name]
    return fn
