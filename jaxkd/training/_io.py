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
from collections.abc import Iterator
from typing import IO, Any


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


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", *,
                encoding: str | None = None) -> Iterator[IO]:
    """A file open for writing whose content replaces ``path`` when the block ends.

    The content goes to a temporary file in the same directory, which is flushed,
    ``fsync``-ed and renamed over ``path`` (:func:`os.replace`) when the block ends
    without an error; on an error the temporary file is removed and ``path`` is
    unchanged. For a writer that wants a file object (``fig.savefig(f)``).

    Args:
      path: the file to replace.
      mode: ``"w"`` (text, ``encoding`` default utf-8) or ``"wb"``.
      encoding: the text encoding.

    Raises:
      OSError: the write failed (e.g. ``ENOSPC``, ``EFBIG``); its ``filename`` is
        ``path`` (the temporary file's write errors name no file of their own).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb'; got {mode!r}.")
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    tmp = os.path.join(directory,
                       f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # Mode 0o666 filtered by the umask, as open(path, "w") would create it (mkstemp's
        # 0o600 would make results unreadable to the group).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from e
    try:
        f = (os.fdopen(fd, "wb") if mode == "wb"
             else os.fdopen(fd, "w", encoding=encoding or "utf-8"))
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror, path) from e
        raise
    _fsync_dir(directory)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` atomically (temporary file in the same directory,
    flush, fsync, :func:`os.replace`: :func:`atomic_file`).

    After a kill or a full disk, ``path`` holds either its previous content or ``text``,
    never a mixture; the temporary file is removed on failure.

    Raises:
      OSError: the write failed (e.g. ``ENOSPC``); ``path`` is unchanged and is the
        error's ``filename``.
    """
    with atomic_file(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    """:func:`atomic_write_text` of ``json.dumps(obj, **dumps_kwargs)`` plus a newline.

    The JSON is serialised before the file is touched, so an unserialisable ``obj``
    raises ``TypeError`` and leaves ``path`` as it was.
    """
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")
