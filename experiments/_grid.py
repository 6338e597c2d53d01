"""The weight search's grid beyond its edges: a choice on an edge extends it outward.

A grid of loss weights (``search.<term>.<arg>``) is a guess at where the optimum lies. When
the weight chosen on validation is the largest (or smallest) value tried, the optimum may
lie outside the grid, so the search adds one value a geometric step of the grid's own
ratio beyond it (1, 3, 10 -> 33), trains it at the search's sizes and seeds, and chooses
again; it stops when the choice is interior, when ``search.extend`` values lie beyond the
configured grid on that side, or when the value beyond diverged (docs/experiments.md, "The
weight search"). Each method's entry in ``weight_search.json`` records its ``edges``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ml_collections import ConfigDict


def extend_limit(config: ConfigDict) -> int:
    """``search.extend``: the most grid steps added beyond each edge (0: none)."""
    return int(config.search.get("extend", 0))


def _step_beyond(value: float, neighbour: float) -> float:
    """One step of the grid's ratio beyond ``value``, away from ``neighbour``, at two
    significant digits: 10 after 3 -> 33; 0.01 below 0.03 -> 0.0033."""
    return float(f"{value * value / neighbour:.2g}")


def extensions(config: ConfigDict, search: dict[str, Any], methods: Sequence[str]
               ) -> dict[str, list[dict[str, Any]]]:
    """The candidates to add beyond the grid's edges, per method of ``methods``.

    For each of a method's own searched float arguments (not those kept from its base),
    the line of candidates through its choice: where the chosen value is the largest (or
    smallest) value on that line that did not diverge, the next value one geometric step
    beyond it (:func:`_step_beyond`), unless ``search.extend`` values already lie beyond
    the configured grid on that side, the value beyond it diverged, or the line has one
    value. Records in each method's entry ``edges``: every edge its choice sits on, with
    ``stop``: ``"extended"`` (a value is added) or why the search stops there.
    """
    limit, out = extend_limit(config), {}
    for method in methods:
        entry = (search.get("methods") or {}).get(method)
        if entry is None:
            continue
        chosen, fixed = entry["chosen"], entry.get("fixed") or {}
        tried = [r["weights"] for r in entry["candidates"]]
        edges = []
        for axis, value in chosen.items():
            if axis in fixed or isinstance(value, bool) or not isinstance(value, float):
                continue
            term, _, arg = axis.partition(".")
            grid = [float(v) for v in config.search[term][arg]]
            line = [r for r in entry["candidates"] if r.get("eligible", True) and all(
                r["weights"][k] == v for k, v in chosen.items() if k != axis)]
            values = sorted({float(r["weights"][axis]) for r in line})
            diverged = {float(r["weights"][axis]) for r in line if r.get("diverged")}
            if len(values) < 2:
                edges.append({"axis": axis, "value": value, "side": "both",
                              "stop": "one value: no grid step to extend by"})
                continue
            for side in ("high", "low"):
                beyond = [v for v in values if (v > value if side == "high" else v < value)]
                if any(v not in diverged for v in beyond):
                    continue  # interior on this side
                if beyond:
                    nearest = min(beyond) if side == "high" else max(beyond)
                    stop = f"the next value, {nearest:g}, diverged"
                elif sum(v > max(grid) if side == "high" else v < min(grid)
                         for v in values) >= limit:
                    stop = f"search.extend = {limit} steps beyond the grid taken"
                else:
                    inner = [v for v in values if v != value]
                    step = _step_beyond(value, max(inner) if side == "high" else min(inner))
                    candidate = {**chosen, axis: step}
                    if candidate in tried or step == value:
                        stop = "the next value rounds to one already tried"
                    else:
                        stop = f"extended to {step:g}"
                        out.setdefault(method, []).append(candidate)
                edges.append({"axis": axis, "value": value, "side": side, "stop": stop})
        entry["edges"] = edges
    return out


def edge_notes(search: dict[str, Any] | None, label: Callable[[str], str] = str
               ) -> list[str]:
    """One sentence per method whose final choice sits on an edge of what it tried."""
    notes = []
    for method, entry in ((search or {}).get("methods") or {}).items():
        for edge in entry.get("edges") or ():
            if not edge["stop"].startswith("extended"):
                where = ("of its only value" if edge["side"] == "both"
                         else f"on the {edge['side']} edge")
                notes.append(f"{label(method)}: {edge['axis']} = {edge['value']:g} is chosen "
                             f"{where} of the values tried; the search stops there: "
                             f"{edge['stop']}.")
    return notes
