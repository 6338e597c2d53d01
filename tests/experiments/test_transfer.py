"""Study 3 end to end on a tiny config, every row of the paper's table."""

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import _common, transfer
from jaxkd import models, training


def test_transfer_every_loss_term(tiny, tmp_path):
    # Four rows reach every term: CE only, the oracle's initialisation, LwF + Jacobians,
    # LwF + attention + attention Jacobians (the other two rows are subsets of these).
    methods = "no_transfer,finetune,lwf+jacobian,lwf+attention+attention_jacobian"
    config = tiny("transfer_digits", examples_per_class="5", num_seeds="1", methods=methods,
                  **{"train.batch_size": "10", "finetune_train.num_steps": "12",
                     "finetune_train.batch_size": "10", "finetune_train.num_evals": "2",
                     # Small networks compile faster; the roles stay the same.
                     "teacher.name": "small_cnn", "teacher.width": "4", "teacher.hidden": "8",
                     "student.width": "4", "student.hidden": "8"})
    _common.apply_override(config, "teacher_only", "true")
    only = transfer.run(config, str(tmp_path))  # trains the teacher and stops
    assert set(only) == {"teacher"} and not os.path.exists(tmp_path / "cells")
    _common.apply_override(config, "teacher_only", "false")
    summary = transfer.run(config, str(tmp_path))  # reuses the cached teacher
    labels = {r["label"] for r in summary["rows"]}
    assert labels == {transfer.LABELS[m] for m in methods.split(",")}
    assert all(0 <= r["mean"] <= 100 for r in summary["rows"])
    assert os.path.getsize(os.path.join(tmp_path, "transfer_accuracy.png")) > 0
    # Each method trained with its own loss terms, logged and finite at every train record.
    expected = {"no_transfer": {"ce"}, "finetune": {"ce"},
                "lwf+jacobian": {"ce", "lwf", "lwf_jacobian"},
                "lwf+attention+attention_jacobian": {"ce", "lwf", "attention",
                                                     "attention_jacobian"}}
    for method, terms in expected.items():
        cell = _common.cell_dir(str(tmp_path), _common.Cell(method, 5, 0))
        records = training.read_metrics(cell, "train")
        assert records, method
        for record in records:
            logged = {k.removeprefix("loss/") for k in record if k.startswith("loss/")}
            assert logged == terms, (method, record["step"], logged)
            for term in terms:
                value = record[f"loss/{term}"]
                assert isinstance(value, float) and np.isfinite(value), (method, term, value)


def test_lwf_student_splits_its_head():
    backbone = models.SmallCNN(1, 7, width=4, hidden=8, rngs=nnx.Rngs(0))
    student = transfer.LwFStudent(backbone, 3, [("block1", "stage1")])
    x = jnp.ones((2, 8, 8, 1))
    logits, features = student(x, return_features=True)
    full = backbone(x)
    np.testing.assert_allclose(logits, full[:, :3])
    np.testing.assert_allclose(features[transfer.SOURCE_TAP][:, 0, 0, :], full[:, 3:])
    assert "stage1" in features and "block2" in features


def test_finetune_oracle_starts_from_the_teacher(tiny):
    # A SmallCNN teacher: building a VGG-9 compiles ~30 initialisers (seconds on a CPU).
    config = tiny("transfer_digits", **{"teacher.name": "small_cnn", "teacher.width": "4",
                                        "teacher.hidden": "8"})

    class Shape:  # make_student reads only these two attributes of the data
        image_shape, num_classes = (8, 8, 1), 5

    trained = models.split(_common.build_model(config.teacher, image_shape=(8, 8, 1),
                                               num_classes=5, seed=0))
    oracle = transfer.make_student(config, Shape, Shape, "finetune", seed=1, teacher=trained)
    teacher = models.merge(*trained)
    for name in ("conv1", "conv2", "dense"):
        np.testing.assert_array_equal(getattr(oracle, name).kernel[...],
                                      getattr(teacher, name).kernel[...])
    assert not np.array_equal(oracle.head.kernel[...], teacher.head.kernel[...])
