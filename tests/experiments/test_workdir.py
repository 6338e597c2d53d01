"""experiments._workdir: one run per work directory (a lock held by a real second
process), atomic JSON, a damaged result.json computed again."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import _workdir, limited_data

ROOT = Path(__file__).resolve().parents[2]


HOLD = """
import sys
from experiments import _workdir
_workdir.acquire(sys.argv[1], command="python -m experiments.limited_data --holder")
print("locked", flush=True)
sys.stdin.read()
"""


def _holder(workdir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, workdir], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path):
    workdir = str(tmp_path / "work")
    proc = _holder(workdir)
    try:
        with pytest.raises(_workdir.WorkdirInUse) as e:
            _workdir.acquire(workdir)
        assert f"in use by pid {proc.pid} on " in str(e.value)
        assert "python -m experiments.limited_data --holder" in str(e.value)
        # Through the command line: one line, before anything loads or trains.
        t0 = time.perf_counter()
        with pytest.raises(SystemExit) as e:
            limited_data.main(["--workdir", workdir, "--config=limited_data_digits:smoke"])
        assert time.perf_counter() - t0 < 10
        assert str(e.value.code).startswith(f"error: work directory {workdir} is in use by "
                                            f"pid {proc.pid}")
        assert not os.path.exists(os.path.join(workdir, "teacher"))
    finally:
        proc.kill()  # SIGKILL: the holder gets no chance to clean up
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # The killed holder's lock file is still there, and it does not block.
    assert os.path.exists(os.path.join(workdir, _workdir.LOCK_FILE))
    with _workdir.locked(workdir):
        assert f'"pid": {os.getpid()}' in Path(workdir, _workdir.LOCK_FILE).read_text()
        with _workdir.locked(workdir):  # re-entrant within a process
            pass
        assert os.path.realpath(workdir) in _workdir._HELD
    assert os.path.realpath(workdir) not in _workdir._HELD
    proc = _holder(workdir)  # released: another process gets it
    proc.kill()
    proc.communicate()


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
    assert not _workdir.is_done(run_dir)
    _workdir.discard_damaged_result(run_dir)
    assert _workdir.checkpoint_steps(run_dir) == [6, 12]  # resumes: nothing is redone
    assert os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
    assert not os.path.exists(_workdir.result_path(run_dir))


def test_a_damaged_result_of_a_pruned_run_starts_over(tmp_path):
    run_dir = _fake_run(tmp_path, [12], [6, 12], result='{"last": {"test": 0.5}}')
    _workdir.discard_damaged_result(run_dir)
    assert _workdir.checkpoint_steps(run_dir) == []
    assert not os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
