"""Study 3 end to end on its smoke configs, every row of the paper's table; its student
and its oracle."""

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import _fit, _study, _sweep, _workdir, transfer
from jaxkd import models, training
from tests.experiments.conftest import write_fashion


@pytest.mark.slow
def test_transfer_every_loss_term(smoke, tmp_path):
    # The smoke rows reach every term: CE only, the oracle's initialisation, LwF +
    # Jacobians, LwF + attention + attention Jacobians (the other rows are subsets).
    config = smoke("transfer_digits", teacher_only=True)
    only = transfer.run(config, str(tmp_path))  # trains the teacher and stops
    assert set(only) == {"teacher"} and not os.path.exists(tmp_path / "cells")
    config.teacher_only = False
    summary = transfer.run(config, str(tmp_path))  # reuses the cached teacher
    labels = {r["label"] for r in summary["rows"]}
    assert labels == {transfer.LABELS[m] for m in config.methods}
    assert all(0 <= r["mean"] <= 100 for r in summary["rows"])
    assert os.path.getsize(os.path.join(tmp_path, "transfer_accuracy.png")) > 0
    # No gain pair has both of its methods among the smoke rows: no gain table or plot.
    assert summary["paired_gains"] == [] and summary["plots"] == [
        os.path.join(tmp_path, "transfer_accuracy.png")]
    # Each method trained with its own loss terms, logged and finite at every train record.
    expected = {"no_transfer": {"ce"}, "finetune": {"ce"},
                "lwf+jacobian": {"ce", "lwf", "lwf_jacobian"},
                "lwf+attention+attention_jacobian": {"ce", "lwf", "attention",
                                                     "attention_jacobian"}}
    assert set(config.methods) == set(expected)
    for method, terms in expected.items():
        cell = _sweep.cell_dir(str(tmp_path), _sweep.Cell(method, 5, 0))
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


def test_finetune_oracle_starts_from_the_teacher(smoke):
    config = smoke("transfer_digits")  # a SmallCNN teacher

    class Shape:  # make_student reads only these two attributes of the data
        image_shape, num_classes = (8, 8, 1), 5

    trained = models.split(_fit.build_model(config.teacher, image_shape=(8, 8, 1),
                                            num_classes=5, seed=0))
    oracle = transfer.make_student(config, _study.StudyData(Shape, Shape), "finetune",
                                   seed=1, teacher=trained)
    teacher = models.merge(*trained)
    for name in ("conv1", "conv2", "dense"):
        np.testing.assert_array_equal(getattr(oracle, name).kernel[...],
                                      getattr(teacher, name).kernel[...])
    assert not np.array_equal(oracle.head.kernel[...], teacher.head.kernel[...])


@pytest.mark.slow
def test_transfer_fashion_smoke(smoke, tmp_path):
    data_dir = write_fashion(tmp_path / "data")
    config = smoke("transfer_fashion", data_dir=data_dir)
    workdir = str(tmp_path / "run")
    summary = transfer.run(config, workdir)
    assert {r["method"] for r in summary["rows"]} == set(config.methods)
    assert all(0 <= r["mean"] <= 100 for r in summary["rows"])
    # The added terms' weights come from the search (one candidate each here: its runs
    # are the cells of size 2, seed 0, copied; the time counts them once).
    search = summary["weight_search"]
    assert {m: e["chosen"] for m, e in search["methods"].items()} == {
        "lwf+jacobian": {"jacobian.weight": 10.0},
        "lwf+attention+attention_jacobian": {"attention_jacobian.weight": 1.0,
                                             "attention.weight": 10.0}}
    for method, entry in search["methods"].items():
        main = json.loads(Path(_workdir.result_path(_sweep.cell_dir(
            workdir, _sweep.Cell(method, 2, 0)))).read_text())
        assert main["loss_weights"] == entry["chosen"] and "reused_from" in main
    assert "Loss weights chosen on validation" in Path(workdir, "results.md").read_text()
    # 2 per class x 5 target classes = 10 images: the floor of 12 steps, both kinds.
    assert summary["budget"] == {"students n=2": 12, "finetune n=2": 12}
    assert summary["target"].endswith("[5, 6, 7, 8, 9]")
