"""The work directory of a study: its layout, its lock, what each run recorded, JSON files.

    <workdir>/
      .lock                          who runs here now (pid, host, start, command)
      results.{json,csv,md}, *.png   the report (``_report``)
      teacher/                       the teacher's run directory
      cells/<method>/n<k>/seed<s>/   one run directory per cell
      weight_search.json             the loss-weight search's choice (``_search``)
      weight_search/cells/<method>@<weights>/n<k>/seed<s>/   one run per candidate

A run directory is what :func:`jaxkd.training.train` writes (``checkpoints/``,
``metrics.jsonl``, ``config.json``) plus ``result.json``, which marks it finished. A
finished run keeps only its last checkpoint (study 2 and a reused teacher restore it)
and its metrics; :func:`prune` deletes the rest.

**Run configs.** Each run records the config that determines its result (its *run
config*, ``_study.teacher_config`` / ``_study.cell_config``) in ``config.json`` when it
starts and in ``result.json`` when it ends. Before anything trains, a study compares
every run it would reuse with the run config the current config gives it
(:func:`changed`); a run made with another config is refused (naming the keys that
differ, old -> new) or, with ``--config.on_change=retrain``, deleted and trained again.

**One run at a time.** :func:`locked` / :func:`hold` take ``<workdir>/.lock`` with
``fcntl.flock``: the operating system releases it when the process ends, however it
ends, so a killed run never blocks the next; a second run fails at once naming the
process that holds it. (``flock`` needs a local file system; on NFS it may not lock.)

Every file is written with :func:`jaxkd.training.atomic_write_text` (temporary file,
fsync, rename): a kill or a full disk leaves the previous file or the new one. A
``result.json`` that cannot be read anyway (a damaged disk, an edit) counts as not
finished: the run is recomputed (:func:`read_result`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from experiments.configs._base import ConfigError
from jaxkd import training

RESULT_FILE = "result.json"
CHECKPOINTS = "checkpoints"
RUN_CONFIG = "run_config"  # the key of the run config in config.json and result.json
LOCK_FILE = ".lock"
NOT_RECORDED = "(not recorded: made before runs recorded their config)"


class WorkdirInUse(RuntimeError):
    """Another process holds the work directory's lock; the message names it."""


class ConfigChanged(ConfigError):
    """Runs of the work directory were made with another config; the message says which
    keys differ (old -> new) and how to proceed."""


# ----------------------------------------------------------------------------------------
# The directory itself.


def check(workdir: str) -> str:
    """``workdir`` if it can be a work directory.

    Raises:
      ConfigError: it is empty or names an existing file.
    """
    if not isinstance(workdir, str) or not workdir.strip():
        raise ConfigError("--workdir is empty; give the directory for the study's runs and "
                          "results (e.g. --workdir runs/limited_data).")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir!r} is a file, not a directory; give a "
                          f"directory (it will hold the runs and the results).")
    return workdir


def setup(workdir: str) -> str:
    """Checks (:func:`check`) and creates the work directory; returns it."""
    os.makedirs(check(workdir), exist_ok=True)
    return workdir


# ----------------------------------------------------------------------------------------
# The lock.

