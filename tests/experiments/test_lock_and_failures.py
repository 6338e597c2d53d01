"""One run per work directory (a lock held by a real second process), readable one-line
failures at the command line, the user's private compilation cache (issue 12, items
3, 6 and 7)."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import _cli, _runtime, _workdir, limited_data
from experiments.configs._base import ConfigError
from jaxkd import training

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


# ----------------------------------------------------------------------------------------
# One line, no traceback.


def _main(run, argv):
    return _cli.main("limited_data", run, lambda s: "", default_config="limited_data_digits",
                     default_workdir="unused", argv=argv)


@pytest.mark.parametrize("kind", ["file", "empty"])
def test_a_workdir_that_is_a_file_or_empty_is_a_usage_error(tmp_path, capsys, kind):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    workdir = str(path) if kind == "file" else ""

    def run(config, workdir, command=None):
        raise AssertionError("must not run")

    with pytest.raises(SystemExit) as e:
        _main(run, ["--workdir", workdir, "--config=limited_data_digits:smoke"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err == ("error: --workdir '%s' is a file, not a directory; give a directory (it "
                   "will hold the runs and the results)." % path if kind == "file" else
                   "error: --workdir is empty; give the directory for the study's runs and "
                   "results (e.g. --workdir runs/limited_data).")
    assert path.read_text() == "not a directory"


def _fails_with(error):
    def run(config, workdir, command=None):
        raise error
    return run


def test_a_full_disk_anywhere_is_one_line(tmp_path):
    argv = ["--workdir", str(tmp_path), "--config=limited_data_digits:smoke"]
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "results.json"))
    with pytest.raises(SystemExit) as e:
        _main(_fails_with(full), argv)
    full_hint = ("; free disk space (or give another --workdir) and run again: finished runs "
                 "are kept and an unfinished one resumes from its last checkpoint.")
    assert e.value.code == (f"error: No space left on device: {tmp_path / 'results.json'}"
                            + full_hint)
    # Deep in another error's chain, as orbax's asyncio tasks report it.
    try:
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("Task exception was never retrieved\n" + "x\n" * 700) \
                from inner
    except RuntimeError as wrapped:
        deep = wrapped
    with pytest.raises(SystemExit) as e:
        _main(_fails_with(deep), argv)
    assert e.value.code == (f"error: No space left on device: {tmp_path / 'results.json'} "
                            f"(RuntimeError)" + full_hint)
    checkpoint = training.CheckpointError(f"cannot write a checkpoint to {tmp_path}: No space "
                                          "left on device")
    with pytest.raises(SystemExit) as e:
        _main(_fails_with(checkpoint), argv)
    assert e.value.code == f"error: cannot write a checkpoint to {tmp_path}: No space left " \
                           "on device"
    with pytest.raises(SystemExit, match="^error: bad value"):
        _main(_fails_with(ConfigError("bad value\nsecond line")), argv)


def test_an_unexpected_error_keeps_its_traceback_with_debug(tmp_path, monkeypatch):
    # Without --debug it is one line too (tests/experiments/test_reliability.py).
    monkeypatch.delenv(_cli.DEBUG_ENV, raising=False)
    with pytest.raises(ZeroDivisionError):
        _main(_fails_with(ZeroDivisionError("a bug")), ["--workdir", str(tmp_path), "--debug"])
    with pytest.raises(OSError, match="Connection refused"):  # not one of the known errnos
        _main(_fails_with(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
              ["--workdir", str(tmp_path), "--debug"])


def test_the_lock_is_released_after_a_failure(tmp_path):
    with pytest.raises(SystemExit):
        _main(_fails_with(ConfigError("x")), ["--workdir", str(tmp_path)])
    assert os.path.realpath(str(tmp_path)) not in _workdir._HELD


# ----------------------------------------------------------------------------------------
# The compilation cache: the user's own, never the work directory's.


def test_the_cache_lives_in_the_users_private_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = str(tmp_path / "xdg" / "jaxkd" / "jax_cache")
    assert _runtime.cache_dir() == expected
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the spec says
    assert _runtime.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "jaxkd",
                                                "jax_cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    directory, why = _runtime.private_cache_dir()
    assert (directory, why) == (expected, None)
    assert os.stat(expected).st_mode & 0o777 == 0o700


def test_a_cache_dir_open_to_others_is_not_used(tmp_path, monkeypatch, capsys):
    import jax
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # group- and world-writable, not sticky: anyone could swap entries
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    directory, why = _runtime.private_cache_dir()
    assert directory is None and "is writable by other users (mode 777)" in why
    assert jax.config.jax_compilation_cache_dir is None
    assert _runtime.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None
    assert capsys.readouterr().err.startswith("note: compilation cache off: ")
    # The cache directory itself opened up.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "mine"))
    path, _ = _runtime.private_cache_dir()
    os.chmod(path, 0o770)
    assert _runtime.private_cache_dir()[0] is None


def test_start_never_puts_a_cache_in_the_work_directory(smoke, tmp_path, monkeypatch):
    import jax
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = smoke("limited_data_digits", compilation_cache=True)
    saved = {k: getattr(jax.config, k) for k in (
        "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes")}
    try:
        _runtime.start(config, str(tmp_path / "work"))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "jaxkd" /
                                                           "jax_cache")
    finally:
        for key, value in saved.items():
            jax.config.update(key, value)
        _workdir.release(str(tmp_path / "work"))
    assert not os.path.exists(tmp_path / "work" / "jax_cache")


def test_the_known_os_error_is_found_behind_an_unknown_one():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/w/ckpt")
        except OSError as full:
            raise FileNotFoundError(errno.ENOENT, "gone", "/w/tmp") from full
    except OSError as e:
        chained = RuntimeError("save failed")
        chained.__cause__ = e
    found = _cli._os_error(chained)
    assert (found.errno, found.filename) == (errno.ENOSPC, "/w/ckpt")
    # tensorstore reports the code in its message, not as an OSError.
    found = _cli._os_error(ValueError("write failed [os_error_code='122']"))
    assert found.errno == errno.EDQUOT
    # Any other code is found too (its failure line names it, without a remedy).
    assert _cli._os_error(ValueError("write failed [os_error_code='2']")).errno == errno.ENOENT
