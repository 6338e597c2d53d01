"""Studies 1 and 2 end to end on the smoke configs: kills, resumes, re-runs, what stays;
the Fashion-MNIST config's search, budget and reused teacher."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from experiments import _data, _runs, _search, _study, limited_data
from experiments import noise_robustness
from jaxkd import training
from tests.experiments import test_commands

pytestmark = pytest.mark.slow


class Killed(Exception):
    """Stands for the process dying at this point."""


def _steps(cell_dir):
    checkpoints = os.path.join(cell_dir, "checkpoints")
    return sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())


@dataclasses.dataclass
class Scenario:
    """One smoke sweep taken through the stages below, in order."""
    config: ConfigDict
    workdir: str
    first: str   # the first cell's run directory
    second: str  # the second's
    written: dict = dataclasses.field(default_factory=dict)  # what a killed write held
    summary: dict | None = None
    time_line: str = ""
    killed_records: list = dataclasses.field(default_factory=list)  # the second cell's


def test_limited_data_then_noise_robustness(smoke, tmp_path, monkeypatch):
    config = smoke("limited_data_digits")  # 2 methods x {5, all} x 1 seed, 12 steps
    workdir = str(tmp_path)
    s = Scenario(config, workdir,
                 first=_runs.cell_dir(workdir, _runs.Cell("logits+ce", 5, 0)),
                 second=_runs.cell_dir(workdir, _runs.Cell("logits+jacobian+ce", 5, 0)))
    metrics_after_kill = _stage_killed_after_the_first_cells_training(s, monkeypatch)
    _stage_killed_in_the_middle_of_the_second_cell(s, monkeypatch, metrics_after_kill)
    _stage_the_full_run_resumes_and_reports(s)
    _stage_a_rerun_trains_nothing_and_keeps_the_time(s)
    _stage_noise_robustness_reuses_the_students(s)


def _stage_killed_after_the_first_cells_training(s: Scenario, monkeypatch) -> str:
    """Killed after the first cell's training, before its result.json: its checkpoints
    (every 6 steps) are all there."""
    config, workdir, first, written = s.config, s.workdir, s.first, s.written
    real_write = _runs.write_json

    def write_then_die(path, value):
        if os.fspath(path) == _runs.result_path(first):
            written["result"] = value
            raise Killed
        real_write(path, value)

    monkeypatch.setattr(_runs, "write_json", write_then_die)
    with pytest.raises(Killed):
        limited_data.run(config, workdir)
    monkeypatch.setattr(_runs, "write_json", real_write)
    assert _steps(first) == [6, 12] and not _runs.is_done(first)
    metrics_after_kill = Path(first, training.METRICS_FILE).read_text()
    return metrics_after_kill


def _stage_killed_in_the_middle_of_the_second_cell(s: Scenario, monkeypatch,
                                                   metrics_after_kill: str) -> None:
    """Killed in the middle of the second cell (its 8th batch: step 6 is checkpointed)."""
    config, workdir, first, second = s.config, s.workdir, s.first, s.second
    written = s.written
    real_batches = _data.train_batches

    def batches_that_die(dataset, **kw):
        it = real_batches(dataset, **kw)
        # The second cell is the one that starts after the first has finished.
        if not _runs.is_done(first) or os.path.exists(os.path.join(second, "checkpoints")):
            return it

        class Dying:
            calls = 0

            def __iter__(self):
                return self

            def __next__(self):
                self.calls += 1
                if self.calls == 8:
                    raise Killed
                return next(it)

            def get_state(self):
                return it.get_state()

            def set_state(self, state):
                it.set_state(state)
        return Dying()

    monkeypatch.setattr(_data, "train_batches", batches_that_die)
    with pytest.raises(Killed):
        limited_data.run(config, workdir)
    monkeypatch.setattr(_data, "train_batches", real_batches)
    # The first cell was finished from its last checkpoint, with no step run again (a
    # retrained step would log a new record), to the numbers it had computed.
    result = json.loads(Path(_runs.result_path(first)).read_text())
    assert result["last"] == written["result"]["last"]
    assert result["best"] == written["result"]["best"]
    assert Path(first, training.METRICS_FILE).read_text() == metrics_after_kill
    assert _steps(first) == [12]  # finished: only the last checkpoint stays
    assert _steps(second) == [6]
    s.killed_records = training.read_metrics(second, "train")
    assert [r["step"] for r in s.killed_records] == [6]


def _stage_the_full_run_resumes_and_reports(s: Scenario) -> None:
    """The full run resumes the second cell from step 6 (not 0) and finishes the rest."""
    config, workdir, second, killed_records = s.config, s.workdir, s.second, s.killed_records
    summary = limited_data.run(config, workdir)
    records = training.read_metrics(second, "train")
    assert [r["step"] for r in records] == [6, 12]
    assert records[0] == killed_records[0]
    for name in ("results.json", "results.csv", "results.md", "accuracy_vs_examples.png",
                 "gain_vs_examples.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert summary["plots"] == [os.path.join(workdir, "accuracy_vs_examples.png"),
                                os.path.join(workdir, "gain_vs_examples.png")]
    rows = summary["rows"]
    assert len(rows) == 2 * 2 * 2  # methods x sizes x {last, best}
    assert all(r["num_seeds"] == 1 and 0 <= r["mean"] <= 100 for r in rows)
    assert all(r["paper"] is None for r in rows)  # digits is not the paper's setting
    markdown = Path(workdir, "results.md").read_text()
    assert "match activations + Jacobians + CE" in markdown and " ± " in markdown
    gains = summary["paired_gains"]
    assert len(gains) == 2 * 2 and "Gain from the Jacobian term" in markdown
    with_j = {(r["examples_per_class"], r["checkpoint"]): r["mean"] for r in rows
              if r["method"] == "logits+jacobian+ce"}
    without = {(r["examples_per_class"], r["checkpoint"]): r["mean"] for r in rows
               if r["method"] == "logits+ce"}
    for g in gains:
        key = (g["examples_per_class"], g["checkpoint"])
        assert abs(g["mean"] - (with_j[key] - without[key])) < 1e-9
    # Every finished run keeps its last checkpoint only; metrics stay.
    for cell in limited_data.cells(config):
        run_dir = _runs.cell_dir(workdir, cell)
        assert _steps(run_dir) == [12] and os.path.exists(os.path.join(run_dir,
                                                                       "metrics.jsonl"))
    assert _steps(os.path.join(workdir, "teacher")) == [10]
    # The study's time is the sum of what each run recorded.
    recorded = [json.loads(Path(_runs.result_path(_runs.cell_dir(workdir, c)))
                           .read_text())["seconds"] for c in limited_data.cells(config)]
    teacher = json.loads(Path(workdir, "teacher", "result.json").read_text())["seconds"]
    assert summary["total_seconds"] == pytest.approx(sum(recorded) + teacher)
    s.summary = summary
    s.time_line = next(line for line in markdown.splitlines() if line.startswith("Time:"))


def _stage_a_rerun_trains_nothing_and_keeps_the_time(s: Scenario) -> None:
    """A re-run trains nothing and keeps the study's time."""
    config, workdir, first, summary = s.config, s.workdir, s.first, s.summary
    rows = summary["rows"]
    before = os.path.getmtime(_runs.result_path(first))
    again = limited_data.run(config, workdir)
    assert os.path.getmtime(_runs.result_path(first)) == before
    assert [r["mean"] for r in again["rows"]] == [r["mean"] for r in rows]
    assert again["total_seconds"] == summary["total_seconds"]
    again_md = Path(workdir, "results.md").read_text()
    again_line = next(line for line in again_md.splitlines() if line.startswith("Time:"))
    assert again_line.split(";")[0] == s.time_line.split(";")[0]


