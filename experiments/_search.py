"""Loss weights chosen on validation before a sweep (studies 1 and 3).

Before the sweep, each method with a searched term is trained with every candidate
weight (the product of the candidates, for a method with several searched terms) at the
search's sizes (``weight_search_sizes``) and seeds (``weight_search_seeds``), in
``<workdir>/weight_search/cells/<method>@<weights>/n<k>/seed<s>/``. Per method the
candidate of best mean best-step **validation** accuracy wins (a tie goes to the first
listed); ``<workdir>/weight_search.json`` and the study's ``results.md`` show every
candidate and the choice, and every cell of that method trains with it. The test split
chooses nothing.

The search's run with the chosen weights *is* that method's cell at the search's sizes
and seeds (same seed, subset, initial weights, budget and loss), so :func:`reuse_run`
copies it into ``cells/`` instead of training it again (``reused_from`` in its result;
the study's time counts it once). ``weight_search_sizes = ()`` or a config without the
key turns the search off: the ``loss.*`` weights as set.

A study gives :func:`run` its ``terms(method)`` (the loss-term names of a method) and a
``fit(run_dir, method, examples_per_class, seed, weights)`` that trains one run.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from ml_collections import ConfigDict

from experiments import _sweep, _workdir

SEARCH_DIR = "weight_search"
SEARCH_FILE = "weight_search.json"
# A searched loss term: (its weight in config.loss, the config key of its candidates).
# A term is searched in a config that has its candidates key.
SEARCHED = {"jacobian": ("jacobian_weight", "jacobian_weights"),
            "vjp": ("vjp_weight", "projection_weights"),
            "jvp": ("jvp_weight", "projection_weights"),
            "attention": ("attention_weight", "attention_weights"),
            "attention_jacobian": ("attention_jacobian_weight",
                                   "attention_jacobian_weights")}

Terms = Callable[[str], Sequence[str]]
Fit = Callable[[str, str, Any, int, dict[str, float]], dict[str, Any]]


def sizes(config: ConfigDict) -> list[int | str]:
    return list(config.get("weight_search_sizes", ()) or ())


def seeds(config: ConfigDict) -> list[int]:
    return list(range(int(config.get("weight_search_seeds", 1) or 1)))


def candidates(config: ConfigDict, method: str, terms: Terms) -> list[dict[str, float]]:
    """The loss-weight settings the search tries for ``method`` (``[]``: none to choose).

    One axis per searched term of the method that the config gives candidates for,
    their product if several.
    """
    if not sizes(config):
        return []
    axes = []
    for term in terms(method):
        if term in SEARCHED and SEARCHED[term][1] in config:
            key, values = SEARCHED[term]
            axes.append([(key, float(v)) for v in config[values]])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else []


def candidate_name(weights: dict[str, float]) -> str:
    """``{"jacobian_weight": 10.0}`` -> ``"jacobian_weight10"`` (a directory name)."""
    return "-".join(f"{k}{v:g}" for k, v in sorted(weights.items())) or "default"


def search_cell(method: str, weights: dict[str, float], examples_per_class, seed: int
                ) -> _sweep.Cell:
    return _sweep.Cell(f"{method}@{candidate_name(weights)}", examples_per_class, seed)


def loss_with(loss: ConfigDict, weights: dict[str, float]) -> ConfigDict:
    out = ConfigDict(loss.to_dict())
    out.update(weights)
    return out


def choose(config: ConfigDict, methods: Sequence[str], terms: Terms,
           results: dict[_sweep.Cell, dict[str, Any]]) -> dict[str, Any]:
    """Per method, the candidate of best mean best-step validation accuracy.

    The mean is over the search's sizes and seeds; a tie goes to the candidate listed
    first. Only validation accuracies are read: the test split chooses nothing.
    """
    out = {"sizes": sizes(config), "seeds": seeds(config), "methods": {}}
    for method in methods:
        rows, best = [], None
        for weights in candidates(config, method, terms):
            per_size = {}
            for n in out["sizes"]:
                per_size[str(n)] = [100.0 * results[search_cell(method, weights, n, s)]
                                    ["best"]["validation"] for s in out["seeds"]]
            values = [v for vs in per_size.values() for v in vs]
            row = {"weights": weights, "validation": per_size,
                   "mean": sum(values) / len(values)}
            rows.append(row)
            if best is None or row["mean"] > best["mean"]:
                best = row
        if rows:
            out["methods"][method] = {"candidates": rows, "chosen": best["weights"]}
    return out


def chosen(search: dict[str, Any] | None, method: str) -> dict[str, float]:
    """The weights ``search`` chose for ``method`` (``{}``: none searched)."""
    return dict(((search or {}).get("methods") or {}).get(method, {}).get("chosen", {}))


def run(config: ConfigDict, workdir: str, methods: Sequence[str], terms: Terms, fit: Fit
        ) -> dict[str, Any]:
    """Trains the search's runs (cached) and writes ``weight_search.json``: the choice."""
    todo = [(m, w, n, s) for s in seeds(config) for n in sizes(config)
            for m in methods for w in candidates(config, m, terms)]
    by_cell = {search_cell(m, w, n, s): (m, w) for m, w, n, s in todo}
    search_workdir = os.path.join(workdir, SEARCH_DIR)
    check_runs(config, search_workdir, {
        _sweep.cell_dir(search_workdir, cell): {
            **_sweep.cell_config(config, _sweep.Cell(m, cell.examples_per_class, cell.seed)),
            "search_weights": dict(w)}
        for cell, (m, w) in by_cell.items()})

    def run_one(cell: _sweep.Cell) -> dict[str, Any]:
        method, weights = by_cell[cell]
        return fit(_sweep.cell_dir(search_workdir, cell), method, cell.examples_per_class,
                   cell.seed, weights)

    results = _sweep.run_sweep(list(by_cell), run_one, workdir=search_workdir,
                               desc="weight search")
    search = choose(config, methods, terms, results)
    search["seconds"] = sum(float(r["seconds"]) for r in results.values())
    _workdir.write_json(os.path.join(workdir, SEARCH_FILE), search)
    return search


