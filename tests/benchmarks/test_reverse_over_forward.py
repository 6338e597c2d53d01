"""jacobian_matching_loss_rof equals jacobian_matching_loss: value and gradients.

The reverse-over-forward experiment (benchmarks/_reverse_over_forward.py) changes only how
the student's input gradient is differentiated (the gradient of a JVP through a custom VJP
instead of reverse-over-reverse), so every output mode must agree with the library loss in
value and in the gradient with respect to the student's parameters, to float32 round-off,
on a smooth network (tanh MLP) and on a ReLU/max-pool CNN from the model zoo.
"""

import doctest
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from benchmarks import _reverse_over_forward
from benchmarks._reverse_over_forward import input_gradients, jacobian_matching_loss_rof
from jaxkd import models
from jaxkd.losses import jacobian_matching_loss
from tests.losses import nets

# As in tests/losses: the loss must never promote dtypes silently.
pytestmark = pytest.mark.usefixtures("strict_dtype_promotion")

X_SHAPE = (nets.BATCH, 3, 2)
D = 6
LABELS = jnp.array([0, 2, 1, 1], jnp.int32)
MODES = [("teacher_top1", True), ("teacher_top1", False), ("label", True), ("top_k", True),
         ("all", False), ("all", True)]


@pytest.fixture
def strict_dtype_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


def _tree_allclose(a, b, rtol, atol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        # Relative to each leaf's scale: float32 round-off of sums of O(D) products.
        scale = float(jnp.max(jnp.abs(u))) + atol
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def mlp_setup():
    tp, sp = nets.pair(D)
    x = jax.random.normal(jax.random.key(7), X_SHAPE)
    return functools.partial(nets.mlp, tp), sp, x


@pytest.mark.parametrize("outputs,normalize", MODES)
def test_value_and_param_gradient_equal_reference_mlp(mlp_setup, outputs, normalize):
    teacher, sp, x = mlp_setup

    def loss(fn, params, x):
        return jnp.mean(fn(functools.partial(nets.mlp, params), teacher, x, labels=LABELS,
                           outputs=outputs, k=2, normalize=normalize))

    want = jax.jit(jax.value_and_grad(functools.partial(loss, jacobian_matching_loss)))(sp, x)
    got = jax.jit(jax.value_and_grad(functools.partial(loss, jacobian_matching_loss_rof)))(
        sp, x)
    _tree_allclose(got, want, rtol=2e-6, atol=1e-12)


@pytest.fixture(scope="module")
def cnn_setup():
    # ReLU, max-pool and a global mean: the zoo's SmallCNN on 8x8x3 "digits".
    student = models.SmallCNN(3, 5, width=4, hidden=8, rngs=nnx.Rngs(0))
    teacher = models.SmallCNN(3, 5, width=6, hidden=8, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(3), (3, 8, 8, 3))
    return models.split(student), models.logits_fn(*models.split(teacher)), x


@pytest.mark.parametrize("outputs,normalize", [("teacher_top1", True), ("all", False)])
def test_value_and_param_gradient_equal_reference_cnn(cnn_setup, outputs, normalize):
    (graphdef, params, rest), teacher, x = cnn_setup

    def loss(fn, params, x):
        student = models.logits_fn(graphdef, params, rest)
        return jnp.mean(fn(student, teacher, x, outputs=outputs, normalize=normalize))

    want = jax.jit(jax.value_and_grad(functools.partial(loss, jacobian_matching_loss)))(
        params, x)
    got = jax.jit(jax.value_and_grad(functools.partial(loss, jacobian_matching_loss_rof)))(
        params, x)
    # Looser than the MLP's 2e-6: float32 round-off accumulates through the conv layers'
    # sums of 3x3xC products and the max-pool/ReLU, on top of the two differentiation orders.
    _tree_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_per_example_values_equal_reference(mlp_setup):
    teacher, sp, x = mlp_setup
    student = functools.partial(nets.mlp, sp)
    np.testing.assert_allclose(jacobian_matching_loss_rof(student, teacher, x),
                               jacobian_matching_loss(student, teacher, x), rtol=1e-6)


def test_input_gradients_all_cotangents_x64(x64):
    """The custom VJP of the input gradients against autodiff, in x, params, cotangents."""
    tp, sp = nets.pair(D, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(1), X_SHAPE, jnp.float64)
    c = jax.random.normal(jax.random.key(2), (2, nets.BATCH, nets.CLASSES), jnp.float64)

    def reference(params, x, c):
        _, vjp = jax.vjp(functools.partial(nets.mlp, params), x)
        return jax.vmap(vjp)(c)[0]

    def fast(params, x, c):
        return input_gradients(functools.partial(nets.mlp, params), x, c)

    np.testing.assert_allclose(fast(sp, x, c), reference(sp, x, c), rtol=1e-12)
    r = jax.random.normal(jax.random.key(4), (2,) + X_SHAPE, jnp.float64)
    want = jax.grad(lambda *a: jnp.sum(r * reference(*a)), argnums=(0, 1, 2))(sp, x, c)
    got = jax.grad(lambda *a: jnp.sum(r * fast(*a)), argnums=(0, 1, 2))(sp, x, c)
    _tree_allclose(got, want, rtol=1e-10, atol=1e-300)
    # The custom rule is itself differentiable: numerical second-order check.
    check_grads(lambda p: jnp.sum(r * fast(p, x, c)), (sp,), order=2, modes=("rev",))


def test_teacher_parameters_receive_no_gradient(mlp_setup):
    teacher_params, sp = nets.pair(D)
    _, _, x = mlp_setup
    student = functools.partial(nets.mlp, sp)
    g = jax.grad(lambda tp: jnp.sum(jacobian_matching_loss_rof(
        student, functools.partial(nets.mlp, tp), x)))(teacher_params)
    assert all(float(jnp.max(jnp.abs(leaf))) == 0.0 for leaf in jax.tree.leaves(g))


def test_bad_input_is_reported_like_the_reference(mlp_setup):
    teacher, sp, x = mlp_setup
    student = functools.partial(nets.mlp, sp)
    for kwargs in ({"outputs": "label"}, {"outputs": "top_k", "k": nets.CLASSES + 1}):
        with pytest.raises(ValueError) as want:
            jacobian_matching_loss(student, teacher, x, **kwargs)
        with pytest.raises(ValueError) as got:
            jacobian_matching_loss_rof(student, teacher, x, **kwargs)
        assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match=re.escape(
            f"`k` must be <= the number of classes K={nets.CLASSES}, got k={nets.CLASSES + 1}.")):
        jacobian_matching_loss_rof(student, teacher, x, outputs="top_k", k=nets.CLASSES + 1)
    with pytest.raises(ValueError, match="labels"):
        jacobian_matching_loss_rof(student, teacher, x, outputs="label")


def test_docstring_examples():
    result = doctest.testmod(_reverse_over_forward, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
