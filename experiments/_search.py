"""Loss weights chosen on validation before a sweep (studies 1 and 3).

``config.search`` holds the search: ``search.sizes`` and ``search.seeds`` (seeds
``0..k-1``), and ``search.<term>.<argument>``, candidates for ``loss.<term>.<argument>``
(``search.jacobian.weight = (1.0, 3.0, 10.0)``; ``()``: not searched). Before the sweep,
each method with a searched term is trained with every candidate (the product of the
candidates, for several searched arguments) at the search's sizes and seeds, in
``<workdir>/weight_search/cells/<method>@<weights>/n<k>/seed<s>/``. Per method the
candidate of best mean best-step **validation** accuracy wins (a tie goes to the first
listed); ``<workdir>/weight_search.json`` and the study's ``results.md`` show every
candidate and the choice, and every cell of that method trains with it. The test split
chooses nothing.

The search's run with the chosen weights *is* that method's cell at the search's sizes
and seeds (same seed, subset, initial weights, budget and loss), so :func:`reuse_run`
copies it into ``cells/`` instead of training it again (``reused_from`` in its result;
the study's time counts it once). ``search.sizes = ()`` turns the search off: the
``loss.*`` values as set. The study driver (``_study``) trains the runs.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

from experiments import _sweep, _workdir

SEARCH_DIR = "weight_search"
SEARCH_FILE = "weight_search.json"

Terms = Callable[[str], Sequence[str]]


def sizes(config: ConfigDict) -> list[int | str]:
    return list(config.search.sizes)


def seeds(config: ConfigDict) -> list[int]:
    return list(range(int(config.search.seeds)))


def _axes(config: ConfigDict, terms: Sequence[str]) -> list[list[tuple[str, Any]]]:
    """One axis per searched argument of ``terms``: ``[("jacobian.weight", 1.0), ...]``."""
    axes = []
    for term in dict.fromkeys(terms):
        for arg, values in (config.search[term].items() if term in config.search else ()):
            if values:
                axes.append([(f"{term}.{arg}", _value(v)) for v in values])
    return axes


def _value(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def candidates(config: ConfigDict, terms: Sequence[str]) -> list[dict[str, Any]]:
    """The settings the search tries for a method of loss ``terms`` (``[]``: none).

    One axis per searched argument of its terms, their product if several.
    """
    if not sizes(config):
        return []
    axes = _axes(config, terms)
    return [dict(combo) for combo in itertools.product(*axes)] if axes else []


def identity(config: ConfigDict, terms: Sequence[str]) -> dict[str, Any]:
    """What of the search chooses the weights of a method of loss ``terms``: its sizes,
    seeds and those terms' candidates (part of its cells' run config)."""
    return {"sizes": sizes(config), "seeds": int(config.search.seeds),
            "candidates": {axis[0][0]: [v for _, v in axis]
                           for axis in _axes(config, terms)}}


def candidate_name(weights: Mapping[str, Any]) -> str:
    """``{"jacobian.weight": 10.0}`` -> ``"jacobian.weight10"`` (a directory name)."""
    return "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}"
                    for k, v in sorted(weights.items())) or "default"


def search_cell(method: str, weights: Mapping[str, Any], examples_per_class, seed: int
                ) -> _sweep.Cell:
    return _sweep.Cell(f"{method}@{candidate_name(weights)}", examples_per_class, seed)


def loss_with(loss: ConfigDict, weights: Mapping[str, Any]) -> ConfigDict:
    """``loss`` with ``weights`` (``{"jacobian.weight": 3.0}``) set."""
    out = ConfigDict(loss.to_dict())
    for key, value in weights.items():
        term, _, arg = key.partition(".")
        out[term][arg] = value
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
        for weights in candidates(config, terms(method)):
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


def reuse_run(config: ConfigDict, workdir: str, cell: _sweep.Cell,
              weights: Mapping[str, Any], run_config: Mapping[str, Any] | None) -> None:
    """Copies the search's run of ``cell`` with the chosen ``weights`` as the cell's run.

    That run is the same training (same seed, subset, initial weights, budget and loss),
    so the sweep does not train it twice; its result records ``run_config``, the
    cell's own. A cell already started is left to resume.
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
        if run_config is not None:  # the cell's own: a re-run checks it
            result[_workdir.RUN_CONFIG] = _workdir.canonical(dict(run_config))
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
