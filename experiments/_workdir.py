"""A study's work directory: where it lives and its lock (one run at a time).

``<workdir>/.lock`` is taken with ``fcntl.flock``: the operating system releases it when
the process ends, however it ends, so a killed run never blocks the next; a second run
fails at once naming the holder (``flock`` needs a local file system). A ``teacher_dir``
of another work directory is locked the same way while a study uses it. A study writes
only inside its work directory and that ``teacher_dir``: the lock file is opened without
following a symbolic link, and a link in a locked directory that points outside it is
refused before anything is written. What the runs inside record: ``_runs``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from experiments.configs._base import ConfigError

LOCK_FILE = ".lock"


class WorkdirError(RuntimeError):
    """A work directory (or teacher_dir) that cannot be used; the message names the path
    and what to do."""


class WorkdirInUse(WorkdirError):
    """Another process holds the work directory's lock; the message names it."""


class LinkOutside(WorkdirError):
    """A symbolic link in a work directory points outside it; the message names it."""


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
        if not _is_file(path, fd):  # its holder released and removed it meanwhile
            os.close(fd)
            return acquire(workdir, command=command, what=what, allowed=allowed)
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


def _is_file(path: str, fd: int) -> bool:
    """Whether ``path`` is still the file open as ``fd`` (not removed or replaced)."""
    try:
        here = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)


def release(workdir: str) -> None:
    """Unlocks ``workdir`` if this process holds it, and removes its lock file.

    The file is removed while still locked, so a process that opened it meanwhile finds
    it gone once it gets the lock and takes a new one (:func:`acquire`); a killed
    process leaves its file, which blocks nothing.
    """
    key = os.path.realpath(workdir)
    fd = _HELD.pop(key, None)
    if fd is not None:
        path = os.path.join(key, LOCK_FILE)
        if _is_file(path, fd):
            with contextlib.suppress(OSError):
                os.unlink(path)
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
