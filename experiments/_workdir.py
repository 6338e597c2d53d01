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

**One run at a time.** :func:`locked` / :func:`locked_study` take ``<workdir>/.lock`` with
``fcntl.flock``: the operating system releases it when the process ends, however it
ends, so a killed run never blocks the next; a second run fails at once naming the
process that holds it. (``flock`` needs a local file system; on NFS it may not lock.)
A ``teacher_dir`` of another work directory is locked the same way while a study uses it
(:func:`locked_study`), and must exist unless the study is ``teacher_only`` (it creates it).

**Nothing outside.** A study writes, truncates and deletes only inside its work directory
and the ``teacher_dir`` it was given. The lock file is opened without following a
symbolic link, and a link is refused; when a directory is locked, every symbolic link in
it that points outside it (a ``checkpoints`` link to another disk, say, where orbax would
write and prune) is refused, naming the link and its target, before anything is written.

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
import stat
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


class WorkdirError(RuntimeError):
    """A work directory (or teacher_dir) that cannot be used; the message names the path
    and what to do."""


class WorkdirInUse(WorkdirError):
    """Another process holds the work directory's lock; the message names it."""


class LinkOutside(WorkdirError):
    """A symbolic link in a work directory points outside it; the message names it."""


class ConfigChanged(ConfigError):
    """Runs of the work directory were made with another config; the message says which
    keys differ (old -> new) and how to proceed."""


# ----------------------------------------------------------------------------------------
# The directory itself.


def check(workdir: str, *, what: str = "--workdir") -> str:
    """``workdir`` if it can be a work directory.

    Raises:
      ConfigError: it is empty or names an existing file.
    """
    if not isinstance(workdir, str) or not workdir.strip():
        raise ConfigError(f"{what} is empty; give the directory for the study's runs and "
                          "results (e.g. --workdir runs/limited_data).")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"{what} {workdir!r} is a file, not a directory; give a "
                          f"directory (it will hold the runs and the results).")
    return workdir


def setup(workdir: str, *, what: str = "--workdir") -> str:
    """Checks (:func:`check`) and creates the work directory; returns it.

    Raises:
      ConfigError: see :func:`check`.
      WorkdirError: it cannot be created (names it and the reason).
    """
    try:
        os.makedirs(check(workdir, what=what), exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create {what} {workdir}: {e.strerror or e}"
                           f"{f' ({e.filename})' if e.filename not in (None, workdir) else ''}"
                           f"; give a directory you can write.") from e
    return workdir


def links_outside(directory: str, allowed: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``(link, target)`` of every symbolic link under ``directory`` whose target lies
    outside ``directory`` and outside the directories ``allowed`` (links are not
    followed; a dangling link counts by where it points)."""
    roots = [os.path.realpath(d) for d in (directory, *allowed)]
    out = []
    for parent, dirs, files in os.walk(directory, followlinks=False):
        for name in (*dirs, *files):
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                continue
            target = os.path.realpath(path)
            if not any(target == r or target.startswith(r.rstrip(os.sep) + os.sep)
                       for r in roots):
                out.append((path, target))
    return sorted(out)


def check_links(directory: str, *, allowed: tuple[str, ...] = (),
                what: str = "work directory") -> None:
    """Refuses symbolic links under ``directory`` that point outside it (or ``allowed``).

    Raises:
      LinkOutside: names the first links and their targets, and what to do.
    """
    found = links_outside(directory, allowed)
    if found:
        shown = "; ".join(f"{link} -> {target}" for link, target in found[:3])
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise LinkOutside(f"{what} {directory} holds symbolic links to places outside it, "
                          f"where the study would write or delete: {shown}{more}. Remove "
                          f"the links (or move what they point to into the directory).")


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


def _open_lock(path: str, what: str) -> int:
    """The lock file's descriptor, opened without following a symbolic link."""
    try:
        # O_NOFOLLOW: a link at .lock is an error, not a file elsewhere to truncate;
        # O_NONBLOCK: a FIFO there cannot hang the open.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise WorkdirError(f"the lock file {path} of {what} is a symbolic link (to "
                               f"{os.readlink(path)}); remove the link: the lock is a plain "
                               f"file the study writes.") from None
        raise WorkdirError(f"cannot open the lock file {path} of {what}: "
                           f"{e.strerror or e}.") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WorkdirError(f"the lock file {path} of {what} is not a regular file; remove "
                           f"it.")
    return fd


