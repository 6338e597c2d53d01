"""What a study may touch, and how it fails: nothing written, truncated or deleted outside
its work directory and a teacher_dir it was given; every failure at the command line
one line (or a few) naming the file or key and what to do, the traceback only with
``--debug`` / ``JAXKD_DEBUG=1``."""

import contextlib
import errno
import json
import logging
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import _cli, _runs, _workdir, limited_data
from experiments.configs import _checks
from experiments.configs._base import ConfigError
from jaxkd import training

ROOT = Path(__file__).resolve().parents[2]
SMOKE = "--config=limited_data_digits:smoke"
TRANSFER = "--config=transfer_digits:smoke"  # a config with teacher_dir and teacher_only


def _main(run, argv):
    return _cli.main("limited_data", run, lambda s: "", default_config="limited_data_digits",
                     default_workdir="unused", argv=argv)


def _must_not_run(config, workdir, command=None):
    """What every study does first (check the config, lock the work directory and the
    teacher_dir: ``_study.opened``), then a failure: nothing past the lock may run."""
    from experiments import _study, transfer
    study = transfer.STUDY if "no_transfer" in config.methods else limited_data.STUDY
    with _study.opened(study, config, workdir, command=command):
        raise AssertionError("must not run")


def _fails_with(error):
    def run(config, workdir, command=None):
        raise error
    return run


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv(_cli.DEBUG_ENV, raising=False)


# ----------------------------------------------------------------------------------------
# Nothing outside the work directory and the teacher_dir.


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / _workdir.LOCK_FILE).symlink_to(victim)
    with pytest.raises(SystemExit) as e:
        _main(_must_not_run, ["--workdir", str(workdir), SMOKE])
    assert e.value.code == (f"error: the lock file {workdir / '.lock'} of work directory "
                            f"{workdir} is a symbolic link (to {victim}); remove the link: "
                            f"the lock is a plain file the study writes.")
    # A run that fails validation does not reach the lock either.
    with pytest.raises(SystemExit, match="^error: config key 'train.batch_size'"):
        _main(_must_not_run, ["--workdir", str(workdir), SMOKE,
                              "--config.train.batch_size=0"])
    assert victim.read_text() == "precious\n"
    assert os.path.realpath(workdir) not in _workdir._HELD


@pytest.mark.parametrize("kind", ["directory", "file", "dangling"])
def test_links_out_of_the_work_directory_are_refused_naming_them(tmp_path, kind):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep").write_text("x")
    run_dir = tmp_path / "work" / "cells" / "ce" / "n5" / "seed0"
    run_dir.mkdir(parents=True)
    name = {"directory": "checkpoints", "file": "metrics.jsonl", "dangling": "checkpoints"}
    link = run_dir / name[kind]
    link.symlink_to({"directory": outside, "file": outside / "keep",
                     "dangling": outside / "gone"}[kind])
    with pytest.raises(SystemExit) as e:
        _main(_must_not_run, ["--workdir", str(tmp_path / "work"), SMOKE])
    target = os.path.realpath(link)
    assert e.value.code == (f"error: work directory {tmp_path / 'work'} holds symbolic links "
                            f"to places outside it, where the study would write or delete: "
                            f"{link} -> {target}. Remove the links (or move what they point "
                            f"to into the directory).")
    assert sorted(os.listdir(outside)) == ["keep"]


def test_links_that_stay_inside_are_fine(tmp_path):
    workdir = tmp_path / "work"
    (workdir / "teacher").mkdir(parents=True)
    (workdir / "alias").symlink_to(workdir / "teacher")
    (workdir / "relative").symlink_to("teacher")
    with _workdir.locked(str(workdir)):
        pass
    assert _workdir.links_outside(str(workdir)) == []


def test_a_teacher_dir_that_does_not_exist_is_an_error_unless_teacher_only(tmp_path):
    typo = tmp_path / "teachr"
    argv = ["--workdir", str(tmp_path / "work"), TRANSFER, f"--config.teacher_dir={typo}"]
    with pytest.raises(SystemExit) as e:
        _main(_must_not_run, argv)
    assert e.value.code == (f"error: --config.teacher_dir '{typo}' does not exist; give the "
                            f"run directory of a trained teacher (made with "
                            f"--config.teacher_only=True and this teacher_dir), or "
                            f"--config.teacher_dir='' to train the teacher in the work "
                            f"directory.")
    assert not typo.exists()
    # Through the Python entry point too (a study's run() locks in _study.opened).
    from experiments import transfer
    config = _cli.load_config("transfer_digits:smoke")
    config.teacher_dir = str(typo)
    with pytest.raises(ConfigError, match="does not exist"):
        transfer.run(config, str(tmp_path / "work2"))
    assert not typo.exists()
    # teacher_only creates it (and locks it while it trains).
    config.teacher_only = True
    seen = []
    with _workdir.locked_study(str(tmp_path / "work3"), config):
        seen.append(os.path.realpath(typo) in _workdir._HELD)
    assert seen == [True] and typo.is_dir()
    assert os.path.realpath(typo) not in _workdir._HELD


