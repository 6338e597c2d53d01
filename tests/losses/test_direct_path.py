"""One selected output (or one probe) is one VJP/JVP, with no size-1 vmap.

The direct path and the batched one compute the same maths; the direct one is what one
writes by hand (one ``jax.vjp`` with the ``[B, K]`` cotangent) and was measured 1.1-1.3x
faster on XLA:CPU for a convolutional network. These tests pin both facts: no ``vmap``
is traced for a single output, and the values and gradients equal the batched path's.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import losses
from jaxkd.losses import _common
from tests.losses import nets

X_SHAPE = (nets.BATCH, 3, 2)
D = 6
TP, SP = nets.pair(D)
TEACHER = functools.partial(nets.mlp, TP)
X = jax.random.normal(jax.random.key(7), X_SHAPE)
Y = jnp.array([0, 2, 1, 1], jnp.int32)
KEY = jax.random.key(5)

SINGLE = {
    "jm_teacher_top1": lambda s, x: losses.jacobian_matching_loss(s, TEACHER, x),
    "jm_label": lambda s, x: losses.jacobian_matching_loss(s, TEACHER, x, labels=Y,
                                                           outputs="label"),
    "jm_top_1": lambda s, x: losses.jacobian_matching_loss(s, TEACHER, x, outputs="top_k",
                                                           k=1),
    "vjp_1_probe": lambda s, x: losses.vjp_projection_loss(s, TEACHER, x, key=KEY),
    "jvp_1_probe": lambda s, x: losses.jvp_projection_loss(s, TEACHER, x, key=KEY),
}


@pytest.fixture
def vmap_calls(monkeypatch):
    """Counts the calls of ``jax.vmap`` while a loss is traced."""
    calls = []
    original = jax.vmap

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(jax, "vmap", counting)
    return calls


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_single_output_traces_no_vmap(name, vmap_calls):
    jax.make_jaxpr(lambda x: SINGLE[name](functools.partial(nets.mlp, SP), x))(X)
    assert vmap_calls == []


def test_several_outputs_keep_the_batched_path(vmap_calls):
    # The counter sees the vmap of the multi-output modes (so the test above can fail).
    jax.make_jaxpr(lambda x: losses.jacobian_matching_loss(
        functools.partial(nets.mlp, SP), TEACHER, x, outputs="top_k", k=2))(X)
    assert len(vmap_calls) >= 2


def _batched_rows_of_vjp(vjp, cotangents):
    (g,) = jax.vmap(vjp)(cotangents)
    return g


def _batched_tangents(fn, x, u):
    return jax.vmap(lambda ui: jax.jvp(fn, (x,), (ui,))[1])(u)


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_direct_path_equals_batched_path(name, monkeypatch):
    def value_and_grad(x):
        return jax.jit(jax.value_and_grad(
            lambda p: jnp.sum(SINGLE[name](functools.partial(nets.mlp, p), x))))(SP)

    direct_value, direct_grad = value_and_grad(X)
    # The batched (pre-issue-9) path: a vmap over a size-1 axis of cotangents / tangents.
    monkeypatch.setattr(_common, "rows_of_vjp", _batched_rows_of_vjp)
    monkeypatch.setattr(_common, "tangents", _batched_tangents)
    batched_value, batched_grad = value_and_grad(X)
    # Same operations up to XLA's fusion and reduction order: float32 round-off. Each
    # value or gradient entry is a sum of at most B * HIDDEN = 32 products, so reordering
    # moves it by at most ~32 ulp of the largest term; allow 16 ulp (2^-23 each) of the
    # largest entry (measured: 0-4 ulp).
    ulp = np.finfo(np.float32).eps
    np.testing.assert_allclose(direct_value, batched_value, rtol=16 * ulp)
    for a, b in zip(jax.tree.leaves(direct_grad), jax.tree.leaves(batched_grad)):
        np.testing.assert_allclose(a, b, rtol=0, atol=16 * ulp * float(jnp.max(jnp.abs(b))))
