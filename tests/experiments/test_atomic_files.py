"""Files the studies write survive a kill or a full disk mid-write (issue 12, item 2):
each is the previous version or the new one, never a mixture; a damaged results.json is
rewritten, not a crash."""

import csv
import json
import os
import types
from pathlib import Path

import pytest

from experiments import _plots, _report, _workdir


class Killed(Exception):
    pass


@pytest.fixture
def fake_study(monkeypatch):
    """A study whose section is one row; its markdown and plot are trivial."""
    module = types.SimpleNamespace(
        markdown=lambda s: f"## fake\n\n{s['rows'][0]['mean']}",
        plots=lambda workdir, s: [])
    monkeypatch.setattr(_report, "_study", lambda name: module)


def _summary(mean):
    return {"rows": [{"method": "ce", "label": "CE", "examples_per_class": 5,
                      "checkpoint": "last", "mean": mean, "std": 0.0, "num_seeds": 1,
                      "values": [mean], "paper": None}]}


def test_results_files_are_the_old_or_the_new_version(tmp_path, fake_study, monkeypatch):
    _report.write(str(tmp_path), "limited_data", _summary(50.0))
    before = {name: Path(tmp_path, name).read_text() for name in
              ("results.json", "results.csv", "results.md")}
    assert "50.0" in before["results.csv"]

    def killed_midway(self, rows):
        raise Killed  # after the header: a file opened for writing is already cut short
    monkeypatch.setattr(csv.DictWriter, "writerows", killed_midway)
    with pytest.raises(Killed):
        _report.write(str(tmp_path), "limited_data", _summary(60.0))
    for name, text in before.items():
        assert Path(tmp_path, name).read_text() == text, name
    assert sorted(os.listdir(tmp_path)) == ["results.csv", "results.json", "results.md"]


def test_a_damaged_results_json_is_written_again(tmp_path, fake_study, capsys):
    Path(tmp_path, "results.json").write_text('{"transfer": {"rows": [')
    _report.write(str(tmp_path), "limited_data", _summary(70.0))
    assert set(json.loads(Path(tmp_path, "results.json").read_text())) == {"limited_data"}
    assert "results.json cannot be read" in capsys.readouterr().err


def test_write_json_syncs_before_it_renames(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace",
                        lambda a, b: (events.append("replace"), real_replace(a, b)))
    path = tmp_path / "run" / "result.json"
    _workdir.write_json(path, {"last": {"test": 0.5}})
    assert json.loads(path.read_text()) == {"last": {"test": 0.5}}
    assert events[:2] == ["fsync", "replace"]  # the data is on disk before the name


def test_a_plot_killed_mid_write_leaves_the_previous_one(tmp_path, monkeypatch):
    plt = _plots.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = _plots.save(fig, str(tmp_path), "accuracy.png")
    before = Path(path).read_bytes()
    assert before.startswith(b"\x89PNG")

    from matplotlib.figure import Figure
    real_savefig = Figure.savefig

    def dies_halfway(self, target, **kwargs):
        real_savefig(self, target, **kwargs)
        if hasattr(target, "truncate"):
            target.truncate(100)
        else:
            with open(target, "r+b") as f:
                f.truncate(100)
        raise Killed

    monkeypatch.setattr(Figure, "savefig", dies_halfway)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with pytest.raises(Killed):
        _plots.save(fig, str(tmp_path), "accuracy.png")
    assert Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["accuracy.png"]  # no temporary file left behind


@pytest.mark.parametrize("damage", ['{"accuracy": {"0.0": 0.5', '[1, 2]',
                                    '{"accuracy": [], "seconds": 1}'])
def test_a_damaged_noise_cache_is_evaluated_again(tmp_path, monkeypatch, capsys, damage):
    from experiments import noise_robustness
    path = tmp_path / noise_robustness.NOISE_FILE
    path.write_text(damage)
    evaluated = []

    def evaluate(state, batches, mesh):
        evaluated.append(batches)
        return 0.25 * batches

    monkeypatch.setattr(noise_robustness._fit, "evaluate", evaluate)
    out = noise_robustness.accuracies(str(tmp_path), lambda: "state", (0.0, 0.1),
                                      lambda s: 1 + 10 * s, mesh=None)
    assert out["accuracy"] == {0.0: 0.25, 0.1: 0.5} and evaluated == [1.0, 2.0]
    assert "unreadable" in capsys.readouterr().err
    # The rewritten cache is whole: the next call evaluates nothing.
    assert noise_robustness.accuracies(str(tmp_path), lambda: "state", (0.0, 0.1),
                                       lambda s: 1 + 10 * s, mesh=None)["accuracy"] == \
        out["accuracy"] and evaluated == [1.0, 2.0]


def test_noise_gains_are_paired_by_seed_per_size_and_sigma():
    from experiments import noise_robustness
    from experiments._sweep import Cell
    acc = {("kd+ce", 0): {0.0: 0.70, 0.1: 0.40}, ("kd+jacobian+ce", 0): {0.0: 0.72, 0.1: 0.35},
           ("kd+ce", 1): {0.0: 0.60, 0.1: 0.30}, ("kd+jacobian+ce", 1): {0.0: 0.64, 0.1: 0.31}}
    per_cell = {Cell(m, 10, s): {"accuracy": a} for (m, s), a in acc.items()}
    rows = noise_robustness.noisy_gains(per_cell, ("kd+ce", "kd+jacobian+ce", "ce"), [10],
                                        [0.0, 0.1], [0, 1])
    got = {r["sigma"]: r["values"] for r in rows}
    assert got[0.0] == pytest.approx([2.0, 4.0]) and got[0.1] == pytest.approx([-5.0, 1.0])
    assert {r["label"] for r in rows} == {"KD + Jacobians + CE vs KD + CE"}