HOLD = """
import sys
from experiments import _workdir
_workdir.acquire(sys.argv[1], command="python -m experiments.transfer --teacher-holder")
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_teacher_dir_in_use_by_another_study_is_refused(tmp_path):
    teacher = tmp_path / "shared_teacher"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(teacher)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        workdir = tmp_path / "work"
        with pytest.raises(SystemExit) as e:
            _main(_must_not_run, ["--workdir", str(workdir), TRANSFER,
                                  f"--config.teacher_dir={teacher}"])
        assert str(e.value.code).startswith(
            f"error: --config.teacher_dir {teacher} is in use by pid {proc.pid} on ")
        assert "--teacher-holder" in str(e.value.code)
        # The work directory's lock, taken first, was given back.
        assert os.path.realpath(workdir) not in _workdir._HELD
    finally:
        proc.kill()
        proc.communicate()


# ----------------------------------------------------------------------------------------
# One line per failure.


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """Writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored), as on a file system
    or quota that caps a file's size."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_write_error_of_any_errno_names_the_file(tmp_path):
    from experiments import _plots
    results = tmp_path / "results.json"

    def write_results(config, workdir, command=None):
        training.atomic_write_text(results, "x" * 100_000)

    argv = ["--workdir", str(tmp_path), SMOKE]
    with _file_size_limit(10_000), pytest.raises(SystemExit) as e:
        _main(write_results, argv)
    assert e.value.code == (f"error: File too large: {results}; the file outgrew the "
                            f"file-size limit (see `ulimit -f`) or the file system's; raise "
                            f"the limit or use another --workdir, and run again.")
    assert not results.exists() and os.listdir(tmp_path) == []  # no temporary left

    def plot(config, workdir, command=None):
        fig = _plots.pyplot().figure(figsize=(8, 6))
        fig.gca().plot(range(1000), [i % 7 for i in range(1000)])
        _plots.save(fig, workdir, "curve.png")

    with _file_size_limit(2_000), pytest.raises(SystemExit) as e:
        _main(plot, argv)
    assert str(e.value.code).startswith(f"error: File too large: {tmp_path / 'curve.png'}; ")


def test_any_other_failure_is_one_line_and_debug_keeps_the_traceback(tmp_path, monkeypatch):
    argv = ["--workdir", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        _main(_fails_with(ZeroDivisionError("a bug")), argv)
    assert e.value.code == ("error: a bug (ZeroDivisionError)\n(run again with --debug, or "
                            "JAXKD_DEBUG=1, to see the traceback)")
    with pytest.raises(SystemExit) as e:  # an errno without a known remedy
        _main(_fails_with(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
              argv)
    assert e.value.code.startswith("error: Connection refused. (run again with --debug")
    with pytest.raises(ZeroDivisionError):
        _main(_fails_with(ZeroDivisionError("a bug")), [*argv, "--debug"])
    monkeypatch.setenv(_cli.DEBUG_ENV, "1")
    with pytest.raises(ZeroDivisionError):
        _main(_fails_with(ZeroDivisionError("a bug")), argv)


def test_a_bad_workdir_path_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        _main(_must_not_run, ["--workdir", "/proc/no/such/dir", SMOKE])
    assert e.value.code == ("error: cannot create --workdir /proc/no/such/dir: No such file "
                            "or directory (/proc/no); give a directory you can write.")


def test_a_damaged_metrics_file_is_one_line_naming_file_and_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / training.METRICS_FILE).write_text(
        '{"step": 1, "split": "train"}\n{"step": 2, "spl\n{"step": 3, "split": "train"}\n')

    def read(config, workdir, command=None):
        training.read_metrics(run_dir)

    with pytest.raises(SystemExit) as e:
        _main(read, ["--workdir", str(tmp_path / "work")])
    lines = str(e.value.code).splitlines()
    assert lines[0].startswith(f"error: {run_dir / training.METRICS_FILE}, line 2: damaged "
                               f"record")
    assert lines[0].endswith("Remove the line or the file. (ValueError)")
    assert len(lines) == 2


def test_a_one_class_image_folder_is_one_line(tmp_path):
    from PIL import Image
    folder = tmp_path / "images" / "only"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i, i, i)).save(folder / f"{i}.png")
    with pytest.raises(SystemExit) as e:
        limited_data.main(["--workdir", str(tmp_path / "work"), SMOKE,
                           f"--config.dataset=folder:{tmp_path / 'images'}"])
    assert str(e.value.code).startswith(
        f"error: dataset 'folder:{tmp_path / 'images'}' has 1 class(es) with training "
        f"examples ('only'); classification needs at least two.")
    assert len(str(e.value.code).splitlines()) == 2


