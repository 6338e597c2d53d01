"""experiments._runs: atomic JSON, a damaged result.json computed again."""

import json
import os

from experiments import _runs


def test_write_json_syncs_before_it_renames(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace",
                        lambda a, b: (events.append("replace"), real_replace(a, b)))
    path = tmp_path / "run" / "result.json"
    _runs.write_json(path, {"last": {"test": 0.5}})
    assert json.loads(path.read_text()) == {"last": {"test": 0.5}}
    assert events[:2] == ["fsync", "replace"]  # the data is on disk before the name


def _fake_run(tmp_path, steps, evaluated, result="{"):
    run_dir = tmp_path / "run"
    for step in steps:
        (run_dir / "checkpoints" / str(step)).mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"split": "eval", "step": s, "accuracy": 0.5}) + "\n" for s in evaluated))
    (run_dir / "result.json").write_text(result)
    return str(run_dir)


def test_a_damaged_result_resumes_when_every_evaluated_step_has_its_checkpoint(tmp_path):
    run_dir = _fake_run(tmp_path, [6, 12], [6, 12])
    assert not _runs.is_done(run_dir)
    _runs.discard_damaged_result(run_dir)
    assert _runs.checkpoint_steps(run_dir) == [6, 12]  # resumes: nothing is redone
    assert os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
    assert not os.path.exists(_runs.result_path(run_dir))


def test_a_damaged_result_of_a_pruned_run_starts_over(tmp_path):
    run_dir = _fake_run(tmp_path, [12], [6, 12], result='{"last": {"test": 0.5}}')
    _runs.discard_damaged_result(run_dir)
    assert _runs.checkpoint_steps(run_dir) == []
    assert not os.path.exists(os.path.join(run_dir, "metrics.jsonl"))


def test_report_seeds_start_at_first_seed_apart_from_the_searchs(smoke):
    config = smoke("limited_data_digits", num_seeds=3)
    assert _runs.seeds(config) == [0, 1, 2]  # the default: the search's seeds too
    config.first_seed = 100
    assert _runs.seeds(config) == [100, 101, 102]
    assert {c.seed for c in _runs.cells(config)} == {100, 101, 102}
