"""Networks in bfloat16, normalisation and reductions in float32.

Two claims, two kinds of test:

* The losses add only float32 round-off to what bfloat16 networks deliver. Networks whose
  outputs and input gradients are exact in bfloat16 (small dyadic weights) isolate the
  losses' own arithmetic: the result must match a float64 evaluation of the same values
  to a float32 bound. Computing the normalisation or the softmax in bfloat16 (the state
  before this change) misses it by ~2^-8.
* End to end, a bfloat16 network's loss differs from the float32 network's by no more
  than a first-order running error bound of the bfloat16 computation, built from the
  unit roundoff u = 2^-8 of bfloat16 (8 significand bits) and the network's own
  intermediate values (Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3:
  a rounded product or sum of n terms is off by at most about n u times the sum of the
  absolute terms). The bound is computed, not tuned.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd import losses
from tests.losses import nets

BF16_U = 2.0**-8    # unit roundoff of bfloat16: half the spacing 2^-7 above 1
F32_U = 2.0**-24    # unit roundoff of float32
D, K = 6, nets.CLASSES


def dyadic(key, shape):
    """Entries k/4 with |k| <= 8: exact in bfloat16, and so are their small sums."""
    return jax.random.randint(key, shape, -8, 9).astype(jnp.float32) / 4


def linear_net(w, dtype):
    return lambda x: x.astype(dtype) @ w.astype(dtype)


def normalised_distance(g_t, g_s):
    g_t, g_s = np.asarray(g_t, np.float64), np.asarray(g_s, np.float64)
    n_t = g_t / np.linalg.norm(g_t, axis=-1, keepdims=True)
    n_s = g_s / np.linalg.norm(g_s, axis=-1, keepdims=True)
    return np.sum((n_t - n_s) ** 2, axis=-1)


# The float32 evaluation of ||g_T/|g_T| - g_S/|g_S| ||^2 from exact inputs: two sums of D
# squares (gamma_D each), an rsqrt and a product (a few u), a difference and a sum of D
# squares: at most (2 D + 8) u relative on each of the <= 4 units of the result.
JM_F32_BOUND = 4 * (2 * D + 8) * F32_U


def test_jacobian_matching_of_bf16_gradients_is_float32_accurate():
    kt, ks, kx = jax.random.split(jax.random.key(0), 3)
    w_t, w_s = dyadic(kt, (D, K)), dyadic(ks, (D, K))
    x = jax.random.normal(kx, (nets.BATCH, D)).astype(jnp.bfloat16)
    labels = jnp.array([0, 2, 1, 1], jnp.int32)
    got = jax.jit(lambda x: losses.jacobian_matching_loss(
        linear_net(w_s, jnp.bfloat16), linear_net(w_t, jnp.bfloat16), x, labels=labels,
        outputs="label"))(x)
    assert got.dtype == jnp.float32
    # The input gradient of a linear net is the weight column: exact in bfloat16.
    want = normalised_distance(w_t.T[labels], w_s.T[labels])
    np.testing.assert_allclose(got, want, rtol=0, atol=JM_F32_BOUND)


def test_projection_losses_of_bf16_networks_are_float32_accurate():
    kt, ks, kx = jax.random.split(jax.random.key(1), 3)
    w_t, w_s = dyadic(kt, (D, K)), dyadic(ks, (D, K))
    x = jax.random.normal(kx, (nets.BATCH, D)).astype(jnp.bfloat16)
    key = jax.random.key(2)
    # Rademacher probes (+-1) keep every product exact: J u and v^T J are sums of <= 6
    # dyadic terms k/4 with |k| <= 8, exact in bfloat16 (at most 8 significant bits).
    diff = np.asarray(w_t - w_s, np.float64)
    for loss, dim in ((losses.vjp_projection_loss, K), (losses.jvp_projection_loss, D)):
        got = loss(linear_net(w_s, jnp.bfloat16), linear_net(w_t, jnp.bfloat16), x, key=key,
                   num_probes=3)
        assert got.dtype == jnp.float32
        if loss is losses.vjp_projection_loss:
            probes = np.asarray(losses.sample_probes(key, (nets.BATCH, K), 3), np.float64)
            want = np.mean(np.sum((probes @ diff.T) ** 2, -1), 0)
        else:
            probes = np.asarray(losses.sample_probes(key, x.shape, 3, dtype=jnp.bfloat16),
                                np.float64)
            want = np.mean(np.sum((probes @ diff) ** 2, -1), 0)
        # Exact squares summed in float32: gamma_dim relative.
        np.testing.assert_allclose(got, want, rtol=(dim + 2) * F32_U)


def test_distillation_of_bf16_logits_is_float32_accurate():
    ks, kt = jax.random.split(jax.random.key(3))
    s = (4 * jax.random.normal(ks, (8, 10))).astype(jnp.bfloat16)
    t = (4 * jax.random.normal(kt, (8, 10))).astype(jnp.bfloat16)
    tau = 4.0
    got_kd = losses.distillation_loss(s, t, temperature=tau)
    got_lm = losses.logit_matching_loss(s, t)
    assert got_kd.dtype == got_lm.dtype == jnp.float32
    s64, t64 = np.asarray(s, np.float64), np.asarray(t, np.float64)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.sum(np.exp(z), -1, keepdims=True))

    lt, ls = log_softmax(t64 / tau), log_softmax(s64 / tau)
    want_kd = tau**2 * np.sum(np.exp(lt) * (lt - ls), -1)
    # float32 log-softmax of K=10 values of size M = max|z/tau|: each entry off by at most
    # (K + 4) u (M + log K); the KL is a p_t-weighted sum of their differences, times tau^2.
    m = np.max(np.abs(np.concatenate([s64, t64]))) / tau + np.log(10)
    np.testing.assert_allclose(got_kd, want_kd, rtol=0,
                               atol=tau**2 * 2 * (10 + 4) * F32_U * m)
    # Differences of bfloat16 values are exact in float32; the sum of 10 squares is gamma_10.
    np.testing.assert_allclose(got_lm, np.sum((t64 - s64) ** 2, -1), rtol=12 * F32_U)


def attention_bf16():
    a = jnp.asarray(np.arange(1, 25).reshape(1, 2, 3, 4) / 8.0, jnp.bfloat16)
    got = losses.attention_map(a)
    q = np.sum(np.asarray(a, np.float64) ** 2, -1).reshape(1, -1)
    return got, q / np.linalg.norm(q)


def test_attention_map_of_bf16_features_is_float32_accurate():
    got, want = attention_bf16()
    assert got.dtype == jnp.float32
    # Squares of k/8 (k <= 24) are exact in float32; sums of 4 and 6 terms and an rsqrt.
    np.testing.assert_allclose(got, want, rtol=16 * F32_U)


# ---- End to end: the tanh MLP of nets.py in bfloat16 against float32.


def bf16_mlp(params):
    cast = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    return lambda x: nets.mlp(cast, x.astype(jnp.bfloat16))


def gradient_error_bound(params, x, labels, u):
    """Per example, a bound on ||g_computed - g_exact||_2 for the label output's input
    gradient of ``nets.mlp`` computed with unit roundoff ``u``; and ||g_exact||_2.

    First-order running error analysis of z = x W1 + b1, h = tanh(z), t = W2[:, i],
    g_z = t (1 - h^2) (any evaluation order of a few roundings), g = g_z W1^T; every
    operand is rounded (u), a sum of n terms adds n u of the sum of absolute terms,
    tanh' <= 1 and tanh itself is rounded (+ u |h|).
    """
    w1, b1, w2 = (np.asarray(params[k], np.float64) for k in ("w1", "b1", "w2"))
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    hidden = w1.shape[1]
    z = x @ w1 + b1
    h = np.tanh(z)
    e_z = (x.shape[1] + 3) * u * (np.abs(x) @ np.abs(w1) + np.abs(b1))
    e_h = e_z + 2 * u * np.abs(h)
    t = w2.T[np.asarray(labels)]                              # [B, H]
    e_t = u * np.abs(t)
    g_z = t * (1 - h**2)
    e_gz = (2 * np.abs(t) * np.abs(h) * e_h + (1 - h**2) * e_t
            + 4 * u * np.abs(t) * (1 + np.abs(h)) ** 2)
    g = g_z @ w1.T
    e_g = (hidden + 1) * u * (np.abs(g_z) @ np.abs(w1).T) + e_gz @ np.abs(w1).T
    return np.linalg.norm(e_g, axis=-1), np.linalg.norm(g, axis=-1), g


def positive(params):
    """Non-negative weights and biases: no cancellation, so sum |terms| = |sum| and the
    worst-case bound is informative (with cancellation it is inflated by the ratio)."""
    return {k: 0.5 * jnp.abs(v) for k, v in params.items()}


def test_bf16_networks_error_within_the_roundoff_bound():
    tp, sp = (positive(p) for p in nets.pair(D))
    x = jax.random.uniform(jax.random.key(4), (nets.BATCH, D))
    labels = jnp.array([0, 2, 1, 1], jnp.int32)
    got = losses.jacobian_matching_loss(bf16_mlp(sp), bf16_mlp(tp), x, labels=labels,
                                        outputs="label")
    want = losses.jacobian_matching_loss(functools.partial(nets.mlp, sp),
                                         functools.partial(nets.mlp, tp), x, labels=labels,
                                         outputs="label")
    assert got.dtype == want.dtype == jnp.float32
    # ||g/|g| - h/|h| || <= 2 ||g - h|| / |g|; with a, b the two normalised gradients and
    # da + db bounding how far they move, | ||a'-b'||^2 - ||a-b||^2 | <= 2 ||a-b|| (da + db)
    # + (da + db)^2. The bfloat16 and the float32 evaluations are each bounded against
    # exact arithmetic, and each adds the float32 loss arithmetic (JM_F32_BOUND).
    da_db = 0.0
    for params in (tp, sp):
        err16, norm, _ = gradient_error_bound(params, x, labels, BF16_U)
        err32, _, _ = gradient_error_bound(params, x, labels, F32_U)
        da_db = da_db + 2 * (err16 + err32) / norm
    _, _, g_t = gradient_error_bound(tp, x, labels, 0.0)
    _, _, g_s = gradient_error_bound(sp, x, labels, 0.0)
    exact = normalised_distance(g_t, g_s)
    bound = 2 * np.sqrt(exact) * da_db + da_db**2 + 2 * JM_F32_BOUND
    error = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    assert np.all(error <= bound), (error, bound)
    assert np.any(error > 0)  # the networks really ran in bfloat16
    # A worst-case bound, so a loose one: measured errors 5e-4 to 1.6e-3 (about 1 % of
    # losses 0.04 to 0.2, a few u) against bounds 0.5 to 0.9. The tests above, on values
    # exact in bfloat16, are the sharp ones: they pin the losses' own arithmetic.
