"""Bad data where it enters train() and evaluate(): out-of-range labels, empty batches."""

import jax
import numpy as np
import optax
import pytest

from jaxkd import training
from tests.training import _helpers as h

OPTIMIZER = optax.sgd(0.05)


def _train(workdir, data, **kwargs):
    return training.train(h.student(), training.Objective(training.cross_entropy()),
                          OPTIMIZER, data, workdir=workdir, num_steps=3, checkpoint_every=1,
                          log_every=1, mesh=training.data_mesh(2), progress=False,
                          tensorboard=False, **kwargs)


class InOrder(h.ArrayIterator):
    """Batches 0, 1, 2... of the arrays in order (so a row's step is known)."""

    def __next__(self):
        i = self.index
        self.index += self.batch
        return {"image": self.x[i:i + self.batch], "label": self.y[i:i + self.batch]}


@pytest.mark.parametrize("bad", [-1, h.NUM_CLASSES])
def test_out_of_range_label_stops_train_naming_step_and_value(tmp_path, bad):
    """Without the check, -1 trains towards class K-1 silently and K gives NaN."""
    x, y = h.images(64)
    y[h.BATCH + 3] = bad  # in the batch of step 2
    with pytest.raises(ValueError, match=rf"label {bad} in the batch of step 2 is out of "
                                         rf"range: labels must be integers in \[0, "
                                         rf"{h.NUM_CLASSES}\)"):
        _train(tmp_path, InOrder(x, y))
    with training.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 1  # the bad step was neither saved
    assert [r["step"] for r in training.read_metrics(tmp_path)] == [1]  # nor logged


def test_out_of_range_label_in_evaluation_raises_instead_of_nan(tmp_path):
    x, y = h.images(64)
    labels = np.array([0, 1, 2, 3, 4, 7, 0], np.int32)  # 7 rows: padded to 8 on 2 devices
    with pytest.raises(ValueError, match=r"label 7 in eval batch 1 \(0-based\) is out of "
                                         r"range"):
        _train(tmp_path, InOrder(x, y), eval_data=[{"image": x[:8], "label": y[:8]},
                                                   {"image": x[:7], "label": labels}])


def test_evaluate_checks_labels_against_the_student(tmp_path):
    mesh = training.data_mesh(1)
    state = training.init_train_state(h.student(), OPTIMIZER,
                                      key=jax.random.key(0))
    x, y = h.images(16)
    eval_step = training.make_eval_step(mesh)
    ok = training.evaluate(eval_step, state, [{"image": x, "label": y}], mesh)
    assert np.isfinite(ok["loss"])
    with pytest.raises(ValueError, match="label -2 in eval batch 0"):
        training.evaluate(eval_step, state, [{"image": x, "label": y - 2}], mesh)


def test_empty_batch_is_a_clear_error(tmp_path):
    x, y = h.images(64)

    class Empty(h.ArrayIterator):
        def __next__(self):
            return {"image": self.x[:0], "label": self.y[:0]}

    message = r"has labels of shape \(0,\); expected \[B\] with B >= 1"
    with pytest.raises(ValueError, match=r"train_data's batch for step 1 " + message):
        _train(tmp_path / "train", Empty(x, y))
    with pytest.raises(ValueError, match=r"eval batch 0 \(0-based\) " + message):
        _train(tmp_path / "eval", InOrder(x, y),
               eval_data=[{"image": x[:0], "label": y[:0]}])


def test_batch_without_labels_or_with_float_labels(tmp_path):
    x, y = h.images(64)

    class NoLabel(h.ArrayIterator):
        def __next__(self):
            return {"image": super().__next__()["image"]}

    class FloatLabel(h.ArrayIterator):
        def __next__(self):
            batch = super().__next__()
            return {"image": batch["image"], "label": batch["label"].astype(np.float32)}

    with pytest.raises(ValueError, match=r"must be a mapping with 'image' and 'label' "
                                         r"entries; got \['image'\]"):
        _train(tmp_path / "a", NoLabel(x, y))
    with pytest.raises(ValueError, match="labels of dtype float32; expected integer"):
        _train(tmp_path / "b", FloatLabel(x, y))
