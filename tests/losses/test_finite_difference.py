"""The finite-difference estimate: exact for affine networks, O(h^2)-biased for smooth ones.

Its probes are the JVP route's, so with the same key the two differ only by the
difference quotient's truncation and round-off; that difference is what most tests
measure, against the exact ``||J_T - J_S||_F^2`` from ``jax.jacrev``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd import losses, training
from jaxkd.losses import _differences as fd
from tests.losses import nets

D = 6
X_SHAPE = (nets.BATCH, D)
F32_U = 2.0**-24  # unit roundoff of float32
fd_loss = losses.finite_difference_loss


def problem(dtype=jnp.float32):
    """Student, teacher (tanh MLPs), x and ``J_T - J_S`` ``[B, K, D]`` (``jax.jacrev``)."""
    tp, sp = nets.pair(D, dtype, seed=3)
    x = jax.random.normal(jax.random.key(11), X_SHAPE, dtype)
    student, teacher = functools.partial(nets.mlp, sp), functools.partial(nets.mlp, tp)
    a = _jacobian_gap(tp, sp, x)
    return student, teacher, x, np.asarray(a, np.float64)


@jax.jit
def _jacobian_gap(tp, sp, x):
    return (nets.per_example_jacobian(functools.partial(nets.mlp, tp), x)
            - nets.per_example_jacobian(functools.partial(nets.mlp, sp), x))


def test_affine_networks_are_exact_up_to_round_off():
    kt, ks, kx = jax.random.split(jax.random.key(0), 3)
    a_t, a_s = jax.random.normal(kt, (D + 1, 3)), jax.random.normal(ks, (D + 1, 3))
    teacher = lambda x: x @ a_t[:D] + a_t[D][None]  # noqa: E731
    student = lambda x: x @ a_s[:D] + a_s[D][None]  # noqa: E731
    x = jax.random.normal(kx, X_SHAPE)
    key, n = jax.random.key(1), 3
    got = np.asarray(fd_loss(student, teacher, x, key=key, num_probes=n,
                             distribution="gaussian"), np.float64)
    u = np.asarray(losses.sample_probes(key, X_SHAPE, n, "gaussian"), np.float64)
    diff = np.asarray(a_t - a_s, np.float64)[:D]
    q = np.einsum("nbd,dk->nbk", u, diff)
    want = np.mean(np.sum(q**2, -1), 0)
    # Round-off: each output f_k = sum_i x_i A_ik + b_k is a sum of D + 1 rounded products
    # of the rounded inputs x +- h u (gamma_{D+2} on the sum S_k of the absolute terms,
    # per network), so each quotient is off by <= 2 (D + 2) u S_k / (2h) per network;
    # then ||q||^2 is off by <= 2 ||q|| ||dq|| + ||dq||^2 (and float32 sums, negligible).
    h = np.asarray(fd.example_steps(x, losses.DEFAULT_STEPS["float32"]), np.float64)
    xs = np.abs(np.asarray(x, np.float64))[None] + h[None, :, None] * np.abs(u)
    s_k = sum(xs @ np.abs(np.asarray(a, np.float64)[:D]) + np.abs(np.asarray(a)[D])
              for a in (a_t, a_s))
    dq = np.linalg.norm((D + 2) * F32_U * s_k / h[None, :, None], axis=-1)
    bound = np.mean(2 * np.linalg.norm(q, axis=-1) * dq + dq**2, 0) + 8 * F32_U * want
    assert np.all(np.abs(got - want) <= bound), (got - want, bound)


def test_equal_networks_give_exactly_zero():
    student, _, x, _ = problem()
    np.testing.assert_array_equal(fd_loss(student, student, x, key=jax.random.key(0)), 0.0)


def _third_directional(fn, x, u):
    """``fn'''(x)[u, u, u]`` by three nested JVPs."""
    def along(g):
        return lambda y: jax.jvp(g, (y,), (u,))[1]
    return along(along(along(fn)))(x)


def test_bias_is_h_squared_with_the_stated_coefficient(x64):
    # With D orthogonal probes the JVP estimate is exactly ||J_d||_F^2 (they span R^D),
    # so the FD estimate minus it is the quotient's truncation alone (float64 round-off,
    # ~1e-16 / h, is 1e-9 of it): e(h) = (h^2/3) mean_j <J_d u_j, d'''[u_j,u_j,u_j]> + c4 h^4.
    student, teacher, x, a = problem(jnp.float64)
    exact = np.sum(a**2, (1, 2))
    key = jax.random.key(5)
    loss = jax.jit(lambda step: fd_loss(student, teacher, x, key=key, num_probes=D,
                                        distribution="orthogonal", step=step),
                   static_argnums=0)
    steps = (2e-2, 1e-2)
    err = [np.asarray(loss(s), np.float64) - exact for s in steps]
    u = losses.sample_probes(key, X_SHAPE, D, "orthogonal", jnp.float64)

    def d(y):
        return teacher(y) - student(y)

    third = np.asarray(jax.jit(jax.vmap(lambda uj: _third_directional(d, x, uj)))(u))
    coef = np.mean(np.sum(np.einsum("bkd,nbd->nbk", a, np.asarray(u)) * third, -1), 0) / 3
    h2 = [(s * np.asarray(fd.example_steps(x, 1.0))) ** 2 for s in steps]
    # Halving h divides the error by 4 (1 + O(h^2)); the leading coefficient is the
    # derived one: err / h^2 -> coef, Richardson-extrapolated to cancel the h^4 term.
    ratio = err[0] / err[1]
    assert np.all(np.abs(ratio - 4.0) < 0.05), ratio
    richardson = (4 * err[1] / h2[1] - err[0] / h2[0]) / 3
    np.testing.assert_allclose(richardson, coef, rtol=1e-3)


