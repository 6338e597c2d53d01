"""Every network loss runs data-parallel under an Explicit-axis mesh and is unchanged.

``jax.make_mesh`` creates Explicit axes by default (recent jax): cotangents, probes and
noise must then carry the batch sharding of the arrays they pair with.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxkd import losses
from tests.losses import nets

D = 4
TP, SP = nets.pair(D)
TEACHER = functools.partial(nets.mlp, TP)
STUDENT = functools.partial(nets.mlp, SP)
KEY = jax.random.key(0)


def feats(params):
    def fn(x):  # [B, D] -> [B, 2, 2, 2] feature map
        return jnp.tanh(x @ params["w1"][:, :8]).reshape(x.shape[0], 2, 2, 2)
    return fn


CALLS = {
    "jm_top1": lambda x, y: losses.jacobian_matching_loss(STUDENT, TEACHER, x),
    "jm_label": lambda x, y: losses.jacobian_matching_loss(STUDENT, TEACHER, x, labels=y,
                                                           outputs="label"),
    "jm_label_remat": lambda x, y: losses.jacobian_matching_loss(
        STUDENT, TEACHER, x, labels=y, outputs="label", remat_chunks=2),
    "jm_all": lambda x, y: losses.jacobian_matching_loss(STUDENT, TEACHER, x, outputs="all",
                                                         normalize=False),
    "vjp": lambda x, y: losses.vjp_projection_loss(STUDENT, TEACHER, x, key=KEY, num_probes=2),
    "jvp": lambda x, y: losses.jvp_projection_loss(STUDENT, TEACHER, x, key=KEY, num_probes=2),
    "noisy": lambda x, y: losses.noisy_distillation_loss(STUDENT, TEACHER, x, key=KEY,
                                                         sigma=0.1, num_samples=2),
    "sq_expansion": lambda x, y: losses.squared_noise_expansion(STUDENT, TEACHER, x, sigma=0.1),
    "ce_expansion": lambda x, y: losses.cross_entropy_noise_expansion(
        STUDENT, TEACHER, x, sigma=0.1, curvature="hutchinson", key=KEY),
    "attention_jacobian": lambda x, y: losses.attention_jacobian_loss(feats(SP), feats(TP), x),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_loss_under_explicit_data_sharding_equals_unsharded(name):
    x = jax.random.normal(jax.random.key(1), (16, D))
    y = jnp.arange(16, dtype=jnp.int32) % nets.CLASSES
    want = jax.jit(CALLS[name])(x, y)
    mesh = jax.make_mesh((8,), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        got = jax.jit(CALLS[name])(jax.device_put(x, sharding), jax.device_put(y, sharding))
    assert got.shape == (16,)
    # Same program, partitioned: only reduction order may differ (float32 round-off).
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
