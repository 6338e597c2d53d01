"""VGG-style teacher (VGG-9) and student (VGG-4) of the distillation experiment.

The paper (Srinivas & Fleuret 2018) names a VGG-9 teacher and a VGG-4 student on
CIFAR-100 but does not publish their layers. Our plans count weight layers as VGG does
(convolutions plus the classifier), with BatchNorm after every convolution:

  VGG-9: [w, w] pool [2w, 2w] pool [4w, 4w] pool [8w, 8w] gap fc   (8 conv + 1 fc)
  VGG-4: [w]    pool [2w]     pool [4w]                gap fc   (3 conv + 1 fc)

with ``w = 64`` by default (the CIFAR VGG widths 64-128-256-512). Why this plan: the
student is the teacher's first three stages with one convolution each, so it has the
teacher's resolution schedule at a fraction of the cost (at w = 64, 100 classes,
32x32: 0.40M vs 4.74M parameters, 40M vs 209M multiply-adds per image), and the
taps ``block1..3`` of both networks have the same spatial size, which is what
attention transfer needs. A global-average-pooled single linear
classifier (instead of VGG's 4096-wide FC stack) keeps the parameter count small for
100 classes and makes the models input-size agnostic: with the pool rule of
:func:`jaxkd.models._base.max_pool_if_room` the same plans run on 8x8 digits
(pools that would go below 2x2 are skipped).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from jaxkd.models._base import (Classifier, ConvBN, Features, check_input,
                                global_avg_pool, max_pool_if_room)

VGG9_PLAN: tuple[tuple[int, ...], ...] = ((1, 1), (2, 2), (4, 4), (8, 8))
VGG4_PLAN: tuple[tuple[int, ...], ...] = ((1,), (2,), (4,))


class VGG(Classifier):
    """A VGG network given by a plan of blocks of 3x3 conv-BN-ReLU layers.

    Each block is a tuple of channel multipliers of ``width``; a 2x2 max-pool follows
    every block but the last (skipped when the map is smaller than 4x4), then global
    average pooling and one linear layer.

    Taps: ``block{i}`` (1-based), the output of block ``i`` before its pool.

    Args:
      in_channels: input channels ``C``.
      num_classes: number of logits ``K``.
      plan: blocks of channel multipliers, e.g. :data:`VGG9_PLAN`.
      width: base width ``w`` (64 for the paper-scale models; 4 in tests).
    """

    def __init__(self, in_channels: int, num_classes: int, *,
                 plan: Sequence[Sequence[int]], width: int = 64, rngs: nnx.Rngs):
        self.in_channels = in_channels
        blocks = []
        cin = in_channels
        for block in plan:
            layers = []
            for mult in block:
                layers.append(ConvBN(cin, mult * width, rngs=rngs))
                cin = mult * width
            blocks.append(nnx.List(layers))
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, num_classes, rngs=rngs)

    def forward(self, x: jax.Array) -> tuple[jax.Array, Features]:
        check_input(x, self.in_channels, type(self).__name__)
        features = {}
        h = x
        for i, block in enumerate(self.blocks):
            if i > 0:
                h = max_pool_if_room(h)
            for layer in block:
                h = layer(h)
            features[f"block{i + 1}"] = h
        return self.head(global_avg_pool(h)), features


def vgg9(in_channels: int, num_classes: int, *, width: int = 64,
         rngs: nnx.Rngs) -> VGG:
    """The VGG-9 teacher: 8 conv-BN-ReLU layers in 4 blocks and a linear classifier."""
    return VGG(in_channels, num_classes, plan=VGG9_PLAN, width=width, rngs=rngs)


def vgg4(in_channels: int, num_classes: int, *, width: int = 64,
         rngs: nnx.Rngs) -> VGG:
    """The VGG-4 student: 3 conv-BN-ReLU layers in 3 blocks and a linear classifier."""
    return VGG(in_channels, num_classes, plan=VGG4_PLAN, width=width, rngs=rngs)
