import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.test_util import check_grads

from jaxkd.losses import attention_jacobian_loss, attention_map, attention_transfer_loss

B, H, W = 2, 3, 3


def feature_fn(scale):
    """A smooth conv-free 'network': x [B, H, W] -> features [B, H, W, 2]."""
    def fn(x):
        return jnp.stack([jnp.tanh(scale * x), jnp.sin(x) * scale], axis=-1)
    return fn


def test_attention_map_known_value_under_jit():
    a = np.zeros((1, 2, 2, 2), np.float32)
    a[0, 0, 0] = [3.0, 4.0]   # sum of squares 25
    a[0, 1, 1] = [0.0, 0.0]
    a[0, 1, 0] = [0.0, 0.0]
    a[0, 0, 1] = [0.0, 0.0]
    np.testing.assert_allclose(jax.jit(attention_map)(a), [[1.0, 0.0, 0.0, 0.0]], atol=1e-7)
    a[0, 1, 1] = [0.0, 5.0]   # two equal peaks: 1/sqrt(2) each
    np.testing.assert_allclose(attention_map(a), [[2**-0.5, 0, 0, 2**-0.5]], rtol=1e-6)


def test_transfer_known_value_and_layer_sum():
    s = np.zeros((1, 1, 2, 1), np.float32)
    s[0, 0, 0, 0] = 1.0
    t = np.zeros((1, 1, 2, 5), np.float32)  # channels may differ
    t[0, 0, :, :] = 1.0
    want = (1 - 2**-0.5) ** 2 + 0.5
    np.testing.assert_allclose(jax.jit(attention_transfer_loss)(s, t), [want], rtol=1e-6)
    np.testing.assert_allclose(attention_transfer_loss([s, s], [t, t]), [2 * want], rtol=1e-6)


@given(st.integers(0, 2**16), st.floats(0.1, 10.0))
def test_transfer_zero_for_same_and_invariant_to_scale(seed, c):
    f = jax.random.normal(jax.random.key(seed), (B, H, W, 4))
    np.testing.assert_allclose(attention_transfer_loss(f, c * f), 0.0, atol=1e-6)
    g = jax.random.normal(jax.random.key(seed + 1), (B, H, W, 2))
    np.testing.assert_allclose(attention_transfer_loss(c * f, g), attention_transfer_loss(f, g),
                               rtol=1e-5, atol=1e-6)


def test_transfer_gradients(x64):
    s = jax.random.normal(jax.random.key(0), (B, H, W, 2), jnp.float64)
    t = jax.random.normal(jax.random.key(1), (B, H, W, 3), jnp.float64)
    check_grads(lambda z: attention_transfer_loss(z, t), (s,), order=2, modes=["rev"])
    g = jax.grad(lambda z: jnp.sum(attention_transfer_loss(s, z)))(t)
    np.testing.assert_array_equal(g, 0.0)  # teacher is a constant target


def test_zero_features_are_finite():
    z = jnp.zeros((B, H, W, 2))
    loss, g = jax.value_and_grad(lambda f: jnp.sum(attention_transfer_loss(f, z + 1.0)))(z)
    assert np.isfinite(loss) and np.all(np.isfinite(g))


def test_attention_jacobian_against_explicit_gradient(x64):
    x = jax.random.normal(jax.random.key(2), (B, H, W), jnp.float64)
    student, teacher = feature_fn(1.0), feature_fn(2.0)
    got = attention_jacobian_loss(student, teacher, x)
    # Reference: per example, gradient of the normalised attention at the teacher's peak.
    want = []
    for b in range(B):
        q_t = attention_map(teacher(x[b:b + 1]))[0]
        j = int(jnp.argmax(q_t))
        grads = [jax.grad(lambda y: attention_map(f(y[None]))[0, j])(x[b]).ravel()
                 for f in (teacher, student)]
        gt, gs = [np.asarray(g) / np.linalg.norm(g) for g in grads]
        want.append(np.sum((gt - gs) ** 2))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(attention_jacobian_loss(student, student, x), 0.0, atol=1e-12)


def test_attention_jacobian_grad_wrt_student_params(x64):
    x = jax.random.normal(jax.random.key(2), (B, H, W), jnp.float64)

    def loss(scale):
        return attention_jacobian_loss(feature_fn(scale), feature_fn(2.0), x)
    check_grads(loss, (jnp.asarray(0.7, jnp.float64),), order=1, modes=["rev"])


def test_spatial_mismatch_raises():
    with pytest.raises(ValueError, match="spatial size"):
        attention_transfer_loss(jnp.ones((B, 2, 2, 1)), jnp.ones((B, 4, 4, 1)))
    with pytest.raises(ValueError, match="spatial size"):
        attention_jacobian_loss(lambda x: x[:, :2, :2, None], lambda x: x[..., None],
                                jnp.ones((B, H, W)))