@pytest.mark.parametrize("damage", ["damaged", "deleted"])
def test_a_damaged_or_deleted_run_config_is_said_so(tmp_path, damage):
    workdir = str(tmp_path)
    run_dir = os.path.join(workdir, "cells", "ce", "n5", "seed0")
    os.makedirs(os.path.join(run_dir, _runs.CHECKPOINTS, "4"))  # a started run
    config_json = os.path.join(run_dir, "config.json")
    if damage == "damaged":
        Path(config_json).write_text('{"run_config": {"seed"')
    changes = _runs.changed(workdir, {run_dir: {"seed": 0}})
    text = _runs.describe_changes(workdir, changes)
    why = (f"its config.json is damaged, {config_json}: Expecting" if damage == "damaged"
           else f"its config.json, written when a run starts, is missing: {config_json}")
    assert text.startswith(f"work directory {workdir} holds runs whose recorded config "
                           f"cannot be read, so they cannot be checked against this config: "
                           f"cells/ce/n5/seed0: ({why}")
    assert text.endswith("Give a new --workdir, or add --config.on_change=retrain to delete "
                         "these runs and train them again.")
    assert "made before runs recorded" not in text
    # A config.json without a run config is an old run's: said as before.
    Path(config_json).write_text(json.dumps({"role": "cell"}))
    assert _runs.changed(workdir, {run_dir: {"seed": 0}}) == {
        run_dir: [_runs.NOT_RECORDED]}


def test_orbax_background_noise_is_dropped_and_debug_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    for name in ("absl", "asyncio"):
        monkeypatch.setattr(logging.getLogger(name), "filters",
                            list(logging.getLogger(name).filters))
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(info.exc_value))
    _cli._quiet_library_logs()
    absl = logging.getLogger("absl")
    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "x.py")
    noisy = absl.makeRecord("absl", logging.ERROR, orbax_file, 1, "Failed to run", (), None)
    other = absl.makeRecord("absl", logging.ERROR, "/elsewhere/y.py", 1, "kept", (), None)
    warning = absl.makeRecord("absl", logging.WARNING, orbax_file, 1, "kept", (), None)
    assert [absl.filter(r) for r in (noisy, other, warning)] == [False, True, True]

    class Info:
        def __init__(self, exc):
            self.exc_value = exc

    sys.unraisablehook(Info(RuntimeError("Event loop is closed")))
    sys.unraisablehook(Info(RuntimeError("something else")))
    assert [str(e) for e in seen] == ["something else"]


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_prints_one_line(tmp_path):
    # A real study whose checkpoint files outgrow a 20 kB file-size limit: orbax's
    # threads fail (EFBIG) and log tracebacks; the user sees one line.
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
              "from experiments import limited_data\n"
              "limited_data.main(sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k != _cli.DEBUG_ENV}
    proc = subprocess.run([sys.executable, "-c", script, "--workdir", str(tmp_path / "w"),
                           SMOKE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ERROR:" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.rstrip().endswith(
        f"error: cannot write checkpoint to {tmp_path / 'w' / 'teacher' / 'checkpoints'}: "
        f"File too large. A file outgrew the file-size limit (see `ulimit -f`) or the file "
        f"system's: raise the limit (or use another directory) and run again: training "
        f"resumes from the last complete checkpoint."), proc.stderr[-3000:]


# ----------------------------------------------------------------------------------------
# The new user's path.


def test_the_empty_tuple_syntax_the_message_gives_works(tmp_path):
    argv = [SMOKE.replace("digits", "fashion"), "--config.examples_per_class=10"]
    config, _ = _cli.parse(argv, study="limited_data", default_config="limited_data_fashion",
                           default_workdir="unused")
    with pytest.raises(ConfigError) as e:
        _checks.validate(config)
    assert str(e.value).endswith("On the command line, () (every size) is "
                                 "--config.noise_examples_per_class= with nothing after the "
                                 "'='.")
    config, _ = _cli.parse([*argv, "--config.noise_examples_per_class="],
                           study="limited_data", default_config="limited_data_fashion",
                           default_workdir="unused")
    assert tuple(config.noise_examples_per_class) == ()
    _checks.validate(config)


def test_the_sweep_writes_lines_not_redraws_when_not_a_terminal(tmp_path, capsys):
    from experiments import _runs
    cells = [_runs.Cell("ce", 5, s) for s in range(20)]
    _runs.run_sweep(cells, lambda cell: {}, workdir=str(tmp_path), desc="study")
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("study: 20/20 cells "
                                                     "(100 %), ")


def test_a_zero_benchmark_batch_is_refused_naming_the_flag(capsys):
    from benchmarks import step_cost
    with pytest.raises(SystemExit) as e:
        step_cost.parse_args(["--batch-size", "0"])
    assert e.value.code == 2
    assert "argument --batch-size: expected a positive integer, got '0'" in \
        capsys.readouterr().err
