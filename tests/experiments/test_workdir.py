"""experiments._workdir: one run per work directory (a lock held by a real second
process)."""

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
    # A clean release removes the lock file (a kill, above, leaves it).
    assert not os.path.exists(os.path.join(workdir, _workdir.LOCK_FILE))
    proc = _holder(workdir)  # released: another process gets it
    proc.kill()
    proc.communicate()
