"""Study 3 end to end on its smoke configs, every row of the paper's table; its student
and its oracle."""

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import _data, _fit, _probe, _runs, _study, transfer
from jaxkd import data, models, training
from tests.experiments import test_commands


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
        cell = _runs.cell_dir(str(tmp_path), _runs.Cell(method, 5, 0))
        records = training.read_metrics(cell, "train")
        assert records, method
        for record in records:
            logged = {k.removeprefix("loss/") for k in record if k.startswith("loss/")}
            assert logged == terms, (method, record["step"], logged)
            for term in terms:
                value = record[f"loss/{term}"]
                assert isinstance(value, float) and np.isfinite(value), (method, term, value)
    check_teacher_probe(config, summary, tmp_path)


def check_teacher_probe(config, summary, workdir):
    """The probe's rows: every input x size x split over every seed, in results.csv and
    results.md; a re-run reads them from teacher_probe.json without fitting again."""
    rows = summary["teacher_probe"]
    sizes, seeds = list(config.examples_per_class), _runs.seeds(config)
    assert [(r["method"], r["examples_per_class"], r["split"]) for r in rows] == [
        (f"probe:{name}", n, split) for name in _probe.INPUTS for n in sizes
        for split in _probe.SPLITS]
    for r in rows:
        assert r["num_seeds"] == len(seeds) == len(r["values"]), r
        assert all(0 <= v <= 100 for v in r["values"]), r
    assert {r["label"] for r in rows if r["method"] == "probe:outputs"} == {
        "teacher outputs (5 source logits, what LwF distils)"}
    workdir = Path(workdir)
    csv = (workdir / "results.csv").read_text()
    assert csv.count("transfer,teacher_probe,probe:") == len(rows)
    md = (workdir / "results.md").read_text()
    assert "What the teacher knows about the target task (linear probe)" in md
    assert "Reading (test accuracy, means over seeds):" in md
    cached = json.loads((workdir / _probe.PROBE_FILE).read_text())["fits"]
    assert {f"{name}/n{n}/seed{s}" for name in _probe.INPUTS for n in sizes
            for s in seeds} <= set(cached)

    def refit(*args, **kwargs):
        raise AssertionError("the probe was fitted again")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_probe, "fit_probe", refit)
        again = transfer.run(config, str(workdir))  # every cell, the teacher and the probe
    assert again["teacher_probe"] == rows


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
def test_transfer_fashion_smoke(smoke, tmp_path, monkeypatch, capsys):
    # The config's documented command (test_commands.py) makes the work directory checked
    # here, so the smoke study trains once in the suite; the run below reuses every run.
    monkeypatch.chdir(tmp_path)
    data_dir = test_commands.run_group("runs/transfer_fashion", tmp_path, capsys)
    config = smoke("transfer_fashion", data_dir=data_dir)
    workdir = str(tmp_path / "runs" / "transfer_fashion")
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
        main = json.loads(Path(_runs.result_path(_runs.cell_dir(
            workdir, _runs.Cell(method, 2, 0)))).read_text())
        assert main["loss_weights"] == entry["chosen"] and "reused_from" in main
    assert "Loss weights chosen on validation" in Path(workdir, "results.md").read_text()
    # 2 per class x 5 target classes = 10 images: the floor of 12 steps, both kinds.
    assert summary["budget"] == {"students n=2": 12, "finetune n=2": 12}
    assert summary["target"].endswith("[5, 6, 7, 8, 9]")


def test_probe_fit_known_values():
    # Features that separate the classes: ~100 %; a constant input: the intercepts alone,
    # one class for every example, i.e. exactly chance on balanced test sets.
    rng = np.random.default_rng(0)
    k, per_class = 4, 15
    y = np.repeat(np.arange(k), per_class)
    y_test = np.repeat(np.arange(k), 50)
    x = np.eye(k)[y] * 5 + rng.normal(0, 0.3, (len(y), k))
    x_test = np.eye(k)[y_test] * 5 + rng.normal(0, 0.3, (len(y_test), k))
    fit = _probe.fit_probe(x, y, {"test": (x_test, y_test), "train": (x, y)})
    assert fit["test"] == fit["train"] == 100.0 and fit["converged"]
    constant = _probe.fit_probe(np.ones((len(y), 3)), y,
                                {"test": (np.ones((len(y_test), 3)), y_test)})
    assert constant["test"] == pytest.approx(100.0 / k)
    # Images as inputs are flattened; an empty split scores NaN.
    images = _probe.fit_probe(x.reshape(-1, 2, 2, 1), y,
                              {"test": (x_test.reshape(-1, 2, 2, 1), y_test),
                               "empty": (x_test[:0].reshape(0, 2, 2, 1), y_test[:0])})
    assert images["test"] == 100.0 and np.isnan(images["empty"])


def test_probe_subset_is_the_students():
    # The probe's training rows of a size and seed are the images the students get.
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3, dtype=np.int32), 7)
    pool = data.Dataset(images=rng.normal(size=(21, 2, 2, 1)).astype(np.float32),
                        labels=labels, num_classes=3, name="pool",
                        class_names=("a", "b", "c"),
                        source_index=rng.permutation(100)[:21])
    for n, seed in ((2, 0), (2, 1), (5, 3), ("all", 0)):
        subset = _data.subset(pool, n, seed)
        rows = _probe.positions(pool, subset)
        np.testing.assert_array_equal(pool.images[rows], subset.images)
        np.testing.assert_array_equal(pool.labels[rows], subset.labels)
    other = _data.subset(pool, 2, 0)
    with pytest.raises(ValueError, match="not a subset"):
        _probe.positions(other, pool)


def test_probe_reads_features_before_the_head():
    teacher = models.vgg9(1, 5, width=4, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(9, 8, 8, 1)).astype(np.float32)
    features, logits = _probe.teacher_outputs(models.split(teacher), x, batch_size=4)
    assert features.shape == (9, 32) and logits.shape == (9, 5)  # VGG-9: 8w channels
    teacher.eval()
    np.testing.assert_allclose(logits, teacher(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(teacher.head(jnp.asarray(features)), logits, rtol=1e-5,
                               atol=1e-5)


def test_probe_reading_follows_the_numbers():
    def rows(n, features, outputs, pixels):
        return [{"method": f"probe:{name}", "examples_per_class": n, "split": "test",
                 "mean": mean, "std": 0.0, "num_seeds": 2}
                for name, mean in zip(_probe.INPUTS, (features, outputs, pixels))]
    low = rows(5, 80.0, 50.0, 60.0) + rows("all", 90.0, 70.0, 95.0)
    assert _probe.reading(low, {5: 70.0, "all": 85.0}) == (
        "Reading (test accuracy, means over seeds): the teacher's outputs carry less about "
        "the target classes than its features at every size (outputs vs features: 50.0 vs "
        "80.0 % at 5/class, 70.0 vs 90.0 % at all/class); raw pixels: 60.0 %, 95.0 %; the "
        "student trained from scratch: 70.0 %, 85.0 %.")
    mixed = rows(5, 80.0, 50.0, 60.0) + rows(10, 80.0, 85.0, 60.0)
    assert ("less about the target classes than its features at 5/class, at least as "
            "much at 10/class" in _probe.reading(mixed))
    assert "at least as much about the target classes as its features at every size" in (
        _probe.reading(rows(5, 80.0, 85.0, 60.0)))
    assert _probe.reading([]) == ""
