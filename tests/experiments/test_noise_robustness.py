"""experiments.noise_robustness: noisy images clipped to [0, 1], draws shared by the
methods of a seed, the logit drift and spread by hand, its per-run cache, the paired
gains under noise. (Its end-to-end run on study 1's work directory: test_limited_data.py
and the test below.)"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from experiments import _data, noise_robustness
from experiments._runs import Cell


@pytest.fixture(scope="module")
def prepared():
    return _data.load_data("digits")


def _raw(prepared, images):
    return images * prepared.std + prepared.mean


def test_noisy_images_are_clipped_to_the_pixel_range_and_share_the_draw(prepared):
    clipped = noise_robustness.noisy_images(prepared, 0.5, seed=0, draw=1)
    unclipped = noise_robustness.noisy_images(prepared, 0.5, seed=0, draw=1, clip=False)
    raw_clipped, raw_unclipped = _raw(prepared, clipped), _raw(prepared, unclipped)
    assert raw_clipped.min() >= -1e-5 and raw_clipped.max() <= 1 + 1e-5
    assert raw_unclipped.min() < -0.5 and raw_unclipped.max() > 1.5
    # The same draw: clipping the unclipped reading gives the clipped one.
    np.testing.assert_allclose(raw_clipped, np.clip(raw_unclipped, 0, 1), atol=1e-5)
    # Draws differ from one another and from another seed's; a draw is reproducible.
    again = noise_robustness.noisy_images(prepared, 0.5, seed=0, draw=1)
    np.testing.assert_array_equal(clipped, again)
    assert not np.allclose(clipped, noise_robustness.noisy_images(prepared, 0.5, 0, draw=2))
    assert not np.allclose(clipped, noise_robustness.noisy_images(prepared, 0.5, 1, draw=1))


def test_drift_and_spread_by_hand():
    clean = np.zeros((2, 2))
    # Image 0: draws (1, 0) and (3, 0): mean (2, 0); image 1: (0, 1) and (0, 1).
    draws = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[3.0, 0.0], [0.0, 1.0]])]
    drift, spread = noise_robustness.drift_and_spread(clean, draws)
    # spread: image 0: ((1-2)^2 + (3-2)^2) / (2-1) = 2; image 1: 0; mean 1.
    assert spread == pytest.approx(1.0)
    # drift: ||mean - clean||^2 = 4 and 1 (mean 2.5), less spread / D = 0.5.
    assert drift == pytest.approx(2.0)
    # Many draws of pure noise around a fixed shift: drift -> shift^2, spread -> variance.
    rng = np.random.default_rng(0)
    draws = [1.0 + 0.5 * rng.standard_normal((4000, 1)) for _ in range(5)]
    drift, spread = noise_robustness.drift_and_spread(np.zeros((4000, 1)), draws)
    assert drift == pytest.approx(1.0, abs=0.02) and spread == pytest.approx(0.25, rel=0.05)


def test_gradient_stats_by_hand():
    student = np.array([[3.0, 4.0], [0.0, 2.0]])
    teacher = np.array([[3.0, 4.0], [1.0, 0.0]])
    out = noise_robustness.gradient_stats(student, teacher)
    assert out == {"grad_norm": pytest.approx(3.5), "grad_cosine": pytest.approx(0.5)}


def _measure(accuracy, reading="clipped"):
    return {"accuracy": {reading: accuracy}}


def test_noise_gains_are_paired_by_seed_per_size_and_sigma():
    acc = {("kd+ce", 0): {0.0: 0.70, 0.1: 0.40}, ("kd+jacobian+ce", 0): {0.0: 0.72, 0.1: 0.35},
           ("kd+ce", 1): {0.0: 0.60, 0.1: 0.30}, ("kd+jacobian+ce", 1): {0.0: 0.64, 0.1: 0.31}}
    per_cell = {Cell(m, 10, s): _measure(a) for (m, s), a in acc.items()}
    rows = noise_robustness.noisy_gains(per_cell, ("kd+ce", "kd+jacobian+ce", "ce"), [10],
                                        [0.0, 0.1], [0, 1], reading="clipped")
    got = {r["sigma"]: r["values"] for r in rows}
    assert got[0.0] == pytest.approx([2.0, 4.0]) and got[0.1] == pytest.approx([-5.0, 1.0])
    assert {r["label"] for r in rows} == {"KD + Jacobians + CE vs KD + CE"}


def test_robustness_is_the_paired_difference_in_drop_from_clean():
    """The noisy-accuracy gain above (-5, +1 at sigma 0.1) holds the clean gain (+2, +4);
    the drop gain takes it out: (35 - 72) - (40 - 70) = -7 and (31 - 64) - (30 - 60) = -3."""
    acc = {("kd+ce", 0): {0.0: 0.70, 0.1: 0.40}, ("kd+jacobian+ce", 0): {0.0: 0.72, 0.1: 0.35},
           ("kd+ce", 1): {0.0: 0.60, 0.1: 0.30}, ("kd+jacobian+ce", 1): {0.0: 0.64, 0.1: 0.31}}
    per_cell = {Cell(m, 10, s): _measure(a) for (m, s), a in acc.items()}
    rows = noise_robustness.drop_gains(per_cell, ("kd+ce", "kd+jacobian+ce"), [10],
                                       [0.0, 0.1], [0, 1], reading="clipped")
    assert [r["sigma"] for r in rows] == [0.1]  # sigma 0 drops nothing
    (row,) = rows
    assert row["values"] == pytest.approx([-7.0, -3.0]) and row["quantity"] == "drop"
    # Two seeds: mean -5, paired sd 2*sqrt(2), so -5 -/+ t(0.975, 1) * 2 = -5 -/+ 25.41.
    assert row["mean"] == pytest.approx(-5.0)
    assert row["ci95"] == pytest.approx([-5.0 - 12.7062 * 2, -5.0 + 12.7062 * 2], abs=1e-3)
    assert noise_robustness.drop_gains(per_cell, ("kd+ce", "kd+jacobian+ce"), [10], [0.1],
                                       [0, 1]) == []  # no clean column to drop from


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A smoke study 1 and 2 with both readings (one method, one size)."""
    from tests.experiments.conftest import smoke_config
    config = smoke_config("limited_data_digits", methods=("logits+ce",),
                          examples_per_class=(5,), noise_sigmas=(0.0, 0.3),
                          noise_both_readings=True, noise_draws=3)
    workdir = str(tmp_path_factory.mktemp("noise"))
    return config, workdir, noise_robustness.run(config, workdir)


