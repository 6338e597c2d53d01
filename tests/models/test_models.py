"""Model zoo: output shapes, feature taps, pure-function round trips, BatchNorm policy."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxkd import models

# Tiny instances (width 2-4) of every architecture, on 8x8 or 16x16 inputs.
# name -> (constructor, input shape, num_classes, {tap: spatial size})
TINY = {
    "mlp": (lambda: models.MLP(64, 5, hidden=(8, 8), rngs=nnx.Rngs(0)), (3, 8, 8, 1), 5,
            {"hidden1": 1, "hidden2": 1}),
    "cnn": (lambda: models.SmallCNN(1, 5, width=4, hidden=8, rngs=nnx.Rngs(0)), (3, 8, 8, 1),
            5, {"block1": 8, "block2": 4}),
    "vgg9": (lambda: models.vgg9(1, 5, width=2, rngs=nnx.Rngs(0)), (3, 8, 8, 1), 5,
             {"block1": 8, "block2": 4, "block3": 2, "block4": 2}),
    "vgg4": (lambda: models.vgg4(3, 5, width=2, rngs=nnx.Rngs(0)), (3, 16, 16, 3), 5,
             {"block1": 16, "block2": 8, "block3": 4}),
    "wrn": (lambda: models.WideResNet(3, 5, depth=10, widen_factor=2, width=2, rngs=nnx.Rngs(0)),
            (3, 8, 8, 3), 5, {"group1": 8, "group2": 4, "group3": 2}),
    "resnet18": (lambda: models.resnet18(3, 5, width=2, rngs=nnx.Rngs(0)), (3, 8, 8, 3), 5,
                 {"stage1": 8, "stage2": 4, "stage3": 2, "stage4": 1}),
    "resnet34_imagenet": (lambda: models.resnet34(3, 5, width=2, stem="imagenet",
                                                  rngs=nnx.Rngs(0)), (3, 16, 16, 3), 5,
                          {"stage1": 4, "stage2": 2, "stage3": 1, "stage4": 1}),
}


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request):
    make, shape, k, taps = TINY[request.param]
    model = make()
    x = jax.random.normal(jax.random.key(1), shape)
    return model, x, k, taps


def _with_random_stats(model: nnx.Module) -> nnx.Module:
    """Gives BatchNorm non-trivial running statistics, so inference mode is not identity."""
    graphdef, params, rest = models.split(model)
    leaves, tree = jax.tree.flatten(rest)
    keys = jax.random.split(jax.random.key(7), max(len(leaves), 1))
    leaves = [0.5 + jax.random.uniform(k, v.shape) for k, v in zip(keys, leaves)]
    return nnx.merge(graphdef, params, jax.tree.unflatten(tree, leaves))


def test_output_shapes_and_feature_taps(tiny):
    model, x, k, taps = tiny
    logits, features = jax.eval_shape(lambda x: models.apply(*models.split(model), x)[:2], x)
    assert logits.shape == (x.shape[0], k)
    assert logits.dtype == jnp.float32
    assert sorted(features) == sorted(taps)
    for name, size in taps.items():
        b, h, w, _ = features[name].shape
        assert (b, h, w) == (x.shape[0], size, size), name


def test_pure_function_round_trip(tiny):
    """split -> logits_fn / features_fn under jit == the original module in eval mode."""
    model, x, _, _ = tiny
    model = _with_random_stats(model)
    parts = models.split(model)
    logits = jax.jit(lambda p, r, x: models.logits_fn(parts.graphdef, p, r)(x))(
        parts.params, parts.rest, x)
    features = jax.jit(lambda x: models.features_fn(*parts)(x))(x)
    # An independent reference: the original module switched to inference mode by NNX
    # itself (not through models.merge / apply, which logits_fn uses).
    model.eval()
    ref_logits, ref_features = model(x, return_features=True)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert sorted(features) == sorted(ref_features)
    for name in ref_features:
        np.testing.assert_allclose(features[name], ref_features[name], rtol=1e-5, atol=1e-5)
    name = sorted(ref_features)[0]
    np.testing.assert_allclose(models.feature_fn(*parts, name)(x), ref_features[name],
                               rtol=1e-5, atol=1e-5)
    # With BatchNorm, train mode (batch statistics) gives other logits than inference mode
    # (the random running statistics), so the comparison above tells the modes apart.
    train_logits = models.apply(*parts, x, train=True)[0]
    has_bn = bool(jax.tree.leaves(parts.rest))
    assert (not np.allclose(train_logits, ref_logits, rtol=1e-3, atol=1e-3)) == has_bn
    # Eval mode did not change the module's state: it still equals the split parts.
    _, params_now, rest_now = models.split(model)
    for now, before in ((params_now, parts.params), (rest_now, parts.rest)):
        assert jax.tree.structure(now) == jax.tree.structure(before)
        for a, b in zip(jax.tree.leaves(now), jax.tree.leaves(before)):
            np.testing.assert_array_equal(a, b)
    # Splitting the rebuilt model gives back the same leaves.
    rebuilt = models.merge(*parts)
    again = models.split(rebuilt)
    assert jax.tree.structure(again.params) == jax.tree.structure(parts.params)
    assert jax.tree.structure(again.rest) == jax.tree.structure(parts.rest)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(parts)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(KeyError, match="no feature tap"):
        models.feature_fn(*parts, "nope")(x)


def test_train_mode_updates_batch_stats_only_with_batchnorm(tiny):
    model, x, _, _ = tiny
    parts = models.split(model)
    _, _, new_rest = models.apply(*parts, x, train=True)
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(new_rest), jax.tree.leaves(parts.rest))]
    has_bn = bool(jax.tree.leaves(parts.rest))
    assert any(changed) == has_bn
    _, _, same = models.apply(*parts, x, train=False)
    assert jax.tree.structure(new_rest) == jax.tree.structure(parts.rest)
    assert jax.tree.structure(same) == jax.tree.structure(parts.rest)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(parts.rest)):
        np.testing.assert_array_equal(a, b)


def test_wrong_input_shape_raises():
    model = models.vgg4(3, 5, width=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
        model(jnp.ones((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="6n \\+ 4"):
        models.WideResNet(3, 10, depth=11, rngs=nnx.Rngs(0))


def test_per_example_jacobian_independent_of_batch_composition():
    """Inference-mode BatchNorm: example 0's input gradient ignores its batch mates.

    The same example sits in two batches with different companions; its top-logit input
    gradient must agree (float32 round-off). The train-mode forward (batch statistics)
    is checked to differ, so the test would catch a Jacobian pass that used it.
    """
    model = _with_random_stats(models.vgg4(3, 5, width=2, rngs=nnx.Rngs(0)))
    parts = models.split(model)
    x0 = jax.random.normal(jax.random.key(0), (1, 8, 8, 3))
    batch_a = jnp.concatenate([x0, jax.random.normal(jax.random.key(1), (3, 8, 8, 3))])
    batch_b = jnp.concatenate([x0, 3.0 + jax.random.normal(jax.random.key(2), (3, 8, 8, 3))])

    @jax.jit
    def grads(batch):
        # Gradient of example 0's first logit, inference mode and train mode.
        f = models.logits_fn(*parts)
        train_f = lambda b: models.apply(*parts, b, train=True)[0]  # noqa: E731
        return (jax.grad(lambda b: f(b)[0, 0])(batch)[0],
                jax.grad(lambda b: train_f(b)[0, 0])(batch)[0])

    (inf_a, train_a), (inf_b, train_b) = grads(batch_a), grads(batch_b)

    np.testing.assert_allclose(inf_a, inf_b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(train_a, train_b, rtol=1e-3, atol=1e-4)


def _num_params(make) -> int:
    abstract = nnx.eval_shape(make)
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("make, shape, num_classes, expected", [
    # Published counts (torchvision / the WRN paper), for the reference-scale models.
    (lambda: models.resnet18(3, 1000, stem="imagenet", rngs=nnx.Rngs(0)), (1, 224, 224, 3),
     1000, 11_689_512),
    (lambda: models.resnet34(3, 1000, stem="imagenet", rngs=nnx.Rngs(0)), (1, 224, 224, 3),
     1000, 21_797_672),
    (lambda: models.WideResNet(3, 10, depth=28, widen_factor=10,
                               rngs=nnx.Rngs(0)), (1, 32, 32, 3), 10,
     36_479_194),
    # The counts stated in jaxkd/models/_vgg.py (width 64, 100 classes): 4.74M and 0.40M.
    (lambda: models.vgg9(3, 100, rngs=nnx.Rngs(0)), (1, 32, 32, 3), 100, 4_738_596),
    (lambda: models.vgg4(3, 100, rngs=nnx.Rngs(0)), (1, 32, 32, 3), 100, 396_964),
], ids=["resnet18", "resnet34", "wrn-28-10", "vgg9", "vgg4"])
def test_full_size_models_by_shape(make, shape, num_classes, expected):
    """Full-width models, traced abstractly (no compile): logits shape and parameter count."""
    out = jax.eval_shape(lambda x: make()(x), jax.ShapeDtypeStruct(shape, jnp.float32))
    assert out.shape == (1, num_classes)
    assert _num_params(make) == expected


@pytest.mark.parametrize("constructor", [models.MLP, models.SmallCNN, models.VGG, models.vgg4,
                                         models.vgg9, models.WideResNet, models.ResNet,
                                         models.resnet18, models.resnet34],
                         ids=lambda c: c.__name__)
def test_every_constructor_takes_inputs_then_classes_then_keywords(constructor):
    init = constructor.__init__ if inspect.isclass(constructor) else constructor
    params = list(inspect.signature(init).parameters.values())
    if params[0].name == "self":
        params = params[1:]
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional in (["in_channels", "num_classes"], ["in_features", "num_classes"])
    assert all(p.default is p.empty for p in params[:2])  # both required, no silent 3 / 1000
    assert params[-1].name == "rngs" and params[-1].kind is inspect.Parameter.KEYWORD_ONLY
    assert all(p.kind is p.KEYWORD_ONLY for p in params[2:])
