"""The projection estimators are unbiased, and their variance falls like 1/num_probes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd.losses import jacobian_matching_loss, jvp_projection_loss, sample_probes
from jaxkd.losses import vjp_projection_loss
from tests.losses import nets

D = 6
X_SHAPE = (nets.BATCH, D)
NUM_KEYS = 2000
ESTIMATORS = {"vjp": vjp_projection_loss, "jvp": jvp_projection_loss}


@pytest.fixture(scope="module")
def problem():
    tp, sp = nets.pair(D, seed=3)
    x = jax.random.normal(jax.random.key(11), X_SHAPE)
    student, teacher = functools.partial(nets.mlp, sp), functools.partial(nets.mlp, tp)
    exact = jacobian_matching_loss(student, teacher, x, outputs="all", normalize=False)
    return student, teacher, x, np.asarray(exact, np.float64)


def _samples(estimator, problem, num_probes, distribution, seed=0):
    """[NUM_KEYS, B] independent estimates, one per key (vmapped over keys, one compile)."""
    student, teacher, x, _ = problem
    keys = jax.random.split(jax.random.key(seed), NUM_KEYS)
    fn = jax.jit(jax.vmap(lambda k: estimator(student, teacher, x, key=k, num_probes=num_probes,
                                              distribution=distribution)))
    return np.asarray(fn(keys), np.float64)


@pytest.mark.parametrize("route", ["vjp", "jvp"])
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "orthogonal"])
def test_unbiased(problem, route, distribution):
    samples = _samples(ESTIMATORS[route], problem, 2, distribution)
    exact = problem[3]
    se = samples.std(0, ddof=1) / np.sqrt(NUM_KEYS)
    # The mean of NUM_KEYS i.i.d. estimates is within 4 standard errors of the truth with
    # probability > 0.9999 (CLT); float32 round-off (~1e-6 relative) is far below the SE.
    z = (samples.mean(0) - exact) / se
    assert np.all(np.abs(z) < 4.0), f"bias in standard errors: {z}"


@pytest.mark.parametrize("route", ["vjp", "jvp"])
def test_variance_falls_as_one_over_num_probes(problem, route):
    var = {}
    se_rel = {}
    for k in (1, 4):
        s = _samples(ESTIMATORS[route], problem, k, "gaussian", seed=k)
        centred = s - s.mean(0)
        var[k] = np.mean(centred**2, 0)
        # Standard error of a sample variance: sqrt((m4 - var^2) / n).
        se_rel[k] = np.sqrt((np.mean(centred**4, 0) - var[k] ** 2) / NUM_KEYS) / var[k]
    ratio = var[1] / var[4]
    se_ratio = ratio * np.sqrt(se_rel[1] ** 2 + se_rel[4] ** 2)  # delta method
    z = (ratio - 4.0) / se_ratio
    assert np.all(np.abs(z) < 4.0), f"ratio {ratio}, z {z}"


def test_gaussian_vjp_variance_matches_closed_form(problem):
    # For v ~ N(0, I_K) and M = A A^T: Var(v^T M v) = 2 ||M||_F^2 (Isserlis).
    student, teacher, x, _ = problem
    a = (nets.per_example_jacobian(teacher, x) - nets.per_example_jacobian(student, x))
    m = np.einsum("bkd,bld->bkl", np.asarray(a, np.float64), np.asarray(a, np.float64))
    want = 2 * np.sum(m**2, (1, 2))
    s = _samples(vjp_projection_loss, problem, 1, "gaussian", seed=5)
    centred = s - s.mean(0)
    var = np.mean(centred**2, 0)
    se = np.sqrt((np.mean(centred**4, 0) - var**2) / NUM_KEYS)
    assert np.all(np.abs(var - want) < 4 * se), (var, want, se)


def test_orthogonal_probes_spanning_the_space_are_exact(problem):
    # K orthogonal output probes scaled by sqrt(K) form sqrt(K) Q with Q orthogonal:
    # (1/K) sum_j ||sqrt(K) q_j^T A||^2 = ||Q^T A||_F^2 = ||A||_F^2, for every key.
    student, teacher, x, exact = problem
    got = vjp_projection_loss(student, teacher, x, key=jax.random.key(0),
                              num_probes=nets.CLASSES, distribution="orthogonal")
    np.testing.assert_allclose(got, exact, rtol=1e-5)
    got = jvp_projection_loss(student, teacher, x, key=jax.random.key(1), num_probes=D,
                              distribution="orthogonal")
    np.testing.assert_allclose(got, exact, rtol=1e-5)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "orthogonal"])
def test_probe_second_moment_is_identity(distribution):
    u = sample_probes(jax.random.key(0), (2, 3), 3, distribution)
    assert u.shape == (3, 2, 3)
    many = jax.vmap(lambda k: sample_probes(k, (1, 3), 3, distribution))(
        jax.random.split(jax.random.key(1), 4000)).reshape(-1, 3)
    second = np.asarray(many.T @ many) / many.shape[0]
    # Entries of the empirical second moment have SE <= sqrt(3 / 12000) = 0.016.
    np.testing.assert_allclose(second, np.eye(3), atol=5 * 0.016)


def test_teacher_is_constant_and_student_equal_teacher_gives_zero(problem):
    student, _, x, _ = problem
    for est in ESTIMATORS.values():
        np.testing.assert_array_equal(est(student, student, x, key=jax.random.key(0)), 0.0)


@pytest.mark.parametrize("route", ["vjp", "jvp"])
def test_parameter_gradient_is_unbiased_for_the_exact_gradient(x64, route):
    # E_key[grad_theta estimate] = grad_theta ||J_T - J_S||_F^2 (linearity of expectation).
    tp, sp = nets.pair(D, jnp.float64, seed=3)
    x = jax.random.normal(jax.random.key(11), X_SHAPE, jnp.float64)
    teacher = functools.partial(nets.mlp, tp)

    def exact(p):
        return jnp.sum(jacobian_matching_loss(functools.partial(nets.mlp, p), teacher, x,
                                              outputs="all", normalize=False))

    def estimate(p, key):
        return jnp.sum(ESTIMATORS[route](functools.partial(nets.mlp, p), teacher, x, key=key))

    keys = jax.random.split(jax.random.key(2), 1000)
    g = jax.jit(jax.vmap(jax.grad(estimate), in_axes=(None, 0)))(sp, keys)["w2"]
    want = np.asarray(jax.grad(exact)(sp)["w2"])
    se = np.asarray(g.std(0, ddof=1)) / np.sqrt(len(keys))
    z = (np.asarray(g.mean(0)) - want) / np.maximum(se, 1e-12)
    assert np.all(np.abs(z) < 4.5), z  # 4.5 SE: 24 entries tested jointly


@pytest.mark.parametrize("route", ["vjp", "jvp"])
def test_check_grads_wrt_student_params(x64, route):
    # For a fixed key the estimate is a smooth function of the student's parameters.
    tp, sp = nets.pair(D, jnp.float64, seed=3)
    x = jax.random.normal(jax.random.key(11), X_SHAPE, jnp.float64)
    teacher = functools.partial(nets.mlp, tp)
    check_grads(lambda p: ESTIMATORS[route](functools.partial(nets.mlp, p), teacher, x,
                                            key=jax.random.key(0), num_probes=2),
                (sp,), order=1, modes=["rev"])