def test_study_reports_both_readings_draws_and_sensitivity(trained):
    config, workdir, summary = trained
    assert summary["reading"] == "clipped" and summary["other_reading"] == "unclipped"
    assert summary["draws"] == 3
    cache = json.loads(Path(workdir, "cells", "logits-ce", "n5", "seed0",
                            noise_robustness.NOISE_FILE).read_text())
    noisy = cache["evals"][noise_robustness.eval_key("clipped", 0.3, 3)]
    assert len(noisy["accuracy"]) == 3 and noisy["spread"] > 0
    row = next(r for r in summary["rows"] if r["method"] == "logits+ce" and r["sigma"] == 0.3)
    assert row["mean"] == pytest.approx(100 * np.mean(noisy["accuracy"]))
    quantities = {(r["method"], r["quantity"]) for r in summary["sensitivity"]
                  if r["num_seeds"]}
    assert {("logits+ce", q) for q in ("grad_norm", "grad_cosine", "drift", "spread")} <= \
        quantities
    teacher_cos = next(r for r in summary["sensitivity"]
                       if r["method"] == "teacher" and r["quantity"] == "grad_cosine")
    assert teacher_cos["mean"] == pytest.approx(1.0, abs=1e-5)
    md = Path(workdir, "results.md").read_text()
    assert "cosine with the teacher's gradient" in md and "unclipped (for comparison)" in md
    assert "drift σ=0.3" in md
    csv_rows = list(csv.DictReader(Path(workdir, "results.csv").read_text().splitlines()))
    assert {(r["kind"], r["reading"]) for r in csv_rows
            if r["study"] == "noise_robustness"} >= {
        ("accuracy", "clipped"), ("accuracy", "unclipped"), ("sensitivity", "clipped")}
    assert Path(workdir, "sensitivity.png").stat().st_size > 0


