"""Metric logging: a JSONL file and TensorBoard event files, from process 0 only."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxkd.training._sharding import is_main_process

METRICS_FILE = "metrics.jsonl"


def _scalar(value: Any) -> float:
    return float(np.asarray(jax.device_get(value)))


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
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(os.fspath(workdir), "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any], *, split: str = "train") -> None:
        """Appends one record; values are converted to Python floats."""
        if not self.enabled:
            return
        values = {k: _scalar(v) for k, v in metrics.items()}
        record = {"step": int(step), "split": split,
                  **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def truncate_after(self, step: int) -> None:
        """Drops records of steps after ``step`` (a resumed run replays them)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            records = [line for line in f if line.strip()
                       and json.loads(line)["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(records)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` (optionally of one split), in order."""
    with open(os.path.join(os.fspath(workdir), METRICS_FILE)) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if split is None or r["split"] == split]
