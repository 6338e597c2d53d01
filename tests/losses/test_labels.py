"""An out-of-range label under jit is visible (a NaN row), never a silent 0."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import losses, training
from tests.losses import nets

D = 4
TP, SP = nets.pair(D)
TEACHER = functools.partial(nets.mlp, TP)
STUDENT = functools.partial(nets.mlp, SP)
X = jax.random.normal(jax.random.key(3), (nets.BATCH, D))
BAD = jnp.array([0, nets.CLASSES, -1, 2], jnp.int32)  # rows 1 and 2 out of [0, K)
GOOD = jnp.array([0, 0, 0, 2], jnp.int32)


@pytest.mark.parametrize("remat_chunks", [None, 2])
def test_jacobian_matching_label_out_of_range_under_jit_is_nan(remat_chunks):
    @jax.jit
    def loss(params, y):
        return losses.jacobian_matching_loss(functools.partial(nets.mlp, params), TEACHER, X,
                                             labels=y, outputs="label",
                                             remat_chunks=remat_chunks)

    bad, good = loss(SP, BAD), loss(SP, GOOD)
    np.testing.assert_array_equal(np.isnan(bad), [False, True, True, False])
    # The in-range rows are untouched (same per-example program, same values).
    np.testing.assert_allclose(bad[np.array([0, 3])], good[np.array([0, 3])], rtol=1e-6)
    assert np.all(good > 0)
    # The batch loss is NaN (the training loop's guard reports it) while its gradient
    # is the finite gradient of the in-range rows: the NaN is a constant.
    total, grads = jax.value_and_grad(lambda p: jnp.sum(loss(p, BAD)))(SP)
    assert np.isnan(total)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_cross_entropy_term_label_out_of_range_under_jit_is_nan():
    term = training.cross_entropy()
    logits = STUDENT(X)

    @jax.jit
    def values(y):
        inputs = training.TermInputs(x=X, labels=y, student_logits=logits, student_features={},
                                     student_fn=STUDENT, student_feature_fn=lambda name: None)
        return term.fn(inputs, jax.random.key(0))

    bad, good = values(BAD), values(GOOD)
    # Without the guard optax reads -1 as class K-1 and K as a clamped index: finite values.
    np.testing.assert_array_equal(np.isnan(bad), [False, True, True, False])
    np.testing.assert_allclose(bad[np.array([0, 3])], good[np.array([0, 3])], rtol=1e-6)
