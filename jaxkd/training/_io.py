"""Crash-safe file writes: a kill at any instant leaves the old file or the new one.

A file is written to a temporary name in its own directory, flushed and ``fsync``-ed,
then renamed over the target with :func:`os.replace` (atomic on POSIX and Windows within
one file system); the directory is ``fsync``-ed so the rename itself survives a power
loss. Readers therefore never see a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Any


def _fsync_dir(directory: str) -> None:
    # Makes the rename durable; not possible on every platform (Windows), hence best-effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` atomically (temporary file in the same directory,
    flush, fsync, :func:`os.replace`).

    After a kill or a full disk, ``path`` holds either its previous content or ``text``,
    never a mixture; the temporary file is removed on failure.

    Raises:
      OSError: the write failed (e.g. ``ENOSPC``); ``path`` is unchanged.
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    tmp = os.path.join(directory,
                       f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # Mode 0o666 filtered by the umask, as open(path, "w") would create it (mkstemp's
    # 0o600 would make results unreadable to the group).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    """:func:`atomic_write_text` of ``json.dumps(obj, **dumps_kwargs)`` plus a newline.

    The JSON is serialised before the file is touched, so an unserialisable ``obj``
    raises ``TypeError`` and leaves ``path`` as it was.
    """
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")
