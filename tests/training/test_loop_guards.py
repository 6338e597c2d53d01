"""The train loop's guards: a NaN gradient behind a finite loss, no duplicate records."""

import jax.numpy as jnp
import optax
import pytest

from jaxkd import training
from tests.training import _helpers as h

OPTIMIZER = optax.sgd(0.05)


class Finite(h.ArrayIterator):
    """``ArrayIterator`` that ends after ``num_batches`` batches."""

    def __init__(self, x, y, num_batches):
        super().__init__(x, y)
        self.left = num_batches

    def __next__(self):
        if self.left == 0:
            raise StopIteration
        self.left -= 1
        return super().__next__()


def _train(workdir, objective, data, **kwargs):
    return training.train(h.student(), objective, OPTIMIZER, data, workdir=workdir,
                          mesh=training.data_mesh(1), progress=False, tensorboard=False,
                          **kwargs)


def test_nan_gradient_behind_a_finite_loss_stops_before_saving(tmp_path):
    def sqrt_at_zero(inputs, key):
        # Value 0 (finite); d sqrt(s)/ds at s = 0 is inf, times 0 gives a NaN gradient.
        diff = inputs.student_logits - jnp.zeros_like(inputs.student_logits)
        return jnp.sqrt(jnp.sum(jnp.square(diff - diff), axis=-1))
    objective = training.Objective(training.cross_entropy(),
                                   training.Term("sqrt0", 1.0, sqrt_at_zero, needs_teacher=False))
    x, y = h.images(32)
    with pytest.raises(training.NonFiniteLossError, match="non-finite gradient at step 1"):
        _train(tmp_path, objective, h.ArrayIterator(x, y), num_steps=2, checkpoint_every=1)
    with training.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_step() is None  # the NaN state was never written


def test_data_ending_on_a_logged_step_logs_it_once(tmp_path):
    x, y = h.images(64)
    # The data ends at step 4, a logged step (log_every=2) between checkpoints (every 3).
    _train(tmp_path, training.Objective(training.cross_entropy()), Finite(x, y, 4),
           log_every=2, checkpoint_every=3)
    assert [r["step"] for r in training.read_metrics(tmp_path, split="train")] == [2, 4]


def test_rerunning_a_finished_run_does_not_repeat_its_evaluation(tmp_path):
    x, y = h.images(64)
    for _ in range(2):  # the second run restores step 2 and trains nothing
        _train(tmp_path, training.Objective(training.cross_entropy()), h.ArrayIterator(x, y),
               num_steps=2, eval_data=lambda: [{"image": x[:16], "label": y[:16]}])
    assert [r["step"] for r in training.read_metrics(tmp_path, split="eval")] == [2]