def check_runs(config: ConfigDict, search_workdir: str,
               runs: dict[str, dict[str, Any]]) -> None:
    """The search's runs, like the sweep's cells (``_sweep.check_configs``): a started run
    made with another config is refused, or deleted with ``on_change=retrain``; then each
    run's config is noted for ``_fit.fit`` to record. (Its main cells were checked before
    training; this keeps a retrained sweep from reusing a stale search.)"""
    changes = _workdir.changed(search_workdir, runs)
    if changes and config.get("on_change", "refuse") != "retrain":
        raise _workdir.ConfigChanged(_workdir.describe_changes(search_workdir, changes))
    for run_dir in changes:
        shutil.rmtree(run_dir)
    for run_dir, run_config in runs.items():
        _workdir.expect(run_dir, run_config)


def reuse_run(config: ConfigDict, workdir: str, cell: _sweep.Cell,
              weights: dict[str, float]) -> None:
    """Copies the search's run of ``cell`` with the chosen ``weights`` as the cell's run.

    That run is the same training (same seed, subset, initial weights, budget and loss),
    so the sweep does not train it twice. A cell already started is left to resume.
    """
    if not weights or cell.examples_per_class not in sizes(config) \
            or cell.seed not in seeds(config):
        return
    source = _sweep.cell_dir(os.path.join(workdir, SEARCH_DIR),
                             search_cell(cell.method, weights, cell.examples_per_class,
                                         cell.seed))
    target = _sweep.cell_dir(workdir, cell)
    if _workdir.is_done(source) and not os.path.exists(target):
        shutil.copytree(source, target + ".tmp", dirs_exist_ok=True)
        result = _workdir.read_json(_workdir.result_path(target + ".tmp"))
        result["reused_from"] = os.path.relpath(source, workdir)  # its time counts once
        # The cell's own run config (noted by _sweep.check_configs): a re-run checks it.
        run_config = _workdir.expected(target)
        if run_config is not None:
            result[_workdir.RUN_CONFIG] = run_config
        _workdir.write_json(_workdir.result_path(target + ".tmp"), result)
        os.replace(target + ".tmp", target)


def seconds(search: dict[str, Any] | None, results: dict[_sweep.Cell, dict[str, Any]]
            ) -> float:
    """The search's and the cells' recorded time, a run copied from the search once."""
    return (float((search or {}).get("seconds", 0.0))
            + sum(float(r["seconds"]) for r in results.values() if not r.get("reused_from")))


def markdown(search: dict[str, Any] | None, label: Callable[[str], str]) -> list[str]:
    """The search's table: best-step validation accuracy per candidate, the choice."""
    if not search or not search.get("methods"):
        return []
    sizes_ = [str(n) for n in search["sizes"]]
    out = ["", "### Loss weights chosen on validation", "",
           f"Before the sweep, each method with a searched loss term was trained with every "
           f"candidate weight at {', '.join(sizes_)} examples per class, seed(s) "
           f"{', '.join(map(str, search['seeds']))}; the candidate of best mean validation "
           f"accuracy (best step, %) is used for every cell of that method (**bold**). The "
           f"test split chose nothing.", "",
           "| method | weights | " + " | ".join(f"val. n={n}" for n in sizes_)
           + " | mean |", "|---|---|" + "---|" * (len(sizes_) + 1)]
    for method, entry in search["methods"].items():
        for row in entry["candidates"]:
            mark = "**" if row["weights"] == entry["chosen"] else ""
            vals = [sum(row["validation"][n]) / len(row["validation"][n]) for n in sizes_]
            out.append(f"| {label(method)} | {mark}{candidate_name(row['weights'])}"
                       f"{mark} | " + " | ".join(f"{v:.2f}" for v in vals)
                       + f" | {mark}{row['mean']:.2f}{mark} |")
    return out
