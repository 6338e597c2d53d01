"""Flax NNX teacher/student zoo and the model -> pure-function helpers.

Every model maps NHWC images ``[B, H, W, C]`` to logits ``[B, K]``;
``model(x, return_features=True)`` also returns named feature maps
``{name: [B, H, W, C]}`` for attention transfer. Every constructor takes the same
order: ``(in_channels, num_classes, *, <architecture and sizes>, rngs)`` (the MLP's
first argument is its flattened input size). ``split`` / ``logits_fn`` turn a
model into the pure functions :mod:`jaxkd.losses` takes (inference-mode BatchNorm, so
examples are independent). :func:`create` builds a model by name
(``create("vgg9", input_shape=(32, 32, 3), num_classes=100, rngs=nnx.Rngs(0),
width=64)``). See ``docs/training.md`` for the layer plans.
"""

from jaxkd.models._base import Classifier, Features
from jaxkd.models._cnn import SmallCNN
from jaxkd.models._factory import MODEL_NAMES, create, size_keywords
from jaxkd.models._mlp import MLP
from jaxkd.models._pure import (Split, apply, feature_fn, features_fn, logits_fn, merge,
                                split)
from jaxkd.models._resnet import ResNet, resnet18, resnet34
from jaxkd.models._vgg import VGG, VGG4_PLAN, VGG9_PLAN, vgg4, vgg9
from jaxkd.models._wrn import WideResNet

__all__ = [
    "Classifier", "Features", "MLP", "SmallCNN", "VGG", "VGG4_PLAN", "VGG9_PLAN", "vgg4",
    "vgg9", "WideResNet", "ResNet", "resnet18", "resnet34", "Split", "split", "merge",
    "apply", "logits_fn", "features_fn", "feature_fn", "MODEL_NAMES", "create",
    "size_keywords",
]
