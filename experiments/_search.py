"""Loss weights chosen on validation before a sweep (studies 1 and 3).

``search.<term>.<argument>`` holds candidates for ``loss.<term>.<argument>``; each
method with a searched term trains every candidate (the product, for several arguments)
at ``search.sizes`` and seeds ``0..search.seeds-1`` under ``<workdir>/weight_search/``,
and the candidate of best mean best-step **validation** accuracy wins (a tie: the first
listed). A choice on its grid's edge extends the grid outward, one geometric step at a
time (``_grid.extensions``), until it is interior, ``search.extend`` steps were taken on
that side, or the next value diverged (a run that goes non-finite is recorded as
diverged, never chosen); the table says which. A method that adds terms to another
keeps that method's choice and chooses among its own candidates only, in rounds
(:func:`levels`, :func:`to_train`). The run with the chosen weights *is* the method's
cell at the search's sizes and seeds, so :func:`reuse_run` copies it instead of training
it again. The test split chooses
nothing (docs/experiments.md, "The weight search").
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from experiments import _grid, _runs
from experiments.configs._base import ConfigError

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
                default = config.loss[term][arg] if arg in config.loss[term] else None
                axes.append([(f"{term}.{arg}", _value(v, default)) for v in values])
    return axes


def _value(value: Any, default: Any) -> Any:
    """A candidate as the loss argument's type: ``3`` for a float weight is ``3.0``; an
    integer argument (``k``, ``num_probes``) keeps its integers."""
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(default, float):
        return float(value)
    return value


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
    out = {"sizes": sizes(config), "seeds": int(config.search.seeds),
           "candidates": {axis[0][0]: [v for _, v in axis]
                          for axis in _axes(config, terms)}}
    if _grid.extend_limit(config):  # absent: the fixed grids of older runs
        out["extend"] = _grid.extend_limit(config)
    return out


def candidate_name(weights: Mapping[str, Any]) -> str:
    """``{"jacobian.weight": 10.0}`` -> ``"jacobian.weight10"`` (a directory name)."""
    return "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}"
                    for k, v in sorted(weights.items())) or "default"


def search_cell(method: str, weights: Mapping[str, Any], examples_per_class, seed: int
                ) -> _runs.Cell:
    return _runs.Cell(f"{method}@{candidate_name(weights)}", examples_per_class, seed)


def loss_with(loss: ConfigDict, weights: Mapping[str, Any]) -> ConfigDict:
    """``loss`` with ``weights`` (``{"jacobian.weight": 3.0}``) set."""
    out = ConfigDict(loss.to_dict())
    for key, value in weights.items():
        term, _, arg = key.partition(".")
        out[term][arg] = value
    return out


def base_method(method: str, methods: Sequence[str], terms: Terms,
                config: ConfigDict) -> str | None:
    """The method of ``methods`` that ``method`` adds searched terms to (the one with the
    most terms among those whose terms and searched arguments are strict subsets of
    ``method``'s; the first on a tie), or None: ``kd+jacobian+ce`` -> ``kd+ce``."""
    own = set(terms(method))
    tried = candidates(config, terms(method))
    axes = set(tried[0]) if tried else set()
    bases = [m for m in methods if m != method and set(terms(m)) < own
             and candidates(config, terms(m))
             and set(candidates(config, terms(m))[0]) < axes]
    if not bases:
        return None
    return max(bases, key=lambda m: (len(set(terms(m))), -list(methods).index(m)))


def levels(config: ConfigDict, methods: Sequence[str], terms: Terms) -> list[list[str]]:
    """The methods with searched terms, in rounds: those with no base method first, then
    those whose base is in an earlier round (listed order within a round)."""
    depth: dict[str, int] = {}

    def of(method: str) -> int:
        if method not in depth:
            base = base_method(method, methods, terms, config)
            depth[method] = 0 if base is None else of(base) + 1
        return depth[method]

    searched = [m for m in methods if candidates(config, terms(m))]
    rounds = [[m for m in searched if of(m) == d]
              for d in range(max(map(of, searched), default=-1) + 1)]
    return [r for r in rounds if r]


def to_train(config: ConfigDict, method: str, methods: Sequence[str], terms: Terms,
             search: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidates of ``method`` the search trains, given the choices in ``search``:
    those with its base method's chosen values (every candidate if it has no base)."""
    tried = candidates(config, terms(method)) + added(search, method)
    base = base_method(method, methods, terms, config)
    if base is None:
        return tried
    if base not in (search.get("methods") or {}):
        raise ValueError(f"the search of {method!r} needs {base!r}'s choice first.")
    return at_base(tried, base_values(tried, chosen(search, base)))


def at_base(tried: Sequence[dict[str, Any]], fixed: Mapping[str, Any]
            ) -> list[dict[str, Any]]:
    """``tried`` with the base's chosen values ``fixed`` put in, duplicates dropped, in
    order: the method's own candidates at the base's choice, also when that choice lies
    beyond the base's grid (a value ``_grid`` added)."""
    out: list[dict[str, Any]] = []
    for weights in tried:
        row = {**weights, **fixed}
        if row not in out:
            out.append(row)
    return out


def base_values(tried: Sequence[dict[str, Any]], base_choice: dict[str, Any]
                ) -> dict[str, Any]:
    """The values of ``base_choice`` (the base method's chosen weights) that a method
    whose candidates are ``tried`` keeps: those of the arguments its candidates share."""
    return {k: v for k, v in base_choice.items() if tried and k in tried[0]}


def added(search: Mapping[str, Any] | None, method: str) -> list[dict[str, Any]]:
    """The candidates :func:`extensions` added to ``method``'s grid so far."""
    return [dict(w) for w in ((search or {}).get("added") or {}).get(method, ())]


def _per_seed(results, method, weights, sizes_, seeds_, split: str):
    """Per size, the accuracy (%) of each search seed; and per seed, the mean over sizes."""
    per_size = {str(n): [100.0 * results[search_cell(method, weights, n, s)]["best"][split]
                         for s in seeds_] for n in sizes_}
    per_seed = [float(np.mean([per_size[str(n)][i] for n in sizes_]))
                for i in range(len(seeds_))]
    return per_size, per_seed


def _spread(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def choose(config: ConfigDict, methods: Sequence[str], terms: Terms,
           results: dict[_runs.Cell, dict[str, Any]],
           extra: Mapping[str, Sequence[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Per method, the candidate of best mean best-step validation accuracy over the
    search's sizes and seeds (a tie: the first listed); the test split never chooses.

    A method with a base (:func:`base_method`) keeps the base's chosen values and chooses
    among its own candidates only (runs at other base values are shown, marked not
    eligible). Each entry says whether its two best candidates tie within their spread.
    ``extra``: per method, the candidates added beyond its grid (``_grid.extensions``); a
    candidate with a diverged run is shown, never chosen.

    Raises:
      ConfigError: every eligible candidate of a method diverged.
    """
    out: dict[str, Any] = {"sizes": sizes(config), "seeds": seeds(config), "methods": {},
                           "added": {m: [dict(w) for w in ws] for m, ws in (extra or {}).items()
                                     if ws}}
    # Bases first: fewer terms first, in the listed order otherwise.
    order = sorted(methods, key=lambda m: (len(set(terms(m))), list(methods).index(m)))
    for method in order:
        tried = candidates(config, terms(method)) + added(out, method)
        if not tried:
            continue
        base = base_method(method, methods, terms, config)
        fixed = (base_values(tried, out["methods"][base]["chosen"])
                 if base in out["methods"] else {})
        tried += [w for w in at_base(tried, fixed) if w not in tried]
        rows = []
        for weights in tried:
            if not all(search_cell(method, weights, n, s) in results
                       for n in out["sizes"] for s in out["seeds"]):
                continue  # not trained: it does not have the base's choice
            eligible = all(weights[k] == v for k, v in fixed.items())
            if any(results[search_cell(method, weights, n, s)].get("diverged")
                   for n in out["sizes"] for s in out["seeds"]):
                rows.append({"weights": weights, "diverged": True, "eligible": eligible})
                continue
            validation, val_seeds = _per_seed(results, method, weights, out["sizes"],
                                              out["seeds"], "validation")
            test, test_seeds = _per_seed(results, method, weights, out["sizes"],
                                         out["seeds"], "test")
            rows.append({"weights": weights, "validation": validation, "test": test,
                         "mean": float(np.mean(val_seeds)), "std": _spread(val_seeds),
                         "test_mean": float(np.mean(test_seeds)),
                         "test_std": _spread(test_seeds),
                         "eligible": eligible})
        eligible = [r for r in rows if r["eligible"] and not r.get("diverged")]
        if not any(r["eligible"] for r in rows):  # the driver trains them first
            raise RuntimeError(f"the weight search of {method!r} has no finished run of a "
                               f"candidate at its base's choice {fixed}.")
        if not eligible:
            raise ConfigError(f"every candidate of the weight search of {method!r} diverged "
                              f"({', '.join(candidate_name(r['weights']) for r in rows)}); "
                              f"give smaller search.* candidates or a lower learning rate.")
        ranked = sorted(eligible, key=lambda r: -r["mean"])  # stable: ties keep the order
        best = ranked[0]
        tie = None
        if len(ranked) > 1:
            second = ranked[1]
            if best["mean"] - second["mean"] < max(best["std"], second["std"]):
                tie = [candidate_name(r["weights"]) for r in ranked
                       if best["mean"] - r["mean"] < max(best["std"], r["std"])]
        out["methods"][method] = {"candidates": rows, "chosen": best["weights"],
                                  "base": base if fixed else None, "fixed": fixed,
                                  "tie": tie}
    out["methods"] = {m: out["methods"][m] for m in methods if m in out["methods"]}
    return out


def add_gains(search: dict[str, Any] | None, pairs: Sequence[tuple[str, str]],
              results: Mapping[_runs.Cell, Mapping[str, Any]]) -> None:
    """Adds to each candidate of a pair's ``with`` method its paired test gain over
    ``without`` at ``without``'s choice (last step, points, per search seed) as
    ``row["gains"][without]``; a pair whose runs are not all in ``results`` is left out."""
    methods = (search or {}).get("methods") or {}
    sizes_ = list((search or {}).get("sizes") or ())
    seeds_ = list((search or {}).get("seeds") or ())

    def cell(method: str, weights: Mapping[str, Any] | None, n, s) -> _runs.Cell:
        return (search_cell(method, weights, n, s) if weights is not None
                else _runs.Cell(method, n, s))

    for without, with_ in pairs:
        if with_ not in methods:
            continue
        base = methods[without]["chosen"] if without in methods else None
        bases = {(n, s): cell(without, base, n, s) for n in sizes_ for s in seeds_}
        if not all(c in results for c in bases.values()):
            continue
        for row in methods[with_]["candidates"]:
            if row.get("diverged"):
                continue
            mine = {(n, s): cell(with_, row["weights"], n, s) for n in sizes_ for s in seeds_}
            if not all(c in results for c in mine.values()):
                continue
            values = [float(np.mean([100.0 * (results[mine[n, s]]["last"]["test"]
                                              - results[bases[n, s]]["last"]["test"])
                                     for n in sizes_])) for s in seeds_]
            row.setdefault("gains", {})[without] = {
                "mean": float(np.mean(values)), "std": _spread(values), "values": values}


def rows(search: dict[str, Any] | None, label: Callable[[str], str] = str
         ) -> list[dict[str, Any]]:
    """The search as stats rows (``results.csv``): per method, candidate and split."""
    out = []
    for method, entry in ((search or {}).get("methods") or {}).items():
        for row in entry["candidates"]:
            if row.get("diverged"):
                continue  # no accuracy: the table says it diverged
            for split in ("validation", "test"):
                per_seed = [float(np.mean(v)) for v in zip(*row[split].values())]
                out.append({"method": method, "label": label(method),
                            "candidate": candidate_name(row["weights"]), "split": split,
                            "chosen": row["weights"] == entry["chosen"],
                            "eligible": row.get("eligible", True),
                            "mean": float(np.mean(per_seed)), "std": _spread(per_seed),
                            "num_seeds": len(per_seed), "values": per_seed})
    return out


def diverged(run_dir: str, error: Exception, run_config: Mapping[str, Any] | None
             ) -> dict[str, Any]:
    """Records that the search's run in ``run_dir`` went non-finite (``error``) as its
    finished result: the candidate is shown as diverged and never chosen (:func:`choose`),
    and a resumed search does not train it again. Its checkpoints are removed."""
    print(f"note: {run_dir} diverged: {' '.join(str(error).split())}", file=sys.stderr)
    result = {"diverged": " ".join(str(error).split()), "seconds": 0.0,
              **({_runs.RUN_CONFIG: _runs.canonical(dict(run_config))}
                 if run_config is not None else {})}
    shutil.rmtree(_runs.checkpoint_dir(run_dir), ignore_errors=True)
    _runs.write_json(_runs.result_path(run_dir), result)
    return result


def chosen(search: dict[str, Any] | None, method: str) -> dict[str, float]:
    """The weights ``search`` chose for ``method`` (``{}``: none searched)."""
    return dict(((search or {}).get("methods") or {}).get(method, {}).get("chosen", {}))


def reuse_run(config: ConfigDict, workdir: str, cell: _runs.Cell,
              weights: Mapping[str, Any], run_config: Mapping[str, Any] | None) -> None:
    """Copies the search's run of ``cell`` with the chosen ``weights`` as the cell's run.

    That run is the same training (same seed, subset, initial weights, budget and loss),
    so the sweep does not train it twice; its result records ``run_config``, the
    cell's own. A cell already started is left to resume.
    """
    if not weights or cell.examples_per_class not in sizes(config) \
            or cell.seed not in seeds(config):
        return
    source = _runs.cell_dir(os.path.join(workdir, SEARCH_DIR),
                            search_cell(cell.method, weights, cell.examples_per_class,
                                        cell.seed))
    target = _runs.cell_dir(workdir, cell)
    if _runs.is_done(source) and not os.path.exists(target):
        shutil.copytree(source, target + ".tmp", dirs_exist_ok=True)
        result = _runs.read_json(_runs.result_path(target + ".tmp"))
        result["reused_from"] = os.path.relpath(source, workdir)  # its time counts once
        if run_config is not None:  # the cell's own: a re-run checks it
            result[_runs.RUN_CONFIG] = _runs.canonical(dict(run_config))
        _runs.write_json(_runs.result_path(target + ".tmp"), result)
        os.replace(target + ".tmp", target)


def seconds(search: dict[str, Any] | None, results: dict[_runs.Cell, dict[str, Any]]
            ) -> float:
    """The search's and the cells' recorded time, a run copied from the search once."""
    return (float((search or {}).get("seconds", 0.0))
            + sum(float(r["seconds"]) for r in results.values() if not r.get("reused_from")))


def markdown(search: dict[str, Any] | None, label: Callable[[str], str]) -> list[str]:
    """The search's table: validation and test accuracy per candidate, the choice, ties."""
    if not search or not search.get("methods"):
        return []
    sizes_ = [str(n) for n in search["sizes"]]
    seeds_ = search["seeds"]
    out = ["", "### Loss weights chosen on validation", "",
           f"Before the sweep, each method with a searched loss term was trained with every "
           f"candidate at {', '.join(sizes_)} examples per class, seed(s) "
           f"{', '.join(map(str, seeds_))}; the candidate of best mean validation accuracy "
           f"(best step, %) is used for every cell of that method (**bold**). A method that "
           f"adds terms to another keeps that method's chosen values and chooses among its "
           f"own candidates (trained with the base's choice only). Accuracy "
           f"is the mean ± std over the search seeds (of the mean over sizes); test "
           f"accuracy is shown so a reader sees whether a conclusion depends on the choice, "
           f"and chose nothing; so is the paired test gain (last step, points, mean ± std "
           f"over the search seeds) over the method it is compared with, at that "
           f"method's choice.", "",
           "| method | weights | " + " | ".join(f"val. n={n}" for n in sizes_)
           + " | validation | test | paired test gain |",
           "|---|---|" + "---|" * (len(sizes_) + 3)]
    notes = []
    for method, entry in search["methods"].items():
        for row in entry["candidates"]:
            mark = "**" if row["weights"] == entry["chosen"] else ""
            name = candidate_name(row["weights"])
            if not row.get("eligible", True):
                name = f"({name})"
            if row.get("diverged"):
                out.append(f"| {label(method)} | {name} | "
                           + " | ".join(["diverged"] * len(sizes_)) + " | - | - | - |")
                continue
            vals = [float(np.mean(row["validation"][n])) for n in sizes_]
            test = (f"{row['test_mean']:.2f} ± {row['test_std']:.2f}"
                    if "test_mean" in row else "-")
            gains = "; ".join(f"{g['mean']:+.2f} ± {g['std']:.2f} vs {label(other)}"
                              for other, g in (row.get("gains") or {}).items()) or "-"
            out.append(f"| {label(method)} | {mark}{name}{mark} | "
                       + " | ".join(f"{v:.2f}" for v in vals)
                       + f" | {mark}{row['mean']:.2f} ± {row.get('std', 0.0):.2f}{mark}"
                       + f" | {test} | {gains} |")
        if entry.get("base"):
            notes.append(f"{label(method)}: with {label(entry['base'])}'s "
                         f"{candidate_name(entry['fixed'])}.")
        if entry.get("tie"):
            tied = [r for r in entry["candidates"]
                    if candidate_name(r["weights"]) in entry["tie"]]
            at = "; ".join(f"{candidate_name(r['weights'])}: {g['mean']:+.2f} ± {g['std']:.2f}"
                           f" vs {label(other)}" for r in tied
                           for other, g in (r.get("gains") or {}).items())
            notes.append(f"{label(method)}: the best candidates tie within their spread "
                         f"over the search seeds ({', '.join(entry['tie'])}): the choice "
                         f"among them is not decided by validation"
                         + (f"; the paired test gain at each: {at}." if at else "."))
    notes += _grid.edge_notes(search, label)
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return out
