"""The runs of a work directory: the sweep's cells, where each lives, the loop that runs
them, what each recorded, its JSON files.

    <workdir>/
      .lock                          who runs here now (``_workdir``)
      results.{json,csv,md}, *.png   the report (``_report``)
      teacher/                       the teacher's run directory
      cells/<method>/n<k>/seed<s>/   one run directory per cell (:class:`Cell`)
      weight_search.json             the loss-weight search's choice (``_search``)
      weight_search/cells/<method>@<weights>/n<k>/seed<s>/   one run per candidate

A run directory is what :func:`jaxkd.training.train` writes (``checkpoints/``,
``metrics.jsonl``, ``config.json``) plus ``result.json``, which marks it finished; a
finished run keeps only its last checkpoint (:func:`prune`). Each run records its *run
config* (what determines its result) when it starts and ends; a run the current config
would reuse with another run config is refused or retrained (:func:`changed`). Every
file is written atomically; a ``result.json`` that cannot be read counts as not
finished (docs/experiments.md, "Work directories").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

from experiments.configs._base import ConfigError
from jaxkd import training

RESULT_FILE = "result.json"
CHECKPOINTS = "checkpoints"
RUN_CONFIG = "run_config"  # the key of the run config in config.json and result.json
NOT_RECORDED = "(not recorded: made before runs recorded their config)"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of a sweep: a method at a data size and a seed."""
    method: str
    examples_per_class: int | str
    seed: int

    @property
    def name(self) -> str:
        return (f"{self.method.replace('+', '-')}/n{self.examples_per_class}/"
                f"seed{self.seed}")


def cell_dir(workdir: str, cell: Cell) -> str:
    return os.path.join(workdir, "cells", cell.name)


class ConfigChanged(ConfigError):
    """Runs of the work directory were made with another config; the message says which
    keys differ (old -> new) and how to proceed."""


def seeds(config: ConfigDict) -> list[int]:
    """The report seeds: ``first_seed .. first_seed + num_seeds - 1``. The weight search
    chooses on its own seeds ``0 .. search.seeds - 1``; a ``first_seed`` at or above
    ``search.seeds`` keeps the seeds that report apart from those that chose."""
    first = int(config.get("first_seed", 0))
    return list(range(first, first + config.num_seeds))


def sizes(config: ConfigDict) -> list[int | str]:
    """The examples-per-class values of the sweep (validated by ``_checks.validate``)."""
    return list(config.examples_per_class)


def cells(config: ConfigDict) -> list[Cell]:
    """Seed-major order: an interrupted sweep has every method for the first seeds."""
    return [Cell(m, n, s) for s in seeds(config) for n in sizes(config)
            for m in config.methods]


def run_sweep(selected: Sequence[Cell], run: Callable[[Cell], dict[str, Any]], *,
              workdir: str | None, desc: str) -> dict[Cell, dict[str, Any]]:
    """Runs ``run(cell)`` for every cell with a progress bar (plain lines when not on a
    terminal); finished cells are skipped.

    A cell is finished when ``workdir/cells/<cell.name>/result.json`` exists; ``run``
    must write it (``_fit.fit`` does); with ``workdir=None`` none is skipped. The bar
    counts only the cells left, so its rate and ETA are those of this invocation.
    """
    from jaxkd.training._progress import progress_bar  # tqdm, or lines in a log
    results = {}
    todo = [c for c in selected
            if workdir is None or not is_done(cell_dir(workdir, c))]
    reused = len(selected) - len(todo)
    label = f"{desc} ({reused} finished before)" if reused else desc
    with progress_bar(len(todo), desc=label, unit="cell", disable=not todo) as bar:
        for cell in selected:
            if cell in todo:
                bar.set_postfix_str(cell.name)
            results[cell] = run(cell)
            if cell in todo:
                bar.update(1)
    return results


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
    damaged file counts as not finished: the run is recomputed). A search run that
    diverged is finished too (``{"diverged": why}``, ``_search.diverged``)."""
    try:
        result = read_json(result_path(run_dir))
    except (OSError, ValueError):
        return None
    if isinstance(result, dict) and isinstance(result.get("diverged"), str):
        return result
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
