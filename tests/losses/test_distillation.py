import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.test_util import check_grads

from jaxkd.losses import distillation_loss, logit_matching_loss

S = np.array([[1.0, -0.5, 0.2], [0.0, 0.0, 3.0]], np.float32)
T = np.array([[2.0, 0.5, -1.0], [1.0, -2.0, 0.5]], np.float32)


def _kd_numpy(s, t, tau):
    def log_softmax(z):
        z = z / tau
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    lt, ls = log_softmax(t.astype(np.float64)), log_softmax(s.astype(np.float64))
    return tau**2 * np.sum(np.exp(lt) * (lt - ls), -1)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_distillation_known_value_under_jit(tau):
    got = jax.jit(distillation_loss, static_argnames="temperature")(S, T, temperature=tau)
    # float32 softmax/log round-off: a few ulp of values of order 1.
    np.testing.assert_allclose(got, _kd_numpy(S, T, tau), rtol=1e-5, atol=1e-6)
    assert got.shape == (2,)


def test_logit_matching_known_value_under_jit():
    got = jax.jit(logit_matching_loss)(S, T)
    np.testing.assert_allclose(got, [1.0 + 1.0 + 1.44, 1.0 + 4.0 + 6.25], rtol=1e-6)


def test_gradients_match_finite_differences(x64):
    s, t = S.astype(np.float64), T.astype(np.float64)
    # The teacher is a stop_gradient target: check the student argument only.
    check_grads(lambda z: distillation_loss(z, t, temperature=2.0), (s,), order=2,
                modes=["rev", "fwd"])
    check_grads(lambda z: logit_matching_loss(z, t), (s,), order=2, modes=["rev", "fwd"])


def test_teacher_receives_no_gradient():
    g = jax.grad(lambda t: jnp.sum(distillation_loss(S, t, temperature=2.0)))(T)
    chex.assert_trees_all_equal(g, jnp.zeros_like(g))
    g = jax.grad(lambda t: jnp.sum(logit_matching_loss(S, t)))(T)
    chex.assert_trees_all_equal(g, jnp.zeros_like(g))


def test_kd_gradient_is_tau_times_probability_gap():
    # d/ds [tau^2 KL] = tau (softmax(s/tau) - softmax(t/tau)): the reason for the tau^2.
    tau = 3.0
    g = jax.grad(lambda z: jnp.sum(distillation_loss(z, T, temperature=tau)))(S)
    want = tau * (jax.nn.softmax(S / tau) - jax.nn.softmax(T / tau))
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


def test_vmap_equals_batched():
    s3, t3 = np.stack([S, 2 * S]), np.stack([T, -T])
    got = jax.vmap(lambda a, b: distillation_loss(a, b, temperature=2.0))(s3, t3)
    want = np.stack([distillation_loss(a, b, temperature=2.0) for a, b in zip(s3, t3)])
    np.testing.assert_allclose(got, want, rtol=1e-6)


@given(st.integers(0, 2**16), st.floats(0.5, 8.0))
def test_zero_when_student_is_teacher_and_nonnegative(seed, tau):
    z = jax.random.normal(jax.random.key(seed), (3, 5)) * 3
    np.testing.assert_allclose(distillation_loss(z, z, temperature=tau), 0.0, atol=1e-6)
    np.testing.assert_array_equal(logit_matching_loss(z, z), 0.0)
    other = jax.random.normal(jax.random.key(seed + 1), (3, 5))
    assert np.all(np.asarray(distillation_loss(other, z, temperature=tau)) >= -1e-6)


def test_kd_invariant_to_logit_shift():
    np.testing.assert_allclose(distillation_loss(S + 5.0, T - 3.0, temperature=2.0),
                               distillation_loss(S, T, temperature=2.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_a_masked_teacher_class_gives_the_kl_over_the_allowed_classes(tau):
    """A ``-inf`` teacher logit (a masked class) has probability 0 and adds ``0 log 0 =
    0``: the loss equals the KL of the rows without that class's teacher term (the
    student's softmax still spans every class), as optax's ``kl_divergence`` computes it,
    and its gradient is finite."""
    import optax
    masked = T.copy()
    masked[:, 2] = -np.inf
    got = np.asarray(jax.jit(distillation_loss, static_argnames="temperature")(
        S, masked, temperature=tau))
    z_t, z_s = masked[:, :2].astype(np.float64) / tau, S.astype(np.float64) / tau
    p_t = np.exp(z_t - z_t.max(-1, keepdims=True))
    p_t /= p_t.sum(-1, keepdims=True)
    log_p_s = z_s - z_s.max(-1, keepdims=True)
    log_p_s -= np.log(np.exp(log_p_s).sum(-1, keepdims=True))
    want = tau**2 * np.sum(p_t * (np.log(p_t) - log_p_s[:, :2]), -1)
    # float32 softmaxes of 3 classes: a few ulps of the row's terms.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    by_optax = tau**2 * optax.losses.kl_divergence(
        jax.nn.log_softmax(S / tau), jax.nn.softmax(masked / tau))
    np.testing.assert_allclose(got, by_optax, rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda s: distillation_loss(s, masked, temperature=tau).sum())(S)
    assert np.isfinite(np.asarray(grad)).all()
    # The student is pushed off the masked class: its logit's gradient is its
    # probability (times tau), positive, as for a class the teacher gives 0.
    assert (np.asarray(grad)[:, 2] > 0).all()


def test_a_string_temperature_is_refused_naming_it():
    with pytest.raises(TypeError, match="^`temperature` must be a real number, got"):
        distillation_loss(S, T, temperature="4")
