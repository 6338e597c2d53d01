"""Models by name: ``create("vgg9", input_shape=(32, 32, 3), num_classes=100, rngs=...)``."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

from flax import nnx

from jaxkd.models._base import Classifier
from jaxkd.models._cnn import SmallCNN
from jaxkd.models._mlp import MLP
from jaxkd.models._resnet import resnet18, resnet34
from jaxkd.models._vgg import vgg4, vgg9
from jaxkd.models._wrn import WideResNet


def _mlp(shape, k, rngs, *, hidden: Sequence[int] = (128, 128)):
    h, w, c = shape
    return MLP(h * w * c, k, hidden=tuple(hidden), rngs=rngs)


def _small_cnn(shape, k, rngs, *, width: int = 32, hidden: int = 128):
    return SmallCNN(shape[-1], k, width=width, hidden=hidden, rngs=rngs)


def _vgg9(shape, k, rngs, *, width: int = 64):
    return vgg9(shape[-1], k, width=width, rngs=rngs)


def _vgg4(shape, k, rngs, *, width: int = 64):
    return vgg4(shape[-1], k, width=width, rngs=rngs)


def _wrn(shape, k, rngs, *, depth: int = 16, widen_factor: int = 1, width: int = 16):
    return WideResNet(shape[-1], k, depth=depth, widen_factor=widen_factor, width=width,
                      rngs=rngs)


def _resnet18(shape, k, rngs, *, width: int = 64, stem: str = "cifar"):
    return resnet18(shape[-1], k, width=width, stem=stem, rngs=rngs)


def _resnet34(shape, k, rngs, *, width: int = 64, stem: str = "cifar"):
    return resnet34(shape[-1], k, width=width, stem=stem, rngs=rngs)


# name -> (builder, its size keywords). Sizes are the model's own keyword arguments; a
# model's default sizes are those of its class.
_MODELS: dict[str, tuple[Callable[..., Classifier], tuple[str, ...]]] = {
    "mlp": (_mlp, ("hidden",)),
    "small_cnn": (_small_cnn, ("width", "hidden")),
    "vgg4": (_vgg4, ("width",)),
    "vgg9": (_vgg9, ("width",)),
    "wrn": (_wrn, ("depth", "widen_factor", "width")),
    "resnet18": (_resnet18, ("width", "stem")),
    "resnet34": (_resnet34, ("width", "stem")),
}
MODEL_NAMES = tuple(_MODELS)


def _lookup(name: str):
    if name not in _MODELS:
        near = difflib.get_close_matches(str(name), MODEL_NAMES, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"unknown model {name!r}{hint}; choose one of {MODEL_NAMES}.")
    return _MODELS[name]


def size_keywords(name: str) -> tuple[str, ...]:
    """The size keywords :func:`create` accepts for model ``name``.

    ``mlp``: ``hidden`` (layer widths); ``small_cnn``: ``width``, ``hidden`` (one width);
    ``vgg4`` / ``vgg9``: ``width``; ``wrn``: ``depth``, ``widen_factor``, ``width`` (the
    base width); ``resnet18`` / ``resnet34``: ``width``, ``stem``.
    """
    return _lookup(name)[1]


def create(name: str, *, input_shape: Sequence[int], num_classes: int, rngs: nnx.Rngs,
           **sizes: Any) -> Classifier:
    """A model of the zoo by name (as big_vision's model lookup).

    Args:
      name: one of :data:`MODEL_NAMES`: ``mlp``, ``small_cnn``, ``vgg4``, ``vgg9``, ``wrn``,
        ``resnet18``, ``resnet34``.
      input_shape: ``(H, W, C)`` of one example.
      num_classes: number of logits ``K``.
      rngs: the initialisation RNGs.
      **sizes: the model's size keywords (:func:`size_keywords`), e.g. ``width=16``;
        omitted ones take the model's defaults.

    Returns:
      The :class:`Classifier`, mapping ``[B, H, W, C]`` to ``[B, K]``.

    Raises:
      ValueError: an unknown name, a bad ``input_shape`` or ``num_classes``, or a size
        keyword the model does not take (the message lists those it takes).
    """
    build, keywords = _lookup(name)
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"input_shape must be (height, width, channels) of positive "
                         f"integers; got {input_shape!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
    unknown = sorted(set(sizes) - set(keywords))
    if unknown:
        raise ValueError(f"model {name!r} takes the size keywords {keywords}; got "
                         f"{unknown}.")
    return build(shape, num_classes, rngs, **sizes)
