"""experiments._report: differences paired by seed, their t-intervals and Holm's correction
(by hand); results files that are the old version or the new one, never a mixture; a
damaged results.json is rewritten."""

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


# t(0.975, df) from printed tables (seven decimals): an independent check of _stats.
T975 = {1: 12.7062047, 2: 4.3026527}


def test_paired_gains_carry_their_t_interval_by_hand():
    last, best, all_last, _ = _gains(_results())
    # [2, 3, 4]: 3 ± t(0.975, 2) * 1 / sqrt(3); t = 3 sqrt(3) at df 2 has the two-sided
    # p = 1 - t / sqrt(2 + t^2).
    half = T975[2] / math.sqrt(3)
    assert last["ci95"] == pytest.approx([3 - half, 3 + half], abs=1e-6)
    assert (last["n"], last["positive"], last["seeds"]) == (3, 3, [0, 1, 2])
    t = 3 * math.sqrt(3)
    assert last["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    # [-1, 1, 6]: 2 ± t(0.975, 2) sqrt(13 / 3); two of three positive.
    half = T975[2] * math.sqrt(13 / 3)
    assert best["ci95"] == pytest.approx([2 - half, 2 + half], abs=1e-6)
    assert (best["n"], best["positive"]) == (3, 2)
    # [0, 1, 2]: 0 is not a gain.
    assert all_last["positive"] == 2
    # Seed 1 missing on one side: the pair is over seeds 0 and 2 ([2, 4]: 3 ± t(0.975, 1)).
    two = _gains(_results(drop={("base", 1)}), sizes=[5])[0]
    assert two["seeds"] == [0, 2] and two["n"] == 2
    assert two["ci95"] == pytest.approx([3 - T975[1], 3 + T975[1]], abs=1e-6)
    one = _gains(_results(), sizes=[5], seeds=[2])[0]
    assert (one["ci95"], one["p_value"], one["n"], one["seeds"]) == (None, None, 1, [2])


def _gain(p, checkpoint="last", **row):
    return {"checkpoint": checkpoint, "p_value": p, **row}


def test_holm_over_the_study_s_last_step_gains():
    # The family is every last-step gain of both readings: p = 0.01, 0.04, 0.03, 0.005
    # (sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2 stops); best-step rows are
    # outside it (a p of 0 there would survive anything).
    section = {"paired_gains": [_gain(0.01), _gain(0.0, "best"), _gain(0.04)],
               "other_gains": [_gain(0.03), _gain(0.005), _gain(None, "best")]}
    _report.holm(section)
    assert [r.get("holm") for r in section["paired_gains"]] == [True, None, False]
    assert [r.get("holm") for r in section["other_gains"]] == [False, True, None]
    assert section["holm"] == {"alpha": 0.05, "comparisons": 4, "survive": 2}


def test_gain_tables_show_the_interval_n_positive_and_holm():
    rows = [r for r in _gains(_results()) if r["checkpoint"] == "last"]
    section = {"rows": [], "paired_gains": rows}
    _report.holm(section)
    # p = 0.035 at 5 per class and 0.23 at "all" (df 2): 0.035 > 0.05 / 2, none survives.
    assert [r["holm"] for r in rows] == [False, False]
    lo, hi = rows[0]["ci95"]
    assert _report.fmt(rows[0]) == f"+3.0 [{lo:+.1f}, {hi:+.1f}], n=3, 3/3 > 0"
    assert _report.fmt(rows[0]) == "+3.0 [+0.5, +5.5], n=3, 3/3 > 0"
    text = "\n".join(_report.main_tables(section, what="Accuracy", gains_title="Gain"))
    assert "| BASE+J vs BASE | +3.0 [+0.5, +5.5], n=3, 3/3 > 0 | +1.0 [" in text
    assert ("This table makes 2 comparisons; 0 of them survive Holm's correction at 0.05 "
            "(marked †) over the study's 2 paired gains at the last step") in text
    # Alone in its family, 0.035 <= 0.05 survives.
    section = {"rows": [], "paired_gains": _gains(_results(), sizes=[5])}
    _report.holm(section)
    assert _report.fmt(section["paired_gains"][0]).endswith("3/3 > 0 †")
    assert section["holm"]["comparisons"] == 1
    one = _gains(_results(), sizes=[5], seeds=[2])[0]
    assert _report.fmt(one) == "+4.0, n=1, 1/1 > 0"


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


def test_results_json_and_csv_keep_the_gains_intervals(tmp_path):
    summary = {**_summary(50.0), "paired_gains": _gains(_results(), sizes=[5])}
    _report.write(str(tmp_path), FAKE, summary)
    gains = json.loads(Path(tmp_path, "results.json").read_text())["limited_data"]
    assert gains["holm"] == {"alpha": 0.05, "comparisons": 1, "survive": 1}
    first = gains["paired_gains"][0]
    assert {"mean", "std", "num_seeds", "values"} <= set(first)  # the keys other code reads
    half = T975[2] / math.sqrt(3)  # [2, 3, 4], as above
    assert first["ci95"] == pytest.approx([3 - half, 3 + half], abs=1e-6)
    assert (first["n"], first["positive"], first["seeds"], first["holm"]) == (
        3, 3, [0, 1, 2], True)
    rows = list(csv.DictReader(Path(tmp_path, "results.csv").read_text().splitlines()))
    gain = next(r for r in rows if r["kind"] == "paired_gain")
    assert float(gain["ci95_low"]) == pytest.approx(first["ci95"][0])
    assert (gain["positive"], gain["seeds"], gain["holm"]) == ("3", "0 1 2", "True")


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


def test_the_header_says_which_seeds_report_and_whether_they_chose():
    config = {"num_seeds": 3, "search": {"seeds": 3}}
    searched = {"config": config, "weight_search": {"methods": {}}}
    (line,) = _report.seed_lines(searched)
    assert line.startswith("Report seeds: 0-2 (3); the weight search chose on seeds 0-2: ")
    assert "not a fresh estimate (`--config.first_seed=3` or more" in line
    config["first_seed"] = 100
    assert _report.seed_lines(searched) == [
        "Report seeds: 100-102 (3); the weight search chose on seeds 0-2."]
    assert _report.seed_lines({"config": {"num_seeds": 1}}) == ["Report seeds: 0 (1)."]
    assert _report.seed_lines({"config": {}}) == []


def test_a_run_whose_validation_fell_more_than_5_points_is_marked():
    curve = {"100": 0.50, "200": 0.57, "300": 0.515, "400": 0.56}  # fell 5.5 from 57
    assert _report.fall({"validation_curve": curve}) == pytest.approx(5.5)
    assert _report.fall({"validation_curve": {"10": 0.2, "2": 0.6}}) == pytest.approx(40.0)
    assert _report.fall({"validation_curve": {"1": 0.5, "2": 0.6}}) == 0.0
    dip = {"1": 0.60, "2": 0.551, "3": 0.61}  # 4.9 points: within the bound
    results = {Cell("ce", 5, seed): {"last": {"test": 0.5}, "best": {"test": 0.5},
                                     "validation_curve": c}
               for seed, c in enumerate([curve, dip, curve])}
    rows = _report.accuracy_rows(results, ["ce"], [5], str, lambda m, n: None)
    assert [r["unstable_seeds"] for r in rows] == [[0, 2], [0, 2]]
    assert _report.fmt(rows[0]) == "50.0 ± 0.0 ‡2"
    text = "\n".join(_report._checkpoint_table(rows, "last", "Test accuracy"))
    assert "‡k: k of the cell's runs trained unstably" in text and "5 points" in text
    steady = {c: {**r, "validation_curve": dip} for c, r in results.items()}
    rows = _report.accuracy_rows(steady, ["ce"], [5], str, lambda m, n: None)
    assert rows[0]["unstable_seeds"] == [] and "‡" not in "\n".join(
        _report._checkpoint_table(rows, "last", "Test accuracy"))
