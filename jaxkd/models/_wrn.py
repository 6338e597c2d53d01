"""Wide residual networks (Zagoruyko & Komodakis 2016), the attention-transfer family."""

from __future__ import annotations

import jax
from flax import nnx

from jaxkd.models._base import (BN_EPSILON, BN_MOMENTUM, Classifier, Features,
                                check_input, global_avg_pool)


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


class _PreActBlock(nnx.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.bn1 = _bn(cin, rngs)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME",
                              use_bias=False, rngs=rngs)
        self.bn2 = _bn(cout, rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.shortcut = (nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
                         if (cin != cout or stride != 1) else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = jax.nn.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        h = self.conv1(a)
        h = self.conv2(jax.nn.relu(self.bn2(h)))
        return h + skip


class WideResNet(Classifier):
    """WRN-``depth``-``widen_factor`` for small images (CIFAR layout).

    ``(depth - 4) / 6`` pre-activation blocks per group, group widths
    ``width * widen_factor * (1, 2, 4)``, strides 1, 2, 2, then BN-ReLU, global
    average pooling and a linear classifier. No dropout (deterministic training and
    per-example Jacobians).

    Taps: ``group1..3``, the output of each group (as in attention transfer).

    Args:
      in_channels: input channels ``C``.
      num_classes: number of logits ``K``.
      depth: total depth, ``6 n + 4`` (16, 22, 28, 40, ...).
      widen_factor: ``k``.
      width: the base width, 16 in the paper; smaller in tests.
    """

    def __init__(self, in_channels: int, num_classes: int, *, depth: int = 16,
                 widen_factor: int = 1, width: int = 16, rngs: nnx.Rngs):
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}.")
        n = (depth - 4) // 6
        self.in_channels = in_channels
        self.stem = nnx.Conv(in_channels, width, (3, 3), padding="SAME", use_bias=False,
                             rngs=rngs)
        groups = []
        cin = width
        for g, stride in enumerate((1, 2, 2)):
            cout = width * widen_factor * 2**g
            blocks = []
            for b in range(n):
                blocks.append(_PreActBlock(cin, cout, stride if b == 0 else 1, rngs=rngs))
                cin = cout
            groups.append(nnx.List(blocks))
        self.groups = nnx.List(groups)
        self.bn = _bn(cin, rngs)
        self.head = nnx.Linear(cin, num_classes, rngs=rngs)

    def forward(self, x: jax.Array) -> tuple[jax.Array, Features]:
        check_input(x, self.in_channels, "WideResNet")
        h = self.stem(x)
        features = {}
        for g, group in enumerate(self.groups):
            for block in group:
                h = block(h)
            features[f"group{g + 1}"] = h
        h = jax.nn.relu(self.bn(h))
        return self.head(global_avg_pool(h)), features
