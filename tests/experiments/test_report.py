"""experiments._report: differences paired by seed (by hand); results files that are the
old version or the new one, never a mixture; a damaged results.json is rewritten."""

import csv
import json
import math
import os
import types
from pathlib import Path

import pytest

from experiments import _report
from experiments._runs import Cell

# Test accuracy per (method, seed), "last" checkpoint. The seeds differ a lot from one
# another (0.50 .. 0.70) and "with" gains 2, 3, 4 points on seeds 0, 1, 2. Paired by seed
# the gains are [2, 3, 4]: mean 3, std 1. Any other pairing has the same mean (a mean of
# differences is the difference of means) but another spread, e.g. seeds reversed on one
# side gives [24, 3, -18] (std 21): the std is what catches wrong pairing.
WITHOUT = {0: 0.50, 1: 0.60, 2: 0.70}
WITH = {0: 0.52, 1: 0.63, 2: 0.74}
# "best" checkpoint: gains of -1, 1, 6 points (mean 2, std sqrt(13)).
WITHOUT_BEST = {0: 0.55, 1: 0.65, 2: 0.60}
WITH_BEST = {0: 0.54, 1: 0.66, 2: 0.66}


def _results(drop=()):
    results = {}
    for method, last, best in (("base", WITHOUT, WITHOUT_BEST), ("base+j", WITH, WITH_BEST)):
        for seed in range(3):
            if (method, seed) in drop:
                continue
            results[Cell(method, 5, seed)] = {"last": {"test": last[seed]},
                                              "best": {"test": best[seed]}}
    # Another size whose numbers would spoil the pairing if sizes were mixed up.
    for seed in range(3):
        results[Cell("base", "all", seed)] = {"last": {"test": 0.9}, "best": {"test": 0.9}}
        results[Cell("base+j", "all", seed)] = {"last": {"test": 0.9 + 0.01 * seed},
                                                "best": {"test": 0.9}}
    return results


def _gains(results, **kwargs):
    args = {"methods": ["base", "base+j"], "sizes": [5, "all"], "seeds": [0, 1, 2],
            "label": str.upper}
    return _report.paired_gains(results, [("base", "base+j")], **{**args, **kwargs})


def test_paired_by_seed_mean_and_std_by_hand():
    rows = _gains(_results())
    assert [(r["examples_per_class"], r["checkpoint"]) for r in rows] == [
        (5, "last"), (5, "best"), ("all", "last"), ("all", "best")]
    assert all(r["method"] == "base+j - base" and r["label"] == "BASE+J vs BASE" for r in rows)
    last, best, all_last, all_best = rows

    assert last["num_seeds"] == 3
    assert last["values"] == pytest.approx([2.0, 3.0, 4.0])
    assert last["mean"] == pytest.approx(3.0)
    # Sample std (ddof=1): sqrt(((2-3)^2 + 0 + (4-3)^2) / 2) = 1.
    assert last["std"] == pytest.approx(1.0)

    assert best["values"] == pytest.approx([-1.0, 1.0, 6.0])
    assert best["mean"] == pytest.approx(2.0)
    # sqrt(((-1-2)^2 + (1-2)^2 + (6-2)^2) / 2) = sqrt(13).
    assert best["std"] == pytest.approx(math.sqrt(13.0))

    assert all_last["values"] == pytest.approx([0.0, 1.0, 2.0])
    assert all_last["mean"] == pytest.approx(1.0) and all_last["std"] == pytest.approx(1.0)
    assert all_best["values"] == pytest.approx([0.0, 0.0, 0.0]) and all_best["std"] == 0.0


def test_wrong_pairing_would_change_the_std():
    """The fixture tells pairings apart: the unpaired difference has the same mean only."""
    reversed_gains = [100.0 * (WITH[2 - s] - WITHOUT[s]) for s in range(3)]
    stats = _report.stats(reversed_gains)
    assert stats["mean"] == pytest.approx(3.0)
    assert stats["std"] == pytest.approx(21.0)


def test_missing_cells_and_methods_are_skipped():
    # Seed 1 of "base" never finished: only seeds 0 and 2 are paired (gains 2 and 4).
    rows = _gains(_results(drop={("base", 1)}), sizes=[5])
    last = rows[0]
    assert last["num_seeds"] == 2
    assert last["values"] == pytest.approx([2.0, 4.0])
    assert last["mean"] == pytest.approx(3.0)
    assert last["std"] == pytest.approx(math.sqrt(2.0))
    # A pair whose method is not in this run's methods gives no rows.
    assert _gains(_results(), methods=["base"]) == []
    # Only the requested seeds are paired.
    only = _gains(_results(), sizes=[5], seeds=[2])[0]
    assert only["values"] == pytest.approx([4.0]) and only["std"] == 0.0


