"""``remat_chunks`` changes memory, not values or gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import losses
from tests.losses import nets

D = 6
TP, SP = nets.pair(D)
TEACHER = functools.partial(nets.mlp, TP)
X = jax.random.normal(jax.random.key(7), (nets.BATCH, 3, 2))
Y = jnp.array([0, 2, 1, 1], jnp.int32)
KEY = jax.random.key(5)


def features(params):
    def fn(x):  # [B, 3, 2] -> [B, 2, 2, 2] feature map
        return jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"]).reshape(x.shape[0], 2, 2, 2)
    return fn


LOSSES = {
    "jm_label": lambda p, x, c: losses.jacobian_matching_loss(
        functools.partial(nets.mlp, p), TEACHER, x, labels=Y, outputs="label", remat_chunks=c),
    "jm_top_k": lambda p, x, c: losses.jacobian_matching_loss(
        functools.partial(nets.mlp, p), TEACHER, x, outputs="top_k", k=2, remat_chunks=c),
    "jm_all_raw": lambda p, x, c: losses.jacobian_matching_loss(
        functools.partial(nets.mlp, p), TEACHER, x, outputs="all", normalize=False,
        remat_chunks=c),
    "vjp_2_probes": lambda p, x, c: losses.vjp_projection_loss(
        functools.partial(nets.mlp, p), TEACHER, x, key=KEY, num_probes=2, remat_chunks=c),
    "jvp_1_probe": lambda p, x, c: losses.jvp_projection_loss(
        functools.partial(nets.mlp, p), TEACHER, x, key=KEY, remat_chunks=c),
    "attention_jacobian": lambda p, x, c: losses.attention_jacobian_loss(
        features(p), features(TP), x, remat_chunks=c),
}


# chunks=2 divides the batch of 4; chunks=3 pads it with a copy of its first example.
@pytest.mark.parametrize("chunks", [2, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_remat_gives_the_same_values_and_gradients(name, chunks):
    def value_and_grad(c):
        def per_example_weighted(p):
            values = LOSSES[name](p, X, c)
            # Weights per example, so that a chunk landing on the wrong rows would show.
            return jnp.sum(jnp.arange(1.0, 5.0) * values), values
        (_, values), grad = jax.jit(jax.value_and_grad(per_example_weighted, has_aux=True))(SP)
        return values, grad

    want_values, want_grad = value_and_grad(None)
    got_values, got_grad = value_and_grad(chunks)
    # The same per-example programs on slices of the batch: float32 round-off only, a
    # few ulp of sums of <= 32 products (as in test_direct_path).
    ulp = np.finfo(np.float32).eps
    np.testing.assert_allclose(got_values, want_values, rtol=16 * ulp,
                               atol=16 * ulp * float(jnp.max(jnp.abs(want_values))))
    for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
        np.testing.assert_allclose(a, b, rtol=0, atol=16 * ulp * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("bad,error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                       (True, TypeError)])
def test_bad_remat_chunks_raises(bad, error):
    # Out of range: ValueError; not an integer at all: TypeError (as for every count).
    with pytest.raises(error, match="`remat_chunks` must be None"):
        LOSSES["jm_label"](SP, X, bad)


def test_remat_chunks_shrink_the_compiled_working_memory():
    # XLA's buffer assignment of the parameter gradient of exact all-output matching
    # (K=10 VJPs: activation-dominated). 4 chunks hold a quarter of the activations at a
    # time; the parameter-gradient buffers (D x H) do not shrink, so ask for < 0.6x.
    batch, dim, hidden = 64, 256, 512
    tp = nets.init_mlp(jax.random.key(0), dim, hidden=hidden, classes=10)
    sp = nets.init_mlp(jax.random.key(1), dim, hidden=hidden, classes=10)
    x = jax.random.normal(jax.random.key(2), (batch, dim))

    def temp_bytes(chunks):
        grad = jax.jit(jax.grad(lambda p: jnp.sum(losses.jacobian_matching_loss(
            functools.partial(nets.mlp, p), functools.partial(nets.mlp, tp), x,
            outputs="all", remat_chunks=chunks))))
        return grad.lower(sp).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(4) < 0.6 * temp_bytes(None)
