"""Writes that survive a crash, and failures a user can read: metrics.jsonl is never
rewritten in place, a damaged last line is recovered, a full disk is one clear line."""

import builtins
import errno
import io
import json
import os
import re
import subprocess
import sys
import traceback

import optax
import orbax.checkpoint as ocp
import pytest

from jaxkd import training
from tests.training import _helpers as h

OBJECTIVE = training.Objective(training.cross_entropy())
OPTIMIZER = optax.sgd(0.05)


def _train(workdir, data, **kwargs):
    kwargs = {"num_steps": 4, "log_every": 1, **kwargs}
    return training.train(h.student(), OBJECTIVE, OPTIMIZER, data, workdir=workdir,
                          mesh=training.data_mesh(1), progress=False, tensorboard=False,
                          **kwargs)


def _writer(workdir, steps):
    writer = training.MetricWriter(workdir, enabled=True, tensorboard=False)
    for step in steps:
        writer.write(step, {"loss": 1.0 / step})
    return writer


def _failing_writes(monkeypatch, error, path_part=""):
    """Every file opened for writing or appending (builtins.open and io.open, which
    os.fdopen uses) raises ``error`` on write: a kill or a full disk mid-write."""
    real_open = io.open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if any(m in mode for m in "wa") and path_part in str(getattr(f, "name", file)):
            def fail(*_):
                raise error
            f.write = f.writelines = fail
        return f

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)


# --- metrics.jsonl -------------------------------------------------------------------


def test_truncate_replaces_the_file_instead_of_rewriting_it(tmp_path):
    """A hard link to the old file keeps every old record: the kept records went to a
    new file that was renamed over the old name (an in-place rewrite would change the
    linked inode, and a kill between its truncation and its write empties the file)."""
    writer = _writer(tmp_path, [1, 2, 3, 4, 5])
    old = (tmp_path / "metrics.jsonl").read_text()
    os.link(tmp_path / "metrics.jsonl", tmp_path / "old.jsonl")
    writer.truncate_after(3)
    assert (tmp_path / "old.jsonl").read_text() == old
    assert [r["step"] for r in training.read_metrics(tmp_path)] == [1, 2, 3]
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "old.jsonl"]  # no temp left


def test_kill_while_dropping_records_keeps_the_old_file(tmp_path, monkeypatch):
    _writer(tmp_path, [1, 2, 3, 4, 5])
    old = (tmp_path / "metrics.jsonl").read_text()
    writer = training.MetricWriter(tmp_path, enabled=True, tensorboard=False)
    _failing_writes(monkeypatch, KeyboardInterrupt("simulated kill"))
    with pytest.raises(KeyboardInterrupt):
        writer.truncate_after(2)
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_text() == old
    assert os.listdir(tmp_path) == ["metrics.jsonl"]  # the temporary file was removed


def test_damaged_last_line_is_dropped_and_appends_start_clean(tmp_path):
    _writer(tmp_path, [1, 2, 3])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "split": "tr')  # a kill in the middle of an append
    assert [r["step"] for r in training.read_metrics(tmp_path)] == [1, 2, 3]
    _writer(tmp_path, [4])  # a new writer (a resumed run) appends after recovering
    assert [r["step"] for r in training.read_metrics(tmp_path)] == [1, 2, 3, 4]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_damaged_line_before_good_ones_is_an_error_naming_it(tmp_path):
    _writer(tmp_path, [1])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("garbage\n")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "split": "train"}) + "\n")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "metrics.jsonl"))
                       + r", line 2: damaged record"):
        training.read_metrics(tmp_path)