def test_many_probes_match_the_exact_frobenius_distance():
    student, teacher, x, a = problem()
    exact = np.sum(a**2, (1, 2))
    # One Rademacher probe: Var(u^T M u) = 2 (||M||_F^2 - sum_i M_ii^2), M = J_d^T J_d.
    m = np.einsum("bkd,bke->bde", a, a)
    var1 = 2 * (np.sum(m**2, (1, 2)) - np.sum(np.diagonal(m, axis1=1, axis2=2) ** 2, -1))
    # Enough probes that 4 standard errors are 3 % of the exact value in every row.
    n = int(np.ceil(np.max(16 * var1 / (0.03 * exact) ** 2)))
    got = np.asarray(fd_loss(student, teacher, x, key=jax.random.key(2), num_probes=n),
                     np.float64)
    # The O(h^2) bias at the default step (~1e-5 relative) and the round-off (~eps/h,
    # ~3e-5) are far below 4 standard errors.
    assert np.all(np.abs(got - exact) < 4 * np.sqrt(var1 / n)), (n, got, exact)
    assert np.all(np.abs(got - exact) < 0.03 * exact)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "orthogonal"])
def test_unbiased_over_probes_and_the_jvp_route_per_probe(distribution):
    student, teacher, x, a = problem()
    exact = np.sum(a**2, (1, 2))
    keys = jax.random.split(jax.random.key(7), 1000)

    def both(k):
        opts = dict(key=k, num_probes=2, distribution=distribution)
        return (fd_loss(student, teacher, x, **opts),
                losses.jvp_projection_loss(student, teacher, x, **opts))

    got, jvp = (np.asarray(v, np.float64) for v in jax.jit(jax.vmap(both))(keys))
    # Per probe: the same probes as the JVP route, up to truncation (h^2 |d'''| ~ 1e-5
    # relative here) and round-off (eps |d| / h ~ 3e-5): 1e-3 relative is far above both.
    np.testing.assert_allclose(got, jvp, rtol=1e-3, atol=1e-4)
    # Over probes: the mean of 1000 i.i.d. estimates is within 4 standard errors (CLT).
    z = (got.mean(0) - exact) / (got.std(0, ddof=1) / np.sqrt(len(keys)))
    assert np.all(np.abs(z) < 4.0), z


def test_parameter_gradient_is_finite_and_check_grads(x64):
    tp, sp = nets.pair(D, jnp.float64, seed=3)
    x = jax.random.normal(jax.random.key(11), X_SHAPE, jnp.float64)
    teacher = functools.partial(nets.mlp, tp)

    def loss(p):
        return fd_loss(functools.partial(nets.mlp, p), teacher, x, key=jax.random.key(0),
                       num_probes=2)

    check_grads(loss, (sp,), order=1, modes=["rev"])
    with jax.enable_x64(False):
        student, teacher32, x32, _ = problem()
        g = jax.grad(lambda p: jnp.sum(fd_loss(functools.partial(nets.mlp, p), teacher32,
                                               x32, key=jax.random.key(0))))(
            nets.pair(D, seed=3)[1])
        assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g))


def test_targets_path_equals_teacher_path_under_jit():
    student, teacher, x, _ = problem()
    key, opts = jax.random.key(3), dict(num_probes=2, distribution="gaussian")
    targets = losses.teacher_targets(teacher, x, outputs=None, projections=("fd", "jvp"),
                                     key=key, **opts)
    assert targets.fd_probes.shape == (nets.BATCH, 2, D)
    np.testing.assert_array_equal(targets.fd_probes, targets.jvp_probes)
    sp = nets.pair(D, seed=3)[1]

    def value_and_grad(t):
        return jax.value_and_grad(lambda p: jnp.sum(fd_loss(
            functools.partial(nets.mlp, p), t, x, key=key, **opts)))(sp)

    want = value_and_grad(teacher)
    got = jax.jit(value_and_grad)(targets)
    # The same operations, fused differently: each of the four evaluations (two per
    # network) may move by <= 8 ulps of outputs |f| <= 2, and a quotient carries that
    # divided by h; loss and gradient are O(1) products of quotients.
    tol = 4 * 8 * 2 * F32_U / losses.DEFAULT_STEPS["float32"]
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
    # A traced key that differs from the targets' makes the rows NaN.
    other = jax.jit(lambda k: fd_loss(student, targets, x, key=k, **opts))(jax.random.key(4))
    assert np.all(np.isnan(other))
    with pytest.raises(ValueError, match="`key`"):
        fd_loss(student, targets, x, key=jax.random.key(4), **opts)
    with pytest.raises(ValueError, match="`step`"):
        fd_loss(student, targets, x, step=0.1, **opts)
    with pytest.raises(ValueError, match="`num_probes`"):
        fd_loss(student, targets, x, num_probes=3, distribution="gaussian")


