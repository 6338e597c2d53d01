"""Metric logging: a JSONL file and TensorBoard event files, from process 0 only.

``metrics.jsonl`` is append-only while a run trains, and never rewritten in place: a
resumed run drops the records past its checkpoint by writing a new file and renaming it
over the old one (:func:`jaxkd.training.atomic_write_text`). A kill can therefore cut
at most the last line short; :func:`read_metrics` drops such a damaged last line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxkd.training._io import atomic_write_text
from jaxkd.sharding import is_main_process

METRICS_FILE = "metrics.jsonl"


def _scalar(value: Any) -> float:
    return float(np.asarray(jax.device_get(value)))


def _summary_writer(logdir: str):
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise ImportError(
            "TensorBoard logging needs tensorboardX, which is not installed: "
            "pip install 'jaxkd[experiments]' (or pip install tensorboardX), "
            "or pass tensorboard=False.") from e
    return SummaryWriter(logdir)


def _write_error(e: OSError, path: str) -> OSError:
    return OSError(e.errno, f"cannot write metrics to {path}: {e.strerror or e}")


def _parse(path: str) -> tuple[list[dict], bool]:
    """The records of ``path`` and whether its last line was damaged (and dropped).

    Only the last line may be damaged (a kill or a full disk cut the append short);
    a damaged line followed by valid ones means the file was edited: ValueError.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    # A complete file ends with "\n", so the text after the last "\n" is "" unless the
    # last append was cut short.
    damaged = lines[-1].strip() != ""
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not (isinstance(record, dict) and isinstance(record.get("step"), int)
                    and "split" in record):
                raise ValueError("not a {\"step\": int, \"split\": str, ...} record")
        except ValueError as e:
            if number == len(lines) - 1 and not damaged:  # the last complete line
                return records, True
            raise ValueError(
                f"{path}, line {number}: damaged record ({e}) before other records; only "
                "a damaged last line (a write cut short) is recovered. Remove the line "
                "or the file.") from None
        records.append(record)
    return records, damaged


class MetricWriter:
    """Writes ``{"step", "split", name: value...}`` lines to ``workdir/metrics.jsonl`` and
    ``split/name`` scalars to TensorBoard (``workdir/tensorboard``, via tensorboardX).

    Only process 0 writes (``enabled`` defaults to :func:`is_main_process`); on other
    processes every method is a no-op.

    Args:
      workdir: the run's directory.
      enabled: override who writes (tests).
      tensorboard: also write TensorBoard event files.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None,
                 tensorboard: bool = True):
        self.enabled = is_main_process() if enabled is None else enabled
        self.path = os.path.join(os.fspath(workdir), METRICS_FILE)
        self._tb = None
        if self.enabled:
            os.makedirs(os.fspath(workdir), exist_ok=True)
            if tensorboard:
                self._tb = _summary_writer(os.path.join(os.fspath(workdir), "tensorboard"))
        self._checked = False

    def write(self, step: int, metrics: Mapping[str, Any], *, split: str = "train") -> None:
        """Appends one record; values are converted to Python floats."""
        if not self.enabled:
            return
        values = {k: _scalar(v) for k, v in metrics.items()}
        record = {"step": int(step), "split": split,
                  **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
        if not self._checked:  # appending after a cut-short line would damage both
            self._recover()
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise _write_error(e, self.path) from e
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def truncate_after(self, step: int) -> None:
        """Drops the records of steps after ``step`` and a damaged last line.

        A resumed run calls it with the restored step (0 without a checkpoint) before it
        replays the later steps. The file is replaced atomically: a kill leaves either
        the old records or the kept ones, never an empty or half-written file.
        """
        if not self.enabled:
            return
        self._rewrite(lambda r: r["step"] <= step)

    def _recover(self) -> None:
        self._rewrite(lambda r: True)

    def _rewrite(self, keep) -> None:
        self._checked = True
        if not os.path.exists(self.path):
            return
        records, damaged = _parse(self.path)
        kept = [r for r in records if keep(r)]
        if not damaged and len(kept) == len(records):
            return
        try:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        except OSError as e:
            raise _write_error(e, self.path) from e

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` (optionally of one split), in order.

    A damaged last line (a write cut short by a kill or a full disk) is dropped.

    Raises:
      FileNotFoundError: no metrics file.
      ValueError: a damaged line before the last one (names the file and line).
    """
    records, _ = _parse(os.path.join(os.fspath(workdir), METRICS_FILE))
    return [r for r in records if split is None or r["split"] == split]