def acquire(workdir: str, *, command: str | None = None, what: str = "--workdir",
            allowed: tuple[str, ...] = ()) -> bool:
    """Locks ``workdir`` for this process; False if this process holds it already.

    A newly locked directory is checked for symbolic links that point outside it (or
    outside ``allowed``): :func:`check_links`.

    Raises:
      WorkdirInUse: another process holds it (the message names the process).
      WorkdirError: it cannot be created, its lock file is a link, or it holds links
        that point outside it.
    """
    key = os.path.realpath(setup(workdir, what=what))
    if key in _HELD:
        return False
    path = os.path.join(workdir, LOCK_FILE)
    name = "work directory" if what == "--workdir" else what
    fd = _open_lock(path, f"{name} {workdir}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        check_links(workdir, allowed=allowed, what=name)
    except BlockingIOError:
        os.close(fd)
        raise WorkdirInUse(f"{name} {workdir} is in use by {_holder(path)}; wait for "
                           f"it to finish, or give another {what}.") from None
    except BaseException:
        os.close(fd)
        raise
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command or " ".join([os.path.basename(sys.executable),
                                            *sys.argv])}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError as e:
        os.close(fd)
        raise OSError(e.errno, e.strerror, path) from e  # a failure line names the file
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


def named_teacher_dir(config: Mapping[str, Any]) -> str | None:
    """The ``teacher_dir`` the config names (None: the work directory's own teacher).

    Raises:
      ConfigError: it does not exist (a typo would train a new teacher there, outside
        the work directory) unless ``teacher_only`` is set, which creates it; or it is a
        file.
    """
    path = config.get("teacher_dir") or ""
    if not path:
        return None
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--config.teacher_dir {path!r} is a file; give the run directory "
                          f"of a trained teacher.")
    if not os.path.isdir(path) and not config.get("teacher_only", False):
        raise ConfigError(f"--config.teacher_dir {path!r} does not exist; give the run "
                          f"directory of a trained teacher (made with --config.teacher_only="
                          f"True and this teacher_dir), or --config.teacher_dir='' to train "
                          f"the teacher in the work directory.")
    return path


def hold_study(workdir: str, config: Mapping[str, Any], *,
               command: str | None = None) -> list[str]:
    """Locks the work directory and the config's ``teacher_dir`` (:func:`named_teacher_dir`)
    until :func:`release` or the end of the process; returns the directories this call
    newly locked.

    Raises:
      ConfigError: a ``teacher_dir`` that does not exist (see :func:`named_teacher_dir`).
      WorkdirInUse: another process holds one of them.
      WorkdirError: one cannot be created, or holds links that point outside it.
    """
    teacher = named_teacher_dir(config)
    allowed = (teacher,) if teacher else ()
    new = [workdir] if acquire(workdir, command=command, allowed=allowed) else []
    if teacher:
        try:
            if acquire(teacher, command=command, what="--config.teacher_dir"):
                new.append(teacher)
        except BaseException:
            for path in new:
                release(path)
            raise
    return new


@contextlib.contextmanager
def locked_study(workdir: str, config: Mapping[str, Any], *,
                 command: str | None = None) -> Iterator[None]:
    """Holds :func:`hold_study`'s locks for the block."""
    new = hold_study(workdir, config, command=command)
    try:
        yield
    finally:
        for path in new:
            release(path)


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
    return _recorded(run_dir)[0]


def _recorded(run_dir: str) -> tuple[dict[str, Any] | None, str]:
    """``(run config, "")``, or ``(None, why it is not there)``: the ``config.json`` the
    run wrote when it started is missing or damaged, or predates run configs."""
    result = read_result(run_dir)
    if isinstance(result, dict) and isinstance(result.get(RUN_CONFIG), dict):
        return result[RUN_CONFIG], ""
    path = os.path.join(run_dir, "config.json")
    try:
        source = read_json(path)
    except FileNotFoundError:
        return None, f"(its config.json, written when a run starts, is missing: {path})"
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return None, f"(its config.json is damaged, {path}: {reason[:80]})"
    if isinstance(source, dict) and isinstance(source.get(RUN_CONFIG), dict):
        return source[RUN_CONFIG], ""
    if not isinstance(source, dict):
        return None, f"(its config.json is damaged, {path}: not a JSON object)"
    return None, NOT_RECORDED


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: value}


def differences(old: Mapping[str, Any] | None, new: Mapping[str, Any], *,
                missing: str = NOT_RECORDED) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (absent: ``-``);
    ``[missing]`` (why nothing was recorded) when ``old`` is None."""
    if old is None:
        return [missing]
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
            old, why = _recorded(run_dir)
            if old is None or canonical(old) != canonical(dict(run_config)):
                out[run_dir] = differences(old, run_config, missing=why)
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
    unreadable = all(len(d) == 1 and d[0].startswith("(its config.json") for d in groups)
    head = ("holds runs whose recorded config cannot be read, so they cannot be checked "
            "against this config" if unreadable else "holds runs made with another config")
    return (f"work directory {workdir} {head}: "
            + " | ".join(parts) + ". Give a new --workdir, or add --config.on_change=retrain "
            "to delete these runs and train them again.")