@pytest.mark.parametrize("call, error, match", [
    (lambda s, t, x: fd_loss(s, t, x, key=jax.random.key(0), num_probes=0), ValueError,
     "`num_probes`"),
    (lambda s, t, x: fd_loss(s, t, x, key=jax.random.key(0), step=-1.0), ValueError,
     "`step`"),
    (lambda s, t, x: fd_loss(s, t, x, key=jax.random.key(0), step=float("nan")), ValueError,
     "`step`"),
    (lambda s, t, x: fd_loss(s, t, x), ValueError, "`key`"),
    (lambda s, t, x: fd_loss(s, t, x.astype(jnp.int32), key=jax.random.key(0)), TypeError,
     "`x`"),
    (lambda s, t, x: fd_loss(s(x), t, x, key=jax.random.key(0)), TypeError, "`student_fn`"),
    (lambda s, t, x: fd_loss(s, t, x, key=jax.random.key(0), num_probes=D + 1,
                             distribution="orthogonal"), ValueError, "`num_probes`"),
    (lambda s, t, x: fd_loss(s, t, x, key=jax.random.key(0), distribution="sobol"),
     ValueError, "`distribution`"),
    (lambda s, t, x: fd_loss(s, losses.teacher_targets(t, x, outputs=None), x), ValueError,
     "FD projections"),
])
def test_bad_input_errors(call, error, match):
    student, teacher, x, _ = problem()
    with pytest.raises(error, match=match):
        call(student, teacher, x)


def bf16_net(params):
    """The MLP computing in bfloat16 between float32 input and output (as flax's
    ``dtype=jnp.bfloat16`` does)."""
    cast = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    return lambda x: nets.mlp(cast, x.astype(jnp.bfloat16)).astype(jnp.float32)


def test_bfloat16_default_step_and_its_error():
    tp, sp = nets.pair(D, seed=3)
    student, teacher = bf16_net(sp), bf16_net(tp)
    x = jax.random.normal(jax.random.key(11), X_SHAPE)
    # The networks take and return float32; their programs say they compute in bfloat16.
    assert fd.resolve_step(None, x, student, teacher) == losses.DEFAULT_STEPS["bfloat16"]
    assert fd.resolve_step(None, x, functools.partial(nets.mlp, sp)) == \
        losses.DEFAULT_STEPS["float32"]
    # The float32 reference with the same probes: the JVP route of the float32 networks.
    key, opts = jax.random.key(1), dict(num_probes=D, distribution="orthogonal")
    want = np.asarray(losses.jvp_projection_loss(functools.partial(nets.mlp, sp),
                                                 functools.partial(nets.mlp, tp), x,
                                                 key=key, **opts))

    def err(s, t, step):
        got = fd_loss(s, t, x, key=key, step=step, **opts)
        assert got.dtype == jnp.float32
        return np.max(np.abs(np.asarray(got) / want - 1))

    small, large = losses.DEFAULT_STEPS["float32"], losses.DEFAULT_STEPS["bfloat16"]
    truncation = err(functools.partial(nets.mlp, sp), functools.partial(nets.mlp, tp), large)
    # Error a h^2 + b / h (truncation + round-off) is least where b / h = 2 a h^2: at a
    # step at or above that optimum the round-off is at most twice the truncation, which
    # the float32 networks measure alone at the same step (their round-off is 2^-16 of
    # bfloat16's). At float32's step the bfloat16 round-off (2^-8 |d| / h ~ 1) dominates.
    at_large, at_small = err(student, teacher, large), err(student, teacher, small)
    assert at_large <= 3 * truncation and at_small > 2 * at_large, (at_large, at_small,
                                                                    truncation)
    # Targets of a float32 teacher carry its small step: a bfloat16 student refuses it.
    targets = losses.teacher_targets(functools.partial(nets.mlp, tp), x, outputs=None,
                                     projections=("fd",), key=key, **opts)
    with pytest.raises(ValueError, match="default step"):
        fd_loss(student, targets, x, **opts)


def test_term_draws_the_probes_its_targets_hold():
    term = training.finite_difference(0.5, num_probes=2)
    assert term.targets == {"projection": "fd", "num_probes": 2, "distribution": "rademacher"}
    assert training.finite_difference(step=0.1).targets is None
    objective = training.Objective(training.distillation(), term)
    options = objective.targets_options()
    assert options["projections"] == ("fd",) and options["projection_term"] == 1
