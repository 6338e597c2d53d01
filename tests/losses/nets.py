"""Tiny smooth networks shared by the loss tests (few shapes, so few compiles)."""

import jax
import jax.numpy as jnp

BATCH, HIDDEN, CLASSES = 4, 8, 3


def init_mlp(key, in_dim, hidden=HIDDEN, classes=CLASSES, dtype=jnp.float32):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "w1": jax.random.normal(k1, (in_dim, hidden), dtype) / jnp.sqrt(in_dim).astype(dtype),
        "b1": 0.3 * jax.random.normal(k2, (hidden,), dtype),
        "w2": jax.random.normal(k3, (hidden, classes), dtype) / jnp.sqrt(hidden).astype(dtype),
        "b2": 0.3 * jax.random.normal(k4, (classes,), dtype),
    }


def mlp(params, x, activation=jnp.tanh):
    """``[B, ...] -> [B, K]``: flattens each example, one smooth hidden layer."""
    h = activation(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"][None])
    return h @ params["w2"] + params["b2"][None]


def pair(in_dim, dtype=jnp.float32, seed=0):
    """Teacher and student parameters of the same architecture, different weights."""
    kt, ks = jax.random.split(jax.random.key(seed))
    return init_mlp(kt, in_dim, dtype=dtype), init_mlp(ks, in_dim, dtype=dtype)


def per_example_jacobian(fn, x):
    """``[B, K, D]`` from jax.jacrev applied one example at a time (the reference)."""
    def single(xi):
        return jax.jacrev(lambda y: fn(y[None])[0])(xi).reshape(-1, xi.size)
    return jax.vmap(single)(x)