def test_a_damaged_noise_cache_is_evaluated_again(trained, capsys):
    config, workdir, summary = trained
    path = Path(workdir, "cells", "logits-ce", "n5", "seed0", noise_robustness.NOISE_FILE)
    before = json.loads(path.read_text())["evals"]
    path.write_text('{"version": 2, "evals": {"clip')
    again = noise_robustness.run(config, workdir)
    assert "unreadable" in capsys.readouterr().err
    after = json.loads(path.read_text())["evals"]
    assert after.keys() == before.keys()
    for key, entry in before.items():  # the same draws give the same numbers
        for name, value in entry.items():
            assert after[key][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, name)
    assert [r["mean"] for r in again["rows"]] == pytest.approx(
        [r["mean"] for r in summary["rows"]])


def test_logits_and_gradients_on_a_mesh_equal_those_on_one_device(prepared):
    # 8 devices split each batch of 64 (the last, of 39 of the 359 test images, padded);
    # the numbers are those of one device, and the gradients those of the raw pixels.
    import jax
    from experiments import _fit
    from experiments.configs import _base
    from jaxkd import training
    model = _fit.build_model(_base.model_spec("small_cnn", width=4, hidden=(8,)),
                             image_shape=prepared.image_shape,
                             num_classes=prepared.num_classes, seed=0)
    train = _base.train_config()
    mesh = jax.make_mesh((8,), (training.DATA_AXIS,))
    single = _fit.template_state(model, train, jax.make_mesh((1,), (training.DATA_AXIS,)))
    sharded = _fit.template_state(model, train, mesh)
    images = prepared.splits.test.images
    one = noise_robustness.logits(single, images, None, 64)
    many = noise_robustness.logits(sharded, images, mesh, 64)
    assert one.shape == (len(images), 10)
    np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5)
    raw, classes = prepared.raw_test[:20], np.argmax(one[:20], -1)
    grads = noise_robustness.class_gradients(sharded, raw, classes, prepared, mesh, 64)
    np.testing.assert_allclose(
        grads, noise_robustness.class_gradients(single, raw, classes, prepared, None, 64),
        rtol=1e-4, atol=1e-6)
    # Against a finite difference in one raw pixel of the first image.
    eps, pixel = 1e-2, 30
    bumped = raw[:1].copy().reshape(1, -1)
    bumped[0, pixel] += eps
    bumped = bumped.reshape(raw[:1].shape)
    normalised = lambda r: ((r - prepared.mean) / prepared.std).astype(np.float32)  # noqa
    up = noise_robustness.logits(single, normalised(bumped), None, 64)[0, classes[0]]
    down = noise_robustness.logits(single, normalised(raw[:1]), None, 64)[0, classes[0]]
    assert grads[0, pixel] == pytest.approx((up - down) / eps, rel=0.05, abs=1e-3)


def test_noise_caches_name_the_teacher_they_were_measured_against(tmp_path):
    """A student's cosine with the teacher's gradient, and the teacher's own measures,
    are cached under the teacher's identity: a retrained or another teacher is measured
    afresh, never read from the old one's cache."""
    from experiments import _runs
    first, other = tmp_path / "teacher", tmp_path / "elsewhere"
    for d in (first, other):
        d.mkdir()
        _runs.write_json(d / "config.json", {_runs.RUN_CONFIG: {"teacher_seed": 0}})
    tid = noise_robustness.teacher_id(str(first))
    assert tid == noise_robustness.teacher_id(str(first))
    assert tid != noise_robustness.teacher_id(str(other))  # another directory
    _runs.write_json(first / "config.json", {_runs.RUN_CONFIG: {"teacher_seed": 1}})
    assert tid != noise_robustness.teacher_id(str(first))  # retrained with another config
    assert noise_robustness.gradient_key(100, tid) != noise_robustness.gradient_key(100, "")


def test_teacher_only_stops_study_2_after_the_teacher(smoke, tmp_path, monkeypatch):
    """With teacher_only, study 2 trains the teacher and returns: no cell, no noise."""
    from experiments import _study

    def no_sweep(session):
        raise AssertionError("teacher_only trained the cells")
    monkeypatch.setattr(_study, "sweep", no_sweep)
    config = smoke("limited_data_digits", teacher_only=True)
    summary = noise_robustness.run(config, str(tmp_path))
    assert set(summary) == {"teacher"} and summary["teacher"]["last"]["test"] > 0
    assert noise_robustness.console(summary) == ""
    assert not list(tmp_path.rglob(noise_robustness.NOISE_FILE))
