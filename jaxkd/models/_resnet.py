"""ResNet-18/34 (He et al. 2016) with a CIFAR or an ImageNet stem."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from jaxkd.models._base import Classifier, ConvBN, Features, check_input, global_avg_pool


class _BasicBlock(nnx.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (1x1 conv-BN) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = ConvBN(cin, cout, stride=stride, rngs=rngs)
        self.conv2 = ConvBN(cout, cout, relu=False, rngs=rngs)
        self.shortcut = (ConvBN(cin, cout, kernel=1, stride=stride, relu=False, rngs=rngs)
                         if (cin != cout or stride != 1) else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        skip = x if self.shortcut is None else self.shortcut(x)
        return jax.nn.relu(self.conv2(self.conv1(x)) + skip)


class ResNet(Classifier):
    """A basic-block ResNet.

    Stems: ``"cifar"`` is one 3x3 conv-BN-ReLU at stride 1 (for 32x32 and smaller);
    ``"imagenet"`` is a 7x7 stride-2 conv-BN-ReLU and a 3x3 stride-2 max-pool (224x224).
    Four stages of widths ``width * (1, 2, 4, 8)``, strides 1, 2, 2, 2, then global
    average pooling and a linear classifier.

    Taps: ``stage1..4``, the output of each stage.

    Args:
      in_channels: input channels ``C``.
      num_classes: number of logits ``K``.
      stage_sizes: blocks per stage, ``(2, 2, 2, 2)`` for ResNet-18, ``(3, 4, 6, 3)`` for 34.
      width: 64 for the standard models.
      stem: ``"cifar"`` or ``"imagenet"``.
    """

    def __init__(self, in_channels: int, num_classes: int, *, stage_sizes: Sequence[int],
                 width: int = 64, stem: str = "cifar", rngs: nnx.Rngs):
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}.")
        self.in_channels = in_channels
        self.imagenet_stem = stem == "imagenet"
        self.stem = ConvBN(in_channels, width, kernel=7 if self.imagenet_stem else 3,
                           stride=2 if self.imagenet_stem else 1, rngs=rngs)
        stages = []
        cin = width
        for s, size in enumerate(stage_sizes):
            cout = width * 2**s
            blocks = []
            for b in range(size):
                blocks.append(_BasicBlock(cin, cout, 2 if (b == 0 and s > 0) else 1, rngs=rngs))
                cin = cout
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.head = nnx.Linear(cin, num_classes, rngs=rngs)

    def forward(self, x: jax.Array) -> tuple[jax.Array, Features]:
        check_input(x, self.in_channels, "ResNet")
        h = self.stem(x)
        if self.imagenet_stem:
            h = nnx.max_pool(h, (3, 3), strides=(2, 2), padding="SAME")
        features = {}
        for s, stage in enumerate(self.stages):
            for block in stage:
                h = block(h)
            features[f"stage{s + 1}"] = h
        return self.head(global_avg_pool(h)), features


def resnet18(in_channels: int, num_classes: int, *, width: int = 64,
             stem: str = "cifar", rngs: nnx.Rngs) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2)."""
    return ResNet(in_channels, num_classes, stage_sizes=(2, 2, 2, 2), width=width, stem=stem,
                  rngs=rngs)


def resnet34(in_channels: int, num_classes: int, *, width: int = 64,
             stem: str = "cifar", rngs: nnx.Rngs) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return ResNet(in_channels, num_classes, stage_sizes=(3, 4, 6, 3), width=width, stem=stem,
                  rngs=rngs)