_HELD: dict[str, int] = {}  # real path -> the locked file descriptor of this process


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            info = json.load(f)
        return (f"pid {info['pid']} on {info['host']} (started {info['started']}: "
                f"{info['command']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def acquire(workdir: str, *, command: str | None = None) -> bool:
    """Locks ``workdir`` for this process; False if this process holds it already.

    Raises:
      WorkdirInUse: another process holds it (the message names the process).
    """
    key = os.path.realpath(setup(workdir))
    if key in _HELD:
        return False
    path = os.path.join(workdir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkdirInUse(f"work directory {workdir} is in use by {_holder(path)}; wait for "
                           f"it to finish, or give another --workdir.") from None
    except BaseException:
        os.close(fd)
        raise
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command or " ".join([os.path.basename(sys.executable),
                                            *sys.argv])}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _HELD[key] = fd
    return True


def release(workdir: str) -> None:
    """Unlocks ``workdir`` if this process holds it (the lock file stays)."""
    fd = _HELD.pop(os.path.realpath(workdir), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


@contextlib.contextmanager
def locked(workdir: str, *, command: str | None = None) -> Iterator[None]:
    """Holds ``workdir``'s lock for the block (re-entrant within a process)."""
    new = acquire(workdir, command=command)
    try:
        yield
    finally:
        if new:
            release(workdir)


def hold(workdir: str) -> None:
    """Locks ``workdir`` until the process ends (or :func:`release`), unless held already.

    What a study's ``run()`` called from Python does (the command line holds the lock
    with :func:`locked` for the run and releases it after the report).
    """
    acquire(workdir)


# ----------------------------------------------------------------------------------------
# JSON files and results.


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes ``value`` atomically (:func:`jaxkd.training.atomic_write_json`)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    training.atomic_write_json(path, value, indent=2, sort_keys=True, default=str)


def result_path(run_dir: str) -> str:
    return os.path.join(run_dir, RESULT_FILE)


def read_result(run_dir: str) -> dict[str, Any] | None:
    """The finished run's ``result.json``; None when it is missing or cannot be read (a
    damaged file counts as not finished: the run is recomputed)."""
    try:
        result = read_json(result_path(run_dir))
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or not all(
            isinstance(result.get(k), dict) and "test" in result[k] for k in ("last", "best")):
        return None
    return result


def is_done(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a finished run (a readable ``result.json``)."""
    return read_result(run_dir) is not None


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def checkpoint_steps(run_dir: str) -> list[int]:
    ckpt = checkpoint_dir(run_dir)
    if not os.path.isdir(ckpt):
        return []
    return sorted(int(name) for name in os.listdir(ckpt) if name.isdigit())


def prune(run_dir: str, keep_step: int) -> None:
    """Deletes every checkpoint of a finished run but ``keep_step``'s.

    Only after ``result.json`` is written: until then a killed run resumes from any of
    its checkpoints. Metrics (``metrics.jsonl``, TensorBoard files) stay.
    """
    if not is_done(run_dir):
        raise RuntimeError(f"{run_dir} is not finished (no {RESULT_FILE}); nothing pruned.")
    for step in checkpoint_steps(run_dir):
        if step != keep_step:
            shutil.rmtree(os.path.join(checkpoint_dir(run_dir), str(step)))


def discard_damaged_result(run_dir: str) -> None:
    """Makes a run whose ``result.json`` exists but cannot be read computable again.

    It resumes from its checkpoints if every evaluated step still has one; a pruned run
    (only its last checkpoint left) starts over, which gives the same numbers (equal
    seeds, equal steps). The damaged file is kept as ``result.json.damaged``.
    """
    path = result_path(run_dir)
    if not os.path.exists(path) or is_done(run_dir):
        return
    print(f"note: {path} cannot be read; computing the run again.", file=sys.stderr)
    os.replace(path, path + ".damaged")
    try:
        evaluated = {int(r["step"]) for r in training.read_metrics(run_dir, "eval")}
    except (OSError, ValueError, KeyError):
        evaluated = None
    if evaluated is None or not evaluated <= set(checkpoint_steps(run_dir)):
        shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(run_dir, training.METRICS_FILE))


# ----------------------------------------------------------------------------------------
# Run configs.

def canonical(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def started(run_dir: str) -> bool:
    """Whether ``run_dir`` holds anything a run would reuse (a result or a checkpoint)."""
    return os.path.exists(result_path(run_dir)) or bool(checkpoint_steps(run_dir))


def recorded(run_dir: str) -> dict[str, Any] | None:
    """The run config ``run_dir`` recorded (result.json, else config.json), or None."""
    for source in (read_result(run_dir), _read_or_none(os.path.join(run_dir, "config.json"))):
        if isinstance(source, dict) and isinstance(source.get(RUN_CONFIG), dict):
            return source[RUN_CONFIG]
    return None


def _read_or_none(path: str) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: value}


def differences(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (absent: ``-``)."""
    if old is None:
        return [NOT_RECORDED]
    a, b = _flat(canonical(dict(old))), _flat(canonical(dict(new)))
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "-") != b.get(key, "-"):
            out.append(f"{key}: {_short(a.get(key, '-'))} -> {_short(b.get(key, '-'))}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) or value == "-" else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def changed(workdir: str, runs: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """``{run_dir: differences}`` of the started runs whose recorded config is not the
    one given (``runs`` maps run directories to their expected run configs)."""
    out = {}
    for run_dir, run_config in runs.items():
        if started(run_dir):
            old = recorded(run_dir)
            if old is None or canonical(old) != canonical(dict(run_config)):
                out[run_dir] = differences(old, run_config)
    return out


def describe_changes(workdir: str, changes: Mapping[str, list[str]], *,
                     limit: int = 6) -> str:
    """One line: the runs that differ grouped by what differs, and how to proceed."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for run_dir, diffs in changes.items():
        groups.setdefault(tuple(diffs), []).append(os.path.relpath(run_dir, workdir))
    parts = []
    for diffs, names in groups.items():
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        keys = "; ".join(diffs[:limit]) + (f"; ... {len(diffs) - limit} more keys"
                                           if len(diffs) > limit else "")
        parts.append(f"{names[0]}{more}: {keys}")
    return (f"work directory {workdir} holds runs made with another config: "
            + " | ".join(parts) + ". Give a new --workdir, or add --config.on_change=retrain "
            "to delete these runs and train them again.")