def _stage_noise_robustness_reuses_the_students(s: Scenario) -> None:
    """Study 2 reuses study 1's students from the same work directory."""
    config, workdir, first = s.config, s.workdir, s.first
    rows = s.summary["rows"]
    before = os.path.getmtime(_runs.result_path(first))
    noise = noise_robustness.run(config, workdir)
    assert os.path.getmtime(_runs.result_path(first)) == before
    assert {r["sigma"] for r in noise["rows"]} == {0.0, 0.5}
    clean = [r for r in noise["rows"] if r["sigma"] == 0.0 and r["method"] == "logits+ce"
             and r["examples_per_class"] == 5]
    last = [r for r in rows if r["method"] == "logits+ce" and r["examples_per_class"] == 5
            and r["checkpoint"] == "last"]
    assert abs(clean[0]["mean"] - last[0]["mean"]) < 1e-6  # sigma 0 = the clean test set
    results = json.loads(Path(workdir, "results.json").read_text())
    assert set(results) == {"limited_data", "noise_robustness"}
    assert os.path.getsize(os.path.join(workdir, "accuracy_vs_sigma.png")) > 0


def _result(run_dir: str) -> dict:
    return json.loads(Path(_runs.result_path(run_dir)).read_text())


def test_limited_data_fashion_search_budget_and_noise(smoke, tmp_path, monkeypatch, capsys):
    # The config's documented commands (test_commands.py) make the work directory checked
    # here, so the smoke study trains once in the suite; the run below reuses every run.
    monkeypatch.chdir(tmp_path)
    data_dir = test_commands.run_group("runs/limited_data_fashion", tmp_path, capsys)
    workdir = str(tmp_path / "runs" / "limited_data_fashion")
    config = smoke("limited_data_fashion", data_dir=data_dir)
    summary = limited_data.run(config, workdir)

    # The budget grows with the data: 2 per class (20 images) stays at the floor (12),
    # all 160 training images would take 2 epochs = 32 steps, capped at 14.
    assert summary["budget"] == {"2": 12, "all": 14}
    for cell in limited_data.cells(config):
        result = _result(_runs.cell_dir(workdir, cell))
        assert result["last"]["step"] == result["num_steps"] == summary["budget"][
            str(cell.examples_per_class)]

    # The search trained every candidate at size 2, seed 0, and chose by validation.
    search = json.loads(Path(workdir, _search.SEARCH_FILE).read_text())
    assert search == summary["weight_search"]
    assert set(search["methods"]) == {"kd+jacobian+ce", "kd+vjp+ce"}  # "ce": no search
    for method, candidates in (("kd+jacobian+ce", [{"jacobian.weight": 1.0},
                                                   {"jacobian.weight": 10.0}]),
                               ("kd+vjp+ce", [{"vjp.weight": 0.01}])):
        entry = search["methods"][method]
        assert [row["weights"] for row in entry["candidates"]] == candidates
        validation = []
        for weights in candidates:
            run_dir = _runs.cell_dir(os.path.join(workdir, _search.SEARCH_DIR),
                                     _search.search_cell(method, weights, 2, 0))
            result = _result(run_dir)
            assert result["loss_weights"] == weights
            validation.append(100.0 * result["best"]["validation"])
        best = max(range(len(candidates)), key=lambda i: (validation[i], -i))
        assert entry["chosen"] == candidates[best]
        # The main cell of seed 0 at the searched size is the search's run, copied.
        main = _result(_runs.cell_dir(workdir, _runs.Cell(method, 2, 0)))
        assert main["loss_weights"] == entry["chosen"] and "reused_from" in main
        # The other size trained with the chosen weights too.
        assert _result(_runs.cell_dir(workdir, _runs.Cell(method, "all", 0)))[
            "loss_weights"] == entry["chosen"]
    markdown = Path(workdir, "results.md").read_text()
    assert "Loss weights chosen on validation" in markdown
    assert "Training steps per cell, by examples per class: 2: 12, all: 14." in markdown

    # The study's time counts a reused run once.
    cells = {c: _result(_runs.cell_dir(workdir, c)) for c in limited_data.cells(config)}
    teacher = _result(os.path.join(workdir, "teacher"))
    fresh = sum(r["seconds"] for r in cells.values() if "reused_from" not in r)
    assert summary["total_seconds"] == pytest.approx(teacher["seconds"] + search["seconds"]
                                                     + fresh)

    # The search's runs record their config; the same command again reuses every run
    # (a copied search run carries its cell's config, so nothing is "changed").
    search_dir = os.path.join(workdir, _search.SEARCH_DIR)
    first = _runs.cell_dir(search_dir, _search.search_cell(
        "kd+jacobian+ce", {"jacobian.weight": 1.0}, 2, 0))
    assert _result(first)[_runs.RUN_CONFIG]["search_weights"] == {"jacobian.weight": 1.0}
    assert limited_data.run(config, workdir)["rows"] == summary["rows"]
    # A changed training key: the search's runs are refused too, or deleted to retrain.
    changed = ConfigDict(config.to_dict())
    changed.train.learning_rate = 0.5
    runs = {first: {**_study.cell_config(limited_data.STUDY, changed,
                                         _runs.Cell("kd+jacobian+ce", 2, 0),
                                         _runs.recorded(os.path.join(workdir, "teacher")),
                                         search=False),
                    "search_weights": {"jacobian.weight": 1.0}}}
    assert _runs.recorded(first) == {**runs[first], "train": config.train.to_dict()}
    with pytest.raises(_runs.ConfigChanged, match="train.learning_rate"):
        _study.check_runs(changed, search_dir, runs)
    assert os.path.exists(first)
    changed.on_change = "retrain"
    _study.check_runs(changed, search_dir, runs)
    assert not os.path.exists(first)

    # Study 2 on the same work directory trains nothing new.
    before = os.path.getmtime(Path(workdir, _search.SEARCH_FILE).parent / "teacher"
                              / "result.json")
    noise = noise_robustness.run(config, workdir)
    assert {r["examples_per_class"] for r in noise["rows"]} == {2}
    assert {r["sigma"] for r in noise["rows"]} == {0.0, 0.5}
    assert os.path.getmtime(Path(workdir, "teacher", "result.json")) == before

    # A second work directory reuses the teacher (teacher_dir) instead of training one.
    other = str(tmp_path / "other")
    config.teacher_dir = os.path.join(workdir, "teacher")
    config.teacher_only = True
    only = limited_data.run(config, other)
    assert only["teacher"]["last"] == teacher["last"]
    assert not os.path.exists(os.path.join(other, "teacher"))
    # The students' budget and weight search are no part of the teacher: changing them
    # keeps the teacher (of a teacher_dir, and of the work directory itself).
    config.train_max_steps += 1
    config.search.jacobian.weight = (3.0,)
    assert limited_data.run(config, other)["teacher"]["last"] == teacher["last"]
    config.teacher_dir = ""
    assert _study.teacher_config(limited_data.STUDY, config) == _runs.recorded(
        os.path.join(workdir, "teacher"))
