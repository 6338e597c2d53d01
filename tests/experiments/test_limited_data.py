"""Studies 1 and 2 end to end on the smoke config: kills, resumes, re-runs, what stays."""

import json
import os
from pathlib import Path

import pytest

from experiments import _data, _sweep, _workdir, limited_data, noise_robustness
from jaxkd import training

pytestmark = pytest.mark.slow


class Killed(Exception):
    """Stands for the process dying at this point."""


def _steps(cell_dir):
    checkpoints = os.path.join(cell_dir, "checkpoints")
    return sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())


def test_limited_data_then_noise_robustness(smoke, tmp_path, monkeypatch):
    config = smoke("limited_data_digits")  # 2 methods x {5, all} x 1 seed, 12 steps
    workdir = str(tmp_path)
    first = _sweep.cell_dir(workdir, _sweep.Cell("logits+ce", 5, 0))
    second = _sweep.cell_dir(workdir, _sweep.Cell("logits+jacobian+ce", 5, 0))

    # 1. Killed after the first cell's training, before its result.json: its
    #    checkpoints (every 6 steps) are all there.
    written = {}
    real_write = _workdir.write_json

    def write_then_die(path, value):
        if os.fspath(path) == _workdir.result_path(first):
            written["result"] = value
            raise Killed
        real_write(path, value)

    monkeypatch.setattr(_workdir, "write_json", write_then_die)
    with pytest.raises(Killed):
        limited_data.run(config, workdir)
    monkeypatch.setattr(_workdir, "write_json", real_write)
    assert _steps(first) == [6, 12] and not _workdir.is_done(first)
    metrics_after_kill = Path(first, training.METRICS_FILE).read_text()

    # 2. Killed in the middle of the second cell (its 8th batch: step 6 is checkpointed).
    real_batches = _data.train_batches

    def batches_that_die(dataset, **kw):
        it = real_batches(dataset, **kw)
        # The second cell is the one that starts after the first has finished.
        if not _workdir.is_done(first) or os.path.exists(os.path.join(second, "checkpoints")):
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
    result = json.loads(Path(_workdir.result_path(first)).read_text())
    assert result["last"] == written["result"]["last"]
    assert result["best"] == written["result"]["best"]
    assert Path(first, training.METRICS_FILE).read_text() == metrics_after_kill
    assert _steps(first) == [12]  # finished: only the last checkpoint stays
    assert _steps(second) == [6]
    killed_records = training.read_metrics(second, "train")
    assert [r["step"] for r in killed_records] == [6]

    # 3. The full run resumes the second cell from step 6 (not 0) and finishes the rest.
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
        run_dir = _sweep.cell_dir(workdir, cell)
        assert _steps(run_dir) == [12] and os.path.exists(os.path.join(run_dir,
                                                                       "metrics.jsonl"))
    assert _steps(os.path.join(workdir, "teacher")) == [10]
    # The study's time is the sum of what each run recorded.
    recorded = [json.loads(Path(_workdir.result_path(_sweep.cell_dir(workdir, c)))
                           .read_text())["seconds"] for c in limited_data.cells(config)]
    teacher = json.loads(Path(workdir, "teacher", "result.json").read_text())["seconds"]
    assert summary["total_seconds"] == pytest.approx(sum(recorded) + teacher)
    time_line = next(line for line in markdown.splitlines() if line.startswith("Time:"))

    # 4. A re-run trains nothing and keeps the study's time.
    before = os.path.getmtime(_workdir.result_path(first))
    again = limited_data.run(config, workdir)
    assert os.path.getmtime(_workdir.result_path(first)) == before
    assert [r["mean"] for r in again["rows"]] == [r["mean"] for r in rows]
    assert again["total_seconds"] == summary["total_seconds"]
    again_md = Path(workdir, "results.md").read_text()
    again_line = next(line for line in again_md.splitlines() if line.startswith("Time:"))
    assert again_line.split(";")[0] == time_line.split(";")[0]

    # 5. Study 2 reuses study 1's students from the same work directory.
    noise = noise_robustness.run(config, workdir)
    assert os.path.getmtime(_workdir.result_path(first)) == before
    assert {r["sigma"] for r in noise["rows"]} == {0.0, 0.5}
    clean = [r for r in noise["rows"] if r["sigma"] == 0.0 and r["method"] == "logits+ce"
             and r["examples_per_class"] == 5]
    last = [r for r in rows if r["method"] == "logits+ce" and r["examples_per_class"] == 5
            and r["checkpoint"] == "last"]
    assert abs(clean[0]["mean"] - last[0]["mean"]) < 1e-6  # sigma 0 = the clean test set
    results = json.loads(Path(workdir, "results.json").read_text())
    assert set(results) == {"limited_data", "noise_robustness"}
    assert os.path.getsize(os.path.join(workdir, "accuracy_vs_sigma.png")) > 0
