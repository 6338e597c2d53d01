"""A small convolutional network without BatchNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkd.models._base import Classifier, Features, check_input, max_pool_if_room


class SmallCNN(Classifier):
    """Two conv-ReLU-pool blocks and a two-layer head (LeNet-like, no BatchNorm).

    Without BatchNorm the network is the same function in train and inference mode,
    which makes it the simplest student for Jacobian experiments on 8x8 digits.

    Taps: ``block1``, ``block2`` (post-ReLU, before pooling).

    Args:
      in_channels: input channels ``C``.
      num_classes: number of logits ``K``.
      width: channels of the first block (the second has ``2 * width``).
      hidden: width of the hidden dense layer.
    """

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 32,
                 hidden: int = 128, rngs: nnx.Rngs):
        self.in_channels = in_channels
        self.conv1 = nnx.Conv(in_channels, width, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), padding="SAME", rngs=rngs)
        self.dense = nnx.Linear(2 * width, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def forward(self, x: jax.Array) -> tuple[jax.Array, Features]:
        check_input(x, self.in_channels, "SmallCNN")
        f1 = jax.nn.relu(self.conv1(x))
        f2 = jax.nn.relu(self.conv2(max_pool_if_room(f1)))
        h = jnp.mean(max_pool_if_room(f2), axis=(1, 2))
        h = jax.nn.relu(self.dense(h))
        return self.head(h), {"block1": f1, "block2": f2}
