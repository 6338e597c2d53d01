"""A sweep's cells (method x examples per class x seed) and the loop that runs them.

A cell's run directory is ``<workdir>/cells/<method>/n<k>/seed<s>/``; its
``result.json`` marks it finished, so :func:`run_sweep` skips it on a re-run, and a cell
killed midway resumes from its last checkpoint (``jaxkd.training.train`` does that).
The study driver (``_study``) builds what a cell trains; the weight search
(``_search``) runs its own cells through the same loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ml_collections import ConfigDict

from experiments import _runs
from experiments._runs import Cell, cell_dir  # noqa: F401  (the sweep's names)


def seeds(config: ConfigDict) -> list[int]:
    return list(range(config.num_seeds))


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
            if workdir is None or not _runs.is_done(cell_dir(workdir, c))]
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