class Killed(Exception):
    pass


# A study's section: one row; its markdown and plot are trivial (``_report.Section``).
FAKE = types.SimpleNamespace(name="limited_data",
                             markdown=lambda s: f"## fake\n\n{s['rows'][0]['mean']}",
                             plots=lambda workdir, s: [])


def _summary(mean):
    return {"rows": [{"method": "ce", "label": "CE", "examples_per_class": 5,
                      "checkpoint": "last", "mean": mean, "std": 0.0, "num_seeds": 1,
                      "values": [mean], "paper": None}]}


def test_results_files_are_the_old_or_the_new_version(tmp_path, monkeypatch):
    _report.write(str(tmp_path), FAKE, _summary(50.0))
    before = {name: Path(tmp_path, name).read_text() for name in
              ("results.json", "results.csv", "results.md")}
    assert "50.0" in before["results.csv"]

    def killed_midway(self, rows):
        raise Killed  # after the header: a file opened for writing is already cut short
    monkeypatch.setattr(csv.DictWriter, "writerows", killed_midway)
    with pytest.raises(Killed):
        _report.write(str(tmp_path), FAKE, _summary(60.0))
    for name, text in before.items():
        assert Path(tmp_path, name).read_text() == text, name
    assert sorted(os.listdir(tmp_path)) == ["results.csv", "results.json", "results.md"]


def test_a_damaged_results_json_is_written_again(tmp_path, capsys):
    Path(tmp_path, "results.json").write_text('{"transfer": {"rows": [')
    _report.write(str(tmp_path), FAKE, _summary(70.0))
    assert set(json.loads(Path(tmp_path, "results.json").read_text())) == {"limited_data"}
    assert "results.json cannot be read" in capsys.readouterr().err


def test_each_section_is_rendered_by_its_own_study_and_kept_by_the_others(tmp_path):
    other = types.SimpleNamespace(name="another_study", markdown=lambda s: "## another",
                                  plots=lambda workdir, s: [])
    _report.write(str(tmp_path), FAKE, _summary(50.0))
    _report.write(str(tmp_path), other, _summary(10.0))
    _report.write(str(tmp_path), FAKE, _summary(60.0))  # rewrites its own section only
    results = json.loads(Path(tmp_path, "results.json").read_text())
    assert list(results) == ["limited_data", "another_study"]
    assert Path(tmp_path, "results.md").read_text() == (
        "# jaxkd experiment results\n\n## fake\n\n60.0\n\n## another\n")
    rows = list(csv.DictReader(Path(tmp_path, "results.csv").read_text().splitlines()))
    assert [(r["study"], r["mean"]) for r in rows] == [
        ("limited_data", "60.0"), ("another_study", "10.0")]


def test_csv_has_study_2_measures_and_every_search_candidate(tmp_path):
    summary = _summary(50.0)
    summary["sensitivity"] = [{"method": "ce", "label": "CE", "examples_per_class": 5,
                               "quantity": "drift", "sigma": 0.1, "reading": "clipped",
                               "mean": 0.25, "std": 0.0, "num_seeds": 1, "values": [0.25],
                               "format": ".3g"}]
    summary["weight_search"] = {"sizes": [5], "seeds": [0, 1], "methods": {"kd+ce": {
        "chosen": {"kd.weight": 1.0}, "candidates": [
            {"weights": {"kd.weight": w}, "validation": {"5": [v, v + 0.02]},
             "test": {"5": [0.5, 0.5]}} for w, v in ((1.0, 70.0), (3.0, 60.0))]}}}
    _report.write(str(tmp_path), FAKE, summary)
    rows = list(csv.DictReader(Path(tmp_path, "results.csv").read_text().splitlines()))
    drift = next(r for r in rows if r["kind"] == "sensitivity")
    assert (drift["quantity"], drift["reading"], drift["sigma"]) == ("drift", "clipped", "0.1")
    search = [(r["candidate"], r["split"], f"{float(r['mean']):g}") for r in rows
              if r["kind"] == "search"]
    assert search == [("kd.weight1", "validation", "70.01"), ("kd.weight1", "test", "0.5"),
                      ("kd.weight3", "validation", "60.01"), ("kd.weight3", "test", "0.5")]
    assert _report.fmt(summary["sensitivity"][0]) == "0.25 ± 0"
