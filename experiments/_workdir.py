"""The work directory of a study: its layout, its JSON files, what a finished run keeps.

    <workdir>/
      results.{json,csv,md}, *.png   the report (``_report``)
      jax_cache/                     compiled programs (``_runtime``)
      teacher/                       the teacher's run directory
      cells/<method>/n<k>/seed<s>/   one run directory per cell

A run directory is what :func:`jaxkd.training.train` writes (``checkpoints/``,
``metrics.jsonl``, ``config.json``) plus ``result.json``, which marks it finished. A
finished run keeps only its last checkpoint (study 2 and a reused teacher restore it)
and its metrics; :func:`prune` deletes the rest.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

RESULT_FILE = "result.json"
CHECKPOINTS = "checkpoints"


def setup(workdir: str) -> str:
    """Creates the work directory (if missing); returns it."""
    os.makedirs(workdir, exist_ok=True)
    return workdir


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes atomically (a killed run never leaves a half-written file)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def result_path(run_dir: str) -> str:
    return os.path.join(run_dir, RESULT_FILE)


def is_done(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a finished run (its ``result.json``)."""
    return os.path.exists(result_path(run_dir))


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def prune(run_dir: str, keep_step: int) -> None:
    """Deletes every checkpoint of a finished run but ``keep_step``'s.

    Only after ``result.json`` is written: until then a killed run resumes from any of
    its checkpoints. Metrics (``metrics.jsonl``, TensorBoard files) stay.
    """
    if not is_done(run_dir):
        raise RuntimeError(f"{run_dir} is not finished (no {RESULT_FILE}); nothing pruned.")
    ckpt = checkpoint_dir(run_dir)
    if os.path.isdir(ckpt):
        for name in os.listdir(ckpt):
            if name.isdigit() and name != str(keep_step):
                shutil.rmtree(os.path.join(ckpt, name))
