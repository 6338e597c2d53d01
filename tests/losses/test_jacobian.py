import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.test_util import check_grads

from jaxkd.losses import jacobian_matching_loss
from tests.losses import nets

# Inputs are small "images" [B, 3, 2] so that flattening over the input is exercised.
X_SHAPE = (nets.BATCH, 3, 2)
D = 6


@pytest.fixture(scope="module")
def setup():
    tp, sp = nets.pair(D)
    x = jax.random.normal(jax.random.key(7), X_SHAPE)
    return functools.partial(nets.mlp, tp), functools.partial(nets.mlp, sp), x, tp, sp


def _reference(student, teacher, x, rows, normalize, reduce):
    """The loss from per-example jax.jacrev Jacobians, one output at a time."""
    jt, js = nets.per_example_jacobian(teacher, x), nets.per_example_jacobian(student, x)
    out = []
    for b in range(x.shape[0]):
        terms = []
        for i in rows[b]:
            gt, gs = np.asarray(jt[b, i], np.float64), np.asarray(js[b, i], np.float64)
            if normalize:
                gt, gs = gt / np.linalg.norm(gt), gs / np.linalg.norm(gs)
            terms.append(np.sum((gt - gs) ** 2))
        out.append(reduce(terms))
    return np.array(out)


@pytest.mark.parametrize("outputs,normalize", [("teacher_top1", True), ("teacher_top1", False),
                                               ("label", True), ("top_k", True),
                                               ("all", False), ("all", True)])
def test_known_value_against_jacrev_under_jit(setup, outputs, normalize):
    student, teacher, x, _, _ = setup
    labels = jnp.array([0, 2, 1, 1], jnp.int32)
    k = 2
    loss = jax.jit(lambda x, y: jacobian_matching_loss(student, teacher, x, labels=y,
                                                       outputs=outputs, k=k,
                                                       normalize=normalize))(x, labels)
    t = np.asarray(teacher(x))
    rows = {"teacher_top1": t.argmax(-1)[:, None], "label": np.asarray(labels)[:, None],
            "top_k": np.argsort(-t, -1)[:, :k],
            "all": np.tile(np.arange(nets.CLASSES), (x.shape[0], 1))}[outputs]
    want = _reference(student, teacher, x, rows, normalize, np.sum if outputs == "all" else
                      np.mean)
    # float32: gradients are O(1) sums of O(10) products; 1e-5 relative round-off.
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)


def test_unnormalized_all_is_frobenius_distance_of_jacfwd(setup):
    student, teacher, x, _, _ = setup
    jt = jax.vmap(jax.jacfwd(lambda y: teacher(y[None])[0]))(x).reshape(x.shape[0], -1)
    js = jax.vmap(jax.jacfwd(lambda y: student(y[None])[0]))(x).reshape(x.shape[0], -1)
    want = np.sum((np.asarray(jt) - np.asarray(js)) ** 2, -1)
    got = jacobian_matching_loss(student, teacher, x, outputs="all", normalize=False)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_input_gradient_matches_central_differences(x64):
    tp, sp = nets.pair(D, jnp.float64)
    x = jax.random.normal(jax.random.key(7), X_SHAPE, jnp.float64)
    teacher = functools.partial(nets.mlp, tp)
    zero = lambda y: jnp.zeros((y.shape[0], nets.CLASSES), y.dtype) + 0.0 * y[:, :1, 0]  # noqa
    # With a zero student the unnormalised loss is ||grad_x T^i||^2 of the top-1 output.
    got = jacobian_matching_loss(zero, teacher, x, normalize=False)
    top = np.asarray(teacher(x)).argmax(-1)
    h = 1e-5
    fd = np.zeros((x.shape[0], D))
    flat = np.asarray(x).reshape(x.shape[0], -1)
    for j in range(D):
        e = np.zeros(D)
        e[j] = h
        up = np.asarray(teacher(jnp.asarray((flat + e).reshape(X_SHAPE))))
        dn = np.asarray(teacher(jnp.asarray((flat - e).reshape(X_SHAPE))))
        fd[:, j] = (up - dn)[np.arange(x.shape[0]), top] / (2 * h)
    # Central differences: truncation O(h^2 f''') ~ 1e-10, round-off O(eps/h) ~ 1e-11.
    np.testing.assert_allclose(got, np.sum(fd**2, -1), rtol=1e-8)


