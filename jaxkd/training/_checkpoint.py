"""Checkpoints with orbax: the train state and the data position, resumable and checked.

A checkpoint ``<directory>/<step>/`` holds two items: ``state`` (student parameters,
BatchNorm statistics, optimizer state, step and PRNG key, as an orbax PyTree) and
``data`` (the training iterator's ``get_state()`` dict, as JSON). The teacher is never
saved. Every process must call :meth:`Checkpointer.save` (orbax coordinates the hosts and
writes each array once).

A failed write (a full disk, no permission) raises :class:`CheckpointError` with one line
naming the directory and the operating system's reason, chained to a short ``OSError``
instead of orbax's threads-and-asyncio traceback.
"""

from __future__ import annotations

import contextlib
import errno as errno_lib
import os
import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxkd.training._step import TrainState


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; names its path."""


# tensorstore reports a failed file write as e.g. ValueError("RESOURCE_EXHAUSTED: ... No
# space left on device [os_error_code='28']"), not as an OSError.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def os_error(e: BaseException, errnos: Collection[int] | None = None) -> OSError | None:
    """The operating-system error behind ``e``: an ``OSError`` with an errno anywhere in
    its cause/context chain or exception group, or tensorstore's ``os_error_code``; with
    ``errnos``, the first whose code is one of them."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        code = exc.errno if isinstance(exc, OSError) and exc.errno else None
        filename = exc.filename if isinstance(exc, OSError) and code else None
        if code is None:
            match = _OS_ERROR_CODE.search(str(exc))
            code = int(match.group(1)) if match else None
        if code is not None and (errnos is None or code in errnos):
            return OSError(code, os.strerror(code), *([filename] if filename else []))
        todo += [exc.__cause__, exc.__context__, *getattr(exc, "exceptions", ())]
    return None


# What to do when a checkpoint cannot be written, by errno.
_RESUMES = " and run again: training resumes from the last complete checkpoint."
_WRITE_HINTS = {
    errno_lib.ENOSPC: " Free disk space (or use another directory)" + _RESUMES,
    errno_lib.EDQUOT: " Free space within the disk quota (or use another directory)"
                      + _RESUMES,
    errno_lib.EFBIG: " A file outgrew the file-size limit (see `ulimit -f`) or the file "
                     "system's: raise the limit (or use another directory)" + _RESUMES,
    errno_lib.EROFS: " The file system is read-only: use another directory.",
    errno_lib.EACCES: " No permission to write there: use another directory.",
    errno_lib.EPERM: " No permission to write there: use another directory.",
}


def _to_tree(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "rest": state.rest,
            "opt_state": state.opt_state, "key": jax.random.key_data(state.key)}


class Checkpointer:
    """Saves and restores :class:`TrainState` plus the data position in ``directory``.

    Args:
      directory: where step directories go (created if missing).
      max_to_keep: how many recent checkpoints to keep.
      async_save: write in a background thread (the next steps run meanwhile);
        :meth:`wait` or :meth:`close` blocks until the writes are done.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
                 async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(f"cannot write checkpoints to {self.directory}: it is an "
                                  "existing file, not a directory.")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler()})

    def path(self, step: int) -> str:
        """The directory of the checkpoint of ``step``."""
        return os.path.join(self.directory, str(step))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, state: TrainState, data_state: Mapping[str, Any] | None = None, *,
             step: int | None = None) -> None:
        """Saves ``state`` and the JSON-serialisable ``data_state`` at ``step`` (default
        ``state.step``; a lockstep group's stacked state passes the group's step)."""
        step = int(jax.device_get(state.step)) if step is None else int(step)
        with self._writing():
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_tree(state)),
                data=ocp.args.JsonSave(dict(data_state or {}))), force=True)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turns a failed write (here or, with async saves, an earlier one surfacing now)
        into ``CheckpointError: cannot write checkpoint to <dir>: <reason>``."""
        try:
            yield
        except Exception as e:
            cause = os_error(e)
            if cause is None:
                raise
            hint = "" if cause.errno is None else _WRITE_HINTS.get(cause.errno, "")
            raise CheckpointError(f"cannot write checkpoint to {self.directory}: "
                                  f"{cause.strerror}.{hint}") from cause

    def restore(self, template: TrainState,
                step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """Restores ``(state, data_state)`` shaped and sharded like ``template``.

        Args:
          template: a state of the same model and optimizer (e.g. a fresh
            :func:`init_train_state`); its shapes, dtypes and shardings are the target.
          step: which checkpoint; default the latest.

        Raises:
          CheckpointError: no checkpoint, or one that is corrupt or does not match the
            template; the message names the checkpoint directory.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}.")
        path = self.path(step)
        target = _to_tree(template)
        self._check_compatible(step, target)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
            tree, data_state = restored.state, restored.data
        except Exception as e:  # orbax/tensorstore raise many types; re-raise as ours.
            raise CheckpointError(
                f"cannot restore checkpoint {path}: its files are corrupt or incomplete "
                f"({type(e).__name__}: {e})") from e
        state = template.replace(step=tree["step"], params=tree["params"], rest=tree["rest"],
                                 opt_state=tree["opt_state"],
                                 key=jax.random.wrap_key_data(
                                     tree["key"], impl=jax.random.key_impl(template.key)))
        return state, dict(data_state or {})

    def _check_compatible(self, step: int, target: Any) -> None:
        """Compares the saved array names, shapes and dtypes with ``target`` before reading
        any data, so a mismatch is a clear error rather than a failure inside orbax."""
        path = self.path(step)
        try:
            saved = ocp.tree.to_flat_dict(self._manager.item_metadata(step)["state"].tree)
        except Exception as e:
            raise CheckpointError(
                f"cannot read checkpoint {path}: its metadata is corrupt or missing "
                f"({type(e).__name__}: {e})") from e
        wanted = ocp.tree.to_flat_dict(target)
        problems = [f"missing {'/'.join(k)}" for k in wanted if k not in saved]
        problems += [f"unexpected {'/'.join(k)}" for k in saved if k not in wanted]
        for k in wanted.keys() & saved.keys():
            want, got = wanted[k], saved[k]
            if (tuple(got.shape), np.dtype(got.dtype)) != (want.shape, np.dtype(want.dtype)):
                problems.append(f"{'/'.join(k)}: saved {tuple(got.shape)} {got.dtype}, "
                                f"model has {want.shape} {want.dtype}")
        if problems:
            raise CheckpointError(
                f"checkpoint {path} does not fit the model/optimizer being trained "
                f"({len(problems)} mismatches; first: {'; '.join(sorted(problems)[:3])}).")

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk.

        Raises:
          CheckpointError: a pending save failed (names the directory and the reason).
        """
        with self._writing():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's threads (even if a save failed).

        Raises:
          CheckpointError: a pending save failed.
        """
        try:
            self.wait()
        except Exception:
            # orbax re-raises the failed save from close() too: report it once.
            with contextlib.suppress(Exception):
                self._manager.close()
            raise
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
