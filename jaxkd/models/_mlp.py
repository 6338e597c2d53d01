"""Multi-layer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkd.models._base import Classifier, Features


class MLP(Classifier):
    """Fully connected ReLU network on flattened inputs.

    Taps ``hidden{i}`` (1-based) are the post-ReLU activations, shaped
    ``[B, 1, 1, width]`` so every model's taps are NHWC (attention on a 1x1 map is
    constant: the MLP is for Jacobian and logit matching, not attention transfer).

    Args:
      in_features: flattened input size (e.g. 64 for 8x8x1 digits).
      num_classes: number of logits ``K``.
      hidden: widths of the hidden layers.
      activation: elementwise non-linearity (``jax.nn.relu``; pass ``jax.nn.tanh`` or
        ``jax.nn.softplus`` for a smooth network).
    """

    def __init__(self, in_features: int, num_classes: int, *,
                 hidden: Sequence[int] = (128, 128), activation=jax.nn.relu,
                 rngs: nnx.Rngs):
        widths = (in_features, *hidden)
        self.in_features = in_features
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                                for a, b in zip(widths[:-1], widths[1:])])
        self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)
        self.activation = activation

    def forward(self, x: jax.Array) -> tuple[jax.Array, Features]:
        h = jnp.reshape(x, (x.shape[0], -1))
        if h.shape[-1] != self.in_features:
            raise ValueError(f"MLP expects {self.in_features} input features per example, got "
                             f"input shape {tuple(x.shape)}.")
        features = {}
        for i, layer in enumerate(self.layers):
            h = self.activation(layer(h))
            features[f"hidden{i + 1}"] = h[:, None, None, :]
        return self.head(h), features
