"""Every bad input of the loss library raises at trace time, naming the argument."""

import functools

import jax
import jax.numpy as jnp
import pytest

from jaxkd import losses
from tests.losses import nets

D = 4
TP, SP = nets.pair(D)
TEACHER = functools.partial(nets.mlp, TP)
STUDENT = functools.partial(nets.mlp, SP)
X = jnp.ones((nets.BATCH, D))
KEY = jax.random.key(0)
LOGITS = jnp.ones((4, 3))


def wide(x):  # a student with a different number of classes
    return jnp.concatenate([STUDENT(x), STUDENT(x)], axis=-1)


CASES = [
    (TypeError, "`student_logits` must have a floating dtype",
     lambda: losses.distillation_loss(jnp.ones((4, 3), jnp.int32), LOGITS)),
    (ValueError, "same batch size", lambda: losses.distillation_loss(LOGITS, jnp.ones((5, 3)))),
    (ValueError, "same number of classes K",
     lambda: losses.logit_matching_loss(LOGITS, jnp.ones((4, 2)))),
    (ValueError, "must have rank 2", lambda: losses.logit_matching_loss(jnp.ones(3), LOGITS)),
    (ValueError, "`temperature` must be > 0",
     lambda: losses.distillation_loss(LOGITS, LOGITS, temperature=0.0)),
    (ValueError, '`outputs="label"` needs `labels`',
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="label")),
    (TypeError, "`labels` must have an integer dtype",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="label",
                                           labels=jnp.zeros(4))),
    (ValueError, "`labels` must have shape \\[4\\]",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="label",
                                           labels=jnp.zeros(3, jnp.int32))),
    (ValueError, "`labels` must be class indices in \\[0, 3\\)",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="label",
                                           labels=jnp.array([0, 1, 3, 2], jnp.int32))),
    (ValueError, "`outputs` must be one of",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="top5")),
    (ValueError, "`k` must be <= the number of classes K=3",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="top_k", k=4)),
    (ValueError, "`k` must be an integer >= 1",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="top_k", k=0)),
    (ValueError, "same number of classes K",
     lambda: losses.jacobian_matching_loss(wide, TEACHER, X)),
    (TypeError, "`x` must have a floating dtype",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, jnp.ones((4, D), jnp.int32))),
    (ValueError, "`x` must have rank >= 2",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, jnp.ones(D))),
    (ValueError, "`num_probes` must be an integer >= 1",
     lambda: losses.vjp_projection_loss(STUDENT, TEACHER, X, key=KEY, num_probes=0)),
    (ValueError, "`num_probes` must be an integer >= 1",
     lambda: losses.jvp_projection_loss(STUDENT, TEACHER, X, key=KEY, num_probes=0)),
    (ValueError, "`num_probes` must be <= 4",
     lambda: losses.jvp_projection_loss(STUDENT, TEACHER, X, key=KEY, num_probes=5,
                                        distribution="orthogonal")),
    (ValueError, "`distribution` must be one of",
     lambda: losses.vjp_projection_loss(STUDENT, TEACHER, X, key=KEY, distribution="sobol")),
    (ValueError, "`key` is required",
     lambda: losses.vjp_projection_loss(STUDENT, TEACHER, X, key=None)),
    (ValueError, "`sigma` must be > 0",
     lambda: losses.noisy_distillation_loss(STUDENT, TEACHER, X, key=KEY, sigma=0.0)),
    (ValueError, "`sigma` must be > 0",
     lambda: losses.squared_noise_expansion(STUDENT, TEACHER, X, sigma=-1.0)),
    (ValueError, "`num_samples` must be an integer >= 1",
     lambda: losses.noisy_distillation_loss(STUDENT, TEACHER, X, key=KEY, sigma=0.1,
                                            num_samples=0)),
    (ValueError, "`kind` must be one of",
     lambda: losses.noisy_distillation_loss(STUDENT, TEACHER, X, key=KEY, sigma=0.1,
                                            kind="l1")),
    (ValueError, "`curvature` must be one of",
     lambda: losses.squared_noise_expansion(STUDENT, TEACHER, X, sigma=0.1, curvature="x")),
    (ValueError, "`key` is required",
     lambda: losses.cross_entropy_noise_expansion(STUDENT, TEACHER, X, sigma=0.1,
                                                  curvature="hutchinson")),
    (ValueError, "must have rank 4",
     lambda: losses.attention_map(jnp.ones((2, 3, 3)))),
    (ValueError, "spatial size",
     lambda: losses.attention_transfer_loss(jnp.ones((2, 3, 3, 1)), jnp.ones((2, 3, 4, 1)))),
    (ValueError, "non-empty sequences of the same length",
     lambda: losses.attention_transfer_loss([jnp.ones((2, 3, 3, 1))], [])),
]


@pytest.mark.parametrize("error,message,call", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_input_raises_with_a_clear_message(error, message, call):
    with pytest.raises(error, match=message):
        call()


def test_checks_run_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="same batch size"):
        jax.jit(losses.logit_matching_loss)(LOGITS, jnp.ones((5, 3)))


def test_student_batch_mismatch_is_reported():
    def drops_rows(x):
        return STUDENT(x)[:2]
    with pytest.raises(ValueError, match="same batch size|one row per example"):
        losses.jacobian_matching_loss(drops_rows, TEACHER, X)