@pytest.mark.parametrize("outputs,normalize", [("teacher_top1", True), ("all", False),
                                               ("top_k", True)])
def test_check_grads_wrt_student_params(x64, outputs, normalize):
    tp, sp = nets.pair(D, jnp.float64)
    x = jax.random.normal(jax.random.key(7), X_SHAPE, jnp.float64)
    teacher = functools.partial(nets.mlp, tp)

    def loss(params):
        return jacobian_matching_loss(functools.partial(nets.mlp, params), teacher, x,
                                      outputs=outputs, k=2, normalize=normalize)

    check_grads(loss, (sp,), order=1, modes=["rev"])


def test_teacher_parameters_receive_no_gradient(setup):
    student, _, x, tp, _ = setup
    g = jax.grad(lambda p: jnp.sum(jacobian_matching_loss(
        student, functools.partial(nets.mlp, p), x, normalize=False, outputs="all")))(tp)
    chex.assert_trees_all_equal(g, jax.tree.map(jnp.zeros_like, tp))


@given(st.integers(0, 2**16))
def test_zero_when_student_is_teacher(seed):
    params = nets.init_mlp(jax.random.key(seed), D)
    fn = functools.partial(nets.mlp, params)
    x = jax.random.normal(jax.random.key(seed + 1), X_SHAPE)
    for outputs in ("teacher_top1", "all"):
        for normalize in (True, False):
            np.testing.assert_array_equal(
                jacobian_matching_loss(fn, fn, x, outputs=outputs, normalize=normalize), 0.0)


@given(st.integers(0, 2**16), st.floats(0.05, 20.0), st.floats(0.05, 20.0))
def test_normalized_loss_invariant_to_positive_output_scaling(seed, a, c):
    tp, sp = nets.pair(D, seed=seed)
    x = jax.random.normal(jax.random.key(seed + 1), X_SHAPE)
    teacher, student = functools.partial(nets.mlp, tp), functools.partial(nets.mlp, sp)
    base = jacobian_matching_loss(student, teacher, x)
    scaled = jacobian_matching_loss(lambda y: a * student(y), lambda y: c * teacher(y), x)
    # Positive scaling keeps the teacher's arg-max and the gradient directions; the eps
    # floor moves the result by ~eps^2/||g||^2 (negligible); float32 normalisation of O(1)
    # vectors is good to a few ulp, and the loss is a difference of such vectors (<= 4).
    np.testing.assert_allclose(scaled, base, rtol=0, atol=2e-6)


def test_per_example_independence(setup):
    student, teacher, x, _, _ = setup
    full = jacobian_matching_loss(student, teacher, x)
    for b in range(x.shape[0]):
        alone = jacobian_matching_loss(student, teacher, x[b:b + 1])
        np.testing.assert_allclose(alone, full[b:b + 1], rtol=1e-6, atol=1e-7)


def test_zero_gradient_gives_finite_loss_and_gradient():
    x = jnp.ones(X_SHAPE)
    tp, sp = nets.pair(D)
    teacher = functools.partial(nets.mlp, tp)

    def constant_student(params):
        # Output independent of x: zero input gradient.
        return lambda y: jnp.zeros((y.shape[0], nets.CLASSES)) + params["b2"][None]

    loss, g = jax.value_and_grad(
        lambda p: jnp.sum(jacobian_matching_loss(constant_student(p), teacher, x)))(sp)
    # ||n_T - 0||^2 = 1 per example exactly (teacher normalised, student zero).
    np.testing.assert_allclose(loss, x.shape[0], rtol=1e-6)
    chex.assert_tree_all_finite(g)
    # The mirror case: a zero-gradient *teacher*.
    loss = jacobian_matching_loss(teacher, constant_student(sp), x)
    np.testing.assert_allclose(loss, 1.0, rtol=1e-6)


def test_vmap_over_groups_equals_loop(setup):
    student, teacher, x, _, _ = setup
    xs = jnp.stack([x, 2 * x])
    got = jax.vmap(lambda xi: jacobian_matching_loss(student, teacher, xi))(xs)
    want = jnp.stack([jacobian_matching_loss(student, teacher, xi) for xi in xs])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_float64_preserved(x64):
    tp, sp = nets.pair(D, jnp.float64)
    x = jnp.ones(X_SHAPE, jnp.float64)
    out = jacobian_matching_loss(functools.partial(nets.mlp, sp), functools.partial(nets.mlp, tp),
                                 x)
    assert out.dtype == jnp.float64
