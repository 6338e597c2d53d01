"""Noise distillation == distillation + sigma^2 Jacobian matching (+ curvature), numerically.

The reference expectation over Gaussian input noise is computed by tensor Gauss-Hermite
quadrature in D = 2 input dimensions: with 24 nodes per axis it integrates polynomials of
degree 47 exactly, so for these analytic (tanh) networks at sigma <= 0.2 its error is far
below float64 round-off of the quantities compared. That makes the sigma^4 remainder
visible without Monte Carlo noise.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd.losses import cross_entropy_noise_expansion, noisy_distillation_loss
from jaxkd.losses import squared_noise_expansion, weighted_laplacian
from tests.losses import nets

D = 2
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(24)
WEIGHTS = WEIGHTS / np.sqrt(2 * np.pi)  # probabilists' Hermite: weights of N(0, 1)
GRID = np.stack(np.meshgrid(NODES, NODES, indexing="ij"), -1).reshape(-1, D)
GRID_W = np.outer(WEIGHTS, WEIGHTS).reshape(-1)


def _soft_ce(s_logits, t_logits):
    return -jnp.sum(jax.nn.softmax(t_logits, -1) * jax.nn.log_softmax(s_logits, -1), -1)


def _sq(s_out, t_out):
    return jnp.sum(jnp.square(t_out - s_out), -1)


def quadrature(student, teacher, x, sigma, loss, power=1):
    """E_xi[loss(x + xi)^power] for every example, xi ~ N(0, sigma^2 I_2)."""
    pts = (x[:, None, :] + sigma * jnp.asarray(GRID, x.dtype)[None]).reshape(-1, D)
    vals = loss(student(pts), teacher(pts)).reshape(x.shape[0], -1) ** power
    return np.asarray(vals, np.float64) @ GRID_W


def bilaplacian(student, teacher, x, loss):
    """Laplacian(Laplacian(l))(x) per example: the sigma^4 coefficient times 8."""
    def single(y):
        return loss(student(y[None]), teacher(y[None]))[0]
    h4 = jax.vmap(jax.jacfwd(jax.jacfwd(jax.hessian(single))))(x)
    return np.asarray(jnp.einsum("bjjkk->b", h4), np.float64)


@pytest.fixture(scope="module")
def smooth():
    with jax.enable_x64(True):
        tp, sp = nets.pair(D, jnp.float64, seed=1)
        x = jax.random.normal(jax.random.key(5), (nets.BATCH, D), jnp.float64)
        return functools.partial(nets.mlp, sp), functools.partial(nets.mlp, tp), x


def test_proposition1_exact_for_affine_networks(x64):
    a = jax.random.normal(jax.random.key(0), (D, nets.CLASSES), jnp.float64)
    b = jax.random.normal(jax.random.key(1), (D, nets.CLASSES), jnp.float64)
    c = jnp.array([0.5, -1.0, 2.0], jnp.float64)
    teacher = lambda y: y @ a + c[None]  # noqa: E731
    student = lambda y: y @ b  # noqa: E731
    x = jax.random.normal(jax.random.key(2), (nets.BATCH, D), jnp.float64)
    sigma = 0.7  # exact at any sigma: E||d + (A-B)^T xi||^2 = ||d||^2 + sigma^2 ||A-B||_F^2
    d = np.asarray(teacher(x) - student(x))
    closed = np.sum(d**2, -1) + sigma**2 * np.sum(np.asarray(a - b) ** 2)
    for curvature in ("none", "exact"):
        got = squared_noise_expansion(student, teacher, x, sigma=sigma, curvature=curvature)
        np.testing.assert_allclose(got, closed, rtol=1e-13)  # float64 round-off
    np.testing.assert_allclose(quadrature(student, teacher, x, sigma, _sq), closed, rtol=1e-12)


SIGMAS = (0.05, 0.025)


@pytest.mark.parametrize("name", ["squared", "cross_entropy"])
def test_full_expansion_remainder_is_the_sigma4_term(x64, smooth, name):
    """E[l(x+xi)] - expansion = sigma^4/8 * Laplacian^2(l) + c6 sigma^6 + O(sigma^8).

    (For Gaussian noise E[l(x+xi)] = exp(sigma^2 Laplacian / 2) l.) Two sigmas a factor 2
    apart give the Richardson estimate (64 r(s/2) - r(s)) / (3 s^4) = c4 + O(s^4), which
    must equal the bi-Laplacian computed by automatic differentiation.
    """
    student, teacher, x = smooth
    loss, expansion = {
        "squared": (_sq, squared_noise_expansion),
        "cross_entropy": (_soft_ce, cross_entropy_noise_expansion)}[name]
    c4 = bilaplacian(student, teacher, x, loss) / 8
    r = [quadrature(student, teacher, x, s, loss) - np.asarray(expansion(student, teacher, x,
                                                                         sigma=s))
         for s in SIGMAS]
    s = SIGMAS[0]
    c4_fit = (64 * r[1] - r[0]) / (3 * s**4)
    # Remainder of the fit O(c8 s^4) ~ 1e-5 relative; float64 round-off of the quadrature
    # (~1e-16 on O(1) values) divided by s^4 = 6e-6 is ~1e-10. 1% leaves room for large c8.
    np.testing.assert_allclose(c4_fit, c4, rtol=1e-2)
    slope = np.log2(r[0] / r[1])
    print(f"{name}: residual slope in sigma {slope}, c4 {c4}")
    assert np.all(np.abs(slope - 4) < 0.5), slope  # halving sigma divides the residual by ~16


def test_papers_first_order_form_misses_the_laplacian_term(x64, smooth):
    """Proposition 1 as printed is off by sigma^2 * sum_i d_i Laplacian(d_i) for smooth nets."""
    student, teacher, x = smooth
    lap = np.asarray(weighted_laplacian(lambda y: teacher(y) - student(y), x,
                                        teacher(x) - student(x)))
    assert np.all(np.abs(lap) > 1e-3), lap  # the term is not negligible here
    q = []
    for sigma in SIGMAS:
        truth = quadrature(student, teacher, x, sigma, _sq)
        paper = np.asarray(squared_noise_expansion(student, teacher, x, sigma=sigma,
                                                   curvature="none"))
        full = np.asarray(squared_noise_expansion(student, teacher, x, sigma=sigma))
        q.append((truth - paper) / sigma**2)
        # The full expansion's residual is O(sigma^4), far below the paper's O(sigma^2).
        assert np.all(np.abs(truth - full) < 0.1 * np.abs(truth - paper))
    # The paper's residual / sigma^2 = lap + O(sigma^2); Richardson removes the O(sigma^2).
    np.testing.assert_allclose((4 * q[1] - q[0]) / 3, lap, rtol=1e-3)


def test_cross_entropy_terms_sum_to_half_laplacian(x64, smooth):
    """The docstring's decomposition equals (sigma^2/2) Laplacian(l) computed directly."""
    student, teacher, x = smooth
    sigma = 0.3

    def single(y):
        return _soft_ce(student(y[None]), teacher(y[None]))[0]
    lap = jax.vmap(lambda y: jnp.trace(jax.hessian(single)(y)))(x)
    direct = _soft_ce(student(x), teacher(x)) + 0.5 * sigma**2 * lap
    got = cross_entropy_noise_expansion(student, teacher, x, sigma=sigma)
    np.testing.assert_allclose(got, direct, rtol=1e-12)  # an identity: float64 round-off
    # The poster's term alone (plus value) is a different, incomplete quantity.
    linear = cross_entropy_noise_expansion(student, teacher, x, sigma=sigma, curvature="none")
    assert np.all(np.abs(np.asarray(linear) - np.asarray(direct)) > 1e-6)


