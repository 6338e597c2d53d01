"""jaxkd.models.create: every model of the zoo by name, sizes as keywords, clear errors."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxkd import models

CASES = {
    "mlp": ({"hidden": (8,)}, models.MLP),
    "small_cnn": ({"width": 4, "hidden": 8}, models.SmallCNN),
    "vgg4": ({"width": 2}, models.VGG),
    "vgg9": ({"width": 2}, models.VGG),
    "wrn": ({"depth": 10, "widen_factor": 2, "width": 4}, models.WideResNet),
    "resnet18": ({"width": 2}, models.ResNet),
    "resnet34": ({"width": 2, "stem": "imagenet"}, models.ResNet),
}


def test_every_name_is_covered():
    assert set(CASES) == set(models.MODEL_NAMES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_create_builds_the_named_model(name):
    sizes, cls = CASES[name]
    assert set(sizes) <= set(models.size_keywords(name))
    make = lambda: models.create(name, input_shape=(16, 16, 3), num_classes=7,  # noqa: E731
                                 rngs=nnx.Rngs(0), **sizes)
    model = nnx.eval_shape(make)
    assert type(model) is cls
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                         jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
    assert out.shape == (2, 7)


def test_sizes_reach_the_model():
    a = models.create("vgg9", input_shape=(8, 8, 1), num_classes=3, rngs=nnx.Rngs(0), width=2)
    direct = models.vgg9(1, 3, width=2, rngs=nnx.Rngs(0))
    assert jax.tree.map(jnp.shape, nnx.state(a)) == jax.tree.map(jnp.shape, nnx.state(direct))
    wrn = models.create("wrn", input_shape=(8, 8, 1), num_classes=3, rngs=nnx.Rngs(0),
                        depth=10, widen_factor=2, width=4)
    assert wrn.head.kernel.shape == (4 * 2 * 4, 3)  # base width x k x 4 (third group)
    mlp = models.create("mlp", input_shape=(8, 8, 1), num_classes=3, rngs=nnx.Rngs(0),
                        hidden=(5, 6))
    assert [layer.kernel.shape for layer in mlp.layers] == [(64, 5), (5, 6)]


def test_bad_arguments_name_what_is_valid():
    kw = dict(input_shape=(8, 8, 1), num_classes=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"unknown model 'vgg'.*did you mean 'vgg9'"):
        models.create("vgg", **kw)
    with pytest.raises(ValueError, match=r"takes the size keywords \('width',\); got \['depth'\]"):
        models.create("vgg4", depth=3, **kw)
    with pytest.raises(ValueError, match="input_shape must be"):
        models.create("mlp", input_shape=(8, 8), num_classes=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_classes must be"):
        models.create("mlp", input_shape=(8, 8, 1), num_classes=0, rngs=nnx.Rngs(0))