def test_kill_before_the_first_checkpoint_leaves_no_duplicates(tmp_path):
    """A run killed at step 3 (no checkpoint yet, checkpoint_every=100), its last append
    cut short, restarts from step 0: each step is on file once, and no JSONDecodeError."""
    x, y = h.images(64)
    with pytest.raises(RuntimeError, match="simulated kill"):
        _train(tmp_path, h.ArrayIterator(x, y, fail_at=3), checkpoint_every=100)
    assert [r["step"] for r in training.read_metrics(tmp_path)] == [1, 2, 3]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "split": "train", "lo')
    _train(tmp_path, h.ArrayIterator(x, y), checkpoint_every=100)
    assert [r["step"] for r in training.read_metrics(tmp_path, "train")] == [1, 2, 3, 4]


def test_full_disk_while_writing_metrics_names_the_file(tmp_path, monkeypatch):
    writer = _writer(tmp_path, [1])
    _failing_writes(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                    "metrics.jsonl")
    path = re.escape(str(tmp_path / "metrics.jsonl"))
    with pytest.raises(OSError, match=rf"cannot write metrics to {path}: No space left "
                                      "on device") as info:
        writer.write(2, {"loss": 0.5})
    assert info.value.errno == errno.ENOSPC


def test_atomic_write_json(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    training.atomic_write_json(path, {"accuracy": 0.5})
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    with pytest.raises(TypeError):  # unserialisable: the file is not touched
        training.atomic_write_json(path, {"bad": object()})
    _failing_writes(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(OSError, match="No space left on device"):
        training.atomic_write_text(path, "new")
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert os.listdir(tmp_path) == ["result.json"]


def test_missing_tensorboardx_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import raises ImportError
    with pytest.raises(ImportError, match=re.escape("pip install 'jaxkd[experiments]'")):
        training.MetricWriter(tmp_path, enabled=True, tensorboard=True)
    training.MetricWriter(tmp_path, enabled=True, tensorboard=False).close()  # fine


def test_importing_training_does_not_import_tensorboardx():
    code = "import sys, jaxkd.training; print('tensorboardX' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.getcwd(), timeout=120)
    assert out.stdout.strip() == "False"


# --- checkpoints and the work directory ---------------------------------------------

# tensorstore reports a failed write as this ValueError (copied from a real full
# tmpfs), not as an OSError; orbax's background threads wrap either.
TENSORSTORE_ENOSPC = ValueError(
    'RESOURCE_EXHAUSTED: Error writing local file "/x/checkpoints/2.orbax-checkpoint-tmp/'
    'state.orbax-checkpoint-tmp/_sharding": Failed writing: "/x/_sharding.__lock": Failed '
    "to write 2279 bytes to file 5: No space left on device [os_error_code='28']")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   TENSORSTORE_ENOSPC], ids=["oserror", "tensorstore"])
def test_full_disk_during_checkpoint_is_one_clear_line(tmp_path, monkeypatch, error):
    """The write fails inside orbax's asynchronous save (a commit future run in its
    background thread); train() reports it as one CheckpointError naming the directory,
    chained to a bare OSError rather than orbax's threads-and-asyncio traceback."""
    async def no_space(self, x, directory):
        raise error
    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", no_space)
    x, y = h.images(64)
    directory = re.escape(str(tmp_path / "checkpoints"))
    with pytest.raises(training.CheckpointError,
                       match=rf"^cannot write checkpoint to {directory}: No space left on "
                             r"device\. Free disk space") as info:
        _train(tmp_path, h.ArrayIterator(x, y), checkpoint_every=1)
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC
    printed = "".join(traceback.format_exception(info.value))
    assert "asyncio" not in printed and "orbax" not in printed, printed
    assert printed.count("CheckpointError: cannot write") == 1, printed  # not twice


def test_workdir_that_is_a_file_or_empty_is_refused(tmp_path):
    x, y = h.images(64)
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    with pytest.raises(ValueError, match=rf"workdir '{re.escape(str(path))}' is an "
                                         "existing file, not a directory"):
        _train(path, h.ArrayIterator(x, y))
    with pytest.raises(ValueError, match="workdir is empty"):
        _train("", h.ArrayIterator(x, y))
    with pytest.raises(training.CheckpointError, match="is an existing file"):
        training.Checkpointer(path)