@pytest.mark.parametrize("kind", ["squared", "cross_entropy"])
def test_monte_carlo_is_unbiased(x64, smooth, kind):
    student, teacher, x = smooth
    sigma, n = 0.2, 20000
    loss = _sq if kind == "squared" else _soft_ce
    mc = np.asarray(noisy_distillation_loss(student, teacher, x, key=jax.random.key(3),
                                            sigma=sigma, num_samples=n, kind=kind))
    mean = quadrature(student, teacher, x, sigma, loss)
    var = quadrature(student, teacher, x, sigma, loss, power=2) - mean**2
    z = (mc - mean) / np.sqrt(var / n)
    assert np.all(np.abs(z) < 4.0), z  # CLT: 4 standard errors


def test_hutchinson_laplacian_is_unbiased(x64, smooth):
    student, teacher, x = smooth
    w = teacher(x) - student(x)
    exact = np.asarray(weighted_laplacian(student, x, w))
    keys = jax.random.split(jax.random.key(4), 2000)
    est = np.asarray(jax.vmap(lambda k: weighted_laplacian(student, x, w, method="hutchinson",
                                                           key=k))(keys))
    z = (est.mean(0) - exact) / (est.std(0, ddof=1) / np.sqrt(len(keys)))
    assert np.all(np.abs(z) < 4.0), z


def test_noisy_loss_is_zero_for_identical_networks():
    tp, _ = nets.pair(D)
    f = functools.partial(nets.mlp, tp)
    x = jnp.ones((nets.BATCH, D))
    for kind in ("squared", "kl"):
        np.testing.assert_allclose(noisy_distillation_loss(f, f, x, key=jax.random.key(0),
                                                           sigma=0.1, kind=kind), 0.0,
                                   atol=1e-6)


def test_noisy_loss_gradient_flows_to_student_only(x64, smooth):
    student, teacher, x = smooth
    tp, sp = nets.pair(D, jnp.float64, seed=1)

    def loss(p, q):
        return jnp.sum(noisy_distillation_loss(functools.partial(nets.mlp, p),
                                               functools.partial(nets.mlp, q), x,
                                               key=jax.random.key(0), sigma=0.1,
                                               num_samples=3))
    gs, gt = jax.grad(loss, argnums=(0, 1))(sp, tp)
    assert all(np.all(v == 0) for v in jax.tree.leaves(gt))
    assert any(np.any(v != 0) for v in jax.tree.leaves(gs))
    check_grads(lambda p: loss(p, tp), (sp,), order=1, modes=["rev"])


@pytest.mark.parametrize("name", ["squared", "cross_entropy"])
def test_expansions_check_grads_wrt_student_params(x64, smooth, name):
    _, teacher, x = smooth
    _, sp = nets.pair(D, jnp.float64, seed=1)
    expansion = {"squared": squared_noise_expansion,
                 "cross_entropy": cross_entropy_noise_expansion}[name]
    check_grads(lambda p: expansion(functools.partial(nets.mlp, p), teacher, x, sigma=0.1),
                (sp,), order=1, modes=["rev"])
