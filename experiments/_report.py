"""Results of the studies: results.json / .csv / .md and PNG plots in the work directory.

``results.json`` holds one section per study (``limited_data``, ``noise_robustness``,
``transfer``); a study rewrites only its own section, so studies sharing a work
directory (study 2 reuses study 1's) keep each other's results. ``results.csv`` is the
long form of every row of every section, ``results.md`` the sections' tables. A study
hands :func:`finish` its :class:`Section` (its name and how it renders its markdown
and plots); a section keeps its rendered markdown (``"markdown"``), so ``results.md``
is rebuilt from ``results.json`` alone. This module holds what the studies share:
statistics, paired gains, tables, the header, the files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from experiments import _stats
from jaxkd import training


class Section(Protocol):
    """What a study's section of the results is made of (a ``_study.Study`` is one)."""
    name: str  # its key in results.json

    def markdown(self, section: dict[str, Any]) -> str: ...

    def plots(self, workdir: str, section: dict[str, Any]) -> list[str]: ...


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and the values."""
    values = [float(v) for v in values]
    if not values:
        return {"mean": math.nan, "std": math.nan, "num_seeds": 0, "values": []}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "num_seeds": len(values),
            "values": values}


# A run whose validation accuracy falls more than this many points below its own best so
# far, at any evaluation, trained unstably: its row is marked, not reported silently.
UNSTABLE_POINTS = 5.0


def fall(result: dict[str, Any]) -> float:
    """The largest fall (points) of a run's validation accuracy below its best so far."""
    curve = result.get("validation_curve") or {}
    best, worst = -math.inf, 0.0
    for step in sorted(curve, key=int):
        best = max(best, 100.0 * curve[step])
        worst = max(worst, best - 100.0 * curve[step])
    return worst


def accuracy_rows(results, methods: Sequence[str], sizes: Sequence[Any],
                  label: Callable[[str], str],
                  paper: Callable[[str, Any], float | None]) -> list[dict[str, Any]]:
    """Test accuracy (%) per method x size x checkpoint (last, best), stats over seeds;
    ``unstable_seeds``: the seeds whose validation fell more than :data:`UNSTABLE_POINTS`
    below its own best during training."""
    rows = []
    for method in methods:
        for n in sizes:
            cells = [(c, r) for c, r in results.items()
                     if c.method == method and c.examples_per_class == n]
            runs = [r for _, r in cells]
            unstable = sorted(c.seed for c, r in cells if fall(r) > UNSTABLE_POINTS)
            for which in ("last", "best"):
                rows.append({"method": method, "label": label(method),
                             "examples_per_class": n, "checkpoint": which,
                             **stats([100.0 * r[which]["test"] for r in runs]),
                             "paper": paper(method, n), "unstable_seeds": unstable})
    return rows


def paired_gains(results, pairs, *, methods, sizes, seeds, label,
                 columns: Sequence[Any] = ("last", "best"), column_key: str = "checkpoint",
                 value: Callable[[Any, Any], float] = lambda r, which: r[which]["test"],
                 **tags: Any) -> list[dict[str, Any]]:
    """Accuracy of ``with`` minus ``without`` per seed, as stats rows (points).

    ``results`` maps cells (``.method``, ``.examples_per_class``, ``.seed``) to their
    results; a row per pair, size and column (``value(result, column)``: by default the
    test accuracy at the last and the best step), with ``tags``. Seeds share the subset
    and the initial weights across methods: the difference removes most of their spread.
    Besides :func:`stats`, a row has the paired t-test of its values (``_stats.paired``:
    ``ci95``, ``n``, ``positive``, ``p_value``) and the ``seeds`` it pairs.
    """
    by_key = {(c.method, c.examples_per_class, c.seed): r for c, r in results.items()}
    rows = []
    for without, with_ in pairs:
        if without not in methods or with_ not in methods:
            continue
        for n in sizes:
            for col in columns:
                paired = [s for s in seeds
                          if (with_, n, s) in by_key and (without, n, s) in by_key]
                diffs = [100.0 * (value(by_key[(with_, n, s)], col)
                                  - value(by_key[(without, n, s)], col)) for s in paired]
                test = _stats.paired(diffs)
                del test["mean"]  # stats' own (nan, not None, when there is no seed)
                rows.append({"method": f"{with_} - {without}", "with": with_,
                             "label": f"{label(with_)} vs {label(without)}",
                             "examples_per_class": n, column_key: col, **tags,
                             **stats(diffs), **test, "seeds": list(paired)})
    return rows


# The gains a study's Holm family holds: those its gains tables show.
HOLM_KEYS = ("paired_gains", "other_gains", "drop_gains", "other_drop_gains")
HOLM_CHECKPOINT = "last"


def holm(section: dict[str, Any]) -> None:
    """Holm's correction (``_stats.holm``) over the study's paired gains at the last step
    (every row of its gains tables): each such row's ``holm`` (whether it survives) and
    the section's ``holm`` (``alpha``, ``comparisons``, ``survive``)."""
    family = [r for key in HOLM_KEYS for r in section.get(key) or []
              if r.get("checkpoint") == HOLM_CHECKPOINT]
    for row, survives in zip(family, _stats.holm([r.get("p_value") for r in family])):
        row["holm"] = survives
    section["holm"] = {"alpha": _stats.ALPHA, "comparisons": len(family),
                       "survive": sum(r["holm"] for r in family)}


def holm_line(section: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """The line under a gains table: its comparisons, and how many survive Holm."""
    h = section.get("holm")
    if not h:
        return []
    return ["", f"This table makes {len(rows)} comparisons; "
            f"{sum(bool(r.get('holm')) for r in rows)} of them survive Holm's correction "
            f"at {h['alpha']:g} (marked †) over the study's {h['comparisons']} paired gains "
            f"at the last step ({h['survive']} survive in all)."]


def fmt(row: dict[str, Any], *, signed: bool = False) -> str:
    """``mean ± std`` (and ``(paper x)`` when the paper has this cell); a paired gain
    (a row with ``ci95``): ``mean [low, high], n=n, positive/n > 0`` († survives Holm).

    One decimal (points of accuracy) unless the row gives its ``format`` (e.g. ``.3g``).
    """
    if not row.get("num_seeds"):
        return "-"
    spec = row.get("format") or ".1f"
    if "ci95" in row:
        ci = row["ci95"]
        return (f"{row['mean']:+{spec}}" + (f" [{ci[0]:+{spec}}, {ci[1]:+{spec}}]" if ci
                                            else "")
                + f", n={row['n']}, {row['positive']}/{row['n']} > 0"
                + (" †" if row.get("holm") else ""))
    text = f"{row['mean']:{'+' if signed else ''}{spec}} ± {row['std']:{spec}}"
    if row.get("paper") is not None:
        text += f" (paper {row['paper']:.1f})"
    if row.get("unstable_seeds"):
        text += f" ‡{len(row['unstable_seeds'])}"
    return text


def table(rows: Sequence[dict[str, Any]], *, col_key: str, col_title: str,
          row_key: str = "label", signed: bool = False) -> str:
    """A markdown table: one line per ``row_key``, one column per ``col_key`` value."""
    labels, cols, cells = [], [], {}
    for r in rows:
        if r[row_key] not in labels:
            labels.append(r[row_key])
        if r[col_key] not in cols:
            cols.append(r[col_key])
        cells[(r[row_key], r[col_key])] = r
    head = f"| {col_title} | " + " | ".join(str(c) for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(
            fmt(cells[(label, c)], signed=signed) if (label, c) in cells else "-"
            for c in cols) + " |")
    return "\n".join(lines)


def header(summary: dict[str, Any]) -> list[str]:
    """Command, the study's time, versions and devices."""
    v = summary.get("versions", {})
    lines = []
    if "command" in summary:
        lines.append(f"Command: `{summary['command']}`")
    if "total_seconds" in summary:
        lines.append(f"Time: {summary['total_seconds']:.0f} s for the teacher and "
                     f"{summary.get('num_cells', 0)} cells, each run's own wall time summed "
                     f"(kept when a re-run skips finished cells); this invocation "
                     f"{summary.get('invocation_seconds', 0):.0f} s.")
    lines += seed_lines(summary)
    if v:
        lines.append(f"Versions: Python {v.get('python')}, jax {v.get('jax')}, flax "
                     f"{v.get('flax')}, optax {v.get('optax')}. Devices: {v.get('devices')} x "
                     f"{v.get('device_kind')} (backend {v.get('backend')}, data parallel; "
                     f"{v.get('cpu_cores')} CPU cores).")
    return lines


def _span(seeds: Sequence[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])


def seed_lines(summary: dict[str, Any]) -> list[str]:
    """Which seeds report and which chose the weights, and whether they overlap."""
    cfg = summary.get("config", {})
    if not cfg.get("num_seeds"):
        return []
    first = int(cfg.get("first_seed", 0))
    report = list(range(first, first + int(cfg["num_seeds"])))
    line = f"Report seeds: {_span(report)} ({len(report)})"
    searched = summary.get("weight_search") and cfg.get("search", {}).get("seeds")
    if not searched:
        return [line + "."]
    chose = list(range(int(searched)))
    line += f"; the weight search chose on seeds {_span(chose)}"
    if set(chose) & set(report):
        line += (": the reported gains include seeds that chose the weights, so they are "
                 "not a fresh estimate (`--config.first_seed="
                 f"{len(chose)}` or more keeps them apart)")
    return [line + "."]


def _checkpoint_table(rows: list[dict[str, Any]], which: str, title: str) -> list[str]:
    shown = [r for r in rows if r["checkpoint"] == which]
    out = ["", f"### {title}", "",
           table(shown, col_key="examples_per_class", col_title="method \\ examples/class")]
    if any(r.get("unstable_seeds") for r in shown):
        out += ["", f"‡k: k of the cell's runs trained unstably, their validation accuracy "
                    f"falling more than {UNSTABLE_POINTS:.0f} points below its own best "
                    "during training (their seeds: `unstable_seeds` in results.json)."]
    return out


GAINS_TEXT = ("in points: the mean, its 95 % paired t-interval [low, high] (none with one "
              "seed), the number of seeds n and how many of them gain (> 0)")


def main_tables(s: dict[str, Any], *, what: str, gains_title: str) -> list[str]:
    """The last-step accuracy table and the paired gains (what the console shows)."""
    out = _checkpoint_table(s["rows"], "last", f"{what} at the last step")
    gains = [r for r in s.get("paired_gains") or [] if r["checkpoint"] == "last"]
    if gains:
        out += ["", f"### {gains_title}, paired by seed (last step)", "",
                "Test accuracy of the first method minus the second, per seed (same "
                f"subset, same initial weights), {GAINS_TEXT}.", "",
                table(gains, col_key="examples_per_class",
                      col_title="comparison \\ examples/class", signed=True),
                *holm_line(s, gains)]
    return out


def accuracy_section(s: dict[str, Any], *, title: str, intro: str, paper_note: str,
                     what: str, gains_title: str, notes: Sequence[str] = (),
                     appendix: Sequence[str] = ()) -> str:
    """A study's results.md section: header, intro, the main tables, the best-step table.

    ``paper_note`` is shown when no row has the paper's number beside it; ``notes`` (e.g.
    the step budget) follow the intro; ``appendix`` lines (e.g. the weight search) end it.
    """
    out = [f"## {title}", "", *header(s), "", intro]
    if not any(r.get("paper") is not None for r in s["rows"]):
        out.append(paper_note)
    if notes:
        out += ["", *notes]
    out += main_tables(s, what=what, gains_title=gains_title)
    out += _checkpoint_table(s["rows"], "best",
                             f"{what} at the step with the best validation accuracy")
    out += appendix
    return "\n".join(out)


def budget_notes(s: dict[str, Any]) -> list[str]:
    """The step budget of a summary with a growing budget (``_budget``), as one line."""
    if not s.get("budget"):
        return []
    return ["Training steps per cell, by examples per class: " + ", ".join(
        f"{n}: {steps}" for n, steps in s["budget"].items()) + "."]


# ----------------------------------------------------------------------------------------
# Files.


def json_safe(value):
    """``value`` with NaN and infinities as None, numpy scalars as Python numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


CSV_COLUMNS = ("study", "kind", "method", "label", "examples_per_class", "sigma",
               "checkpoint", "mean", "std", "num_seeds", "paper", "values", "reading",
               "quantity", "candidate", "split", "ci95_low", "ci95_high", "positive",
               "p_value", "holm", "seeds", "unstable_seeds")
# The lists of rows of a section that go to results.csv, and their ``kind``.
CSV_KINDS = (("rows", "accuracy"), ("paired_gains", "paired_gain"),
             ("other_rows", "accuracy"), ("other_gains", "paired_gain"),
             ("drop_gains", "drop_gain"), ("other_drop_gains", "drop_gain"),
             ("sensitivity", "sensitivity"), ("other_sensitivity", "sensitivity"),
             ("teacher_probe", "teacher_probe"))


def _csv_rows(results: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for study, section in results.items():
        if not isinstance(section, dict):
            continue
        tagged = [(kind, r) for key, kind in CSV_KINDS for r in section.get(key) or []]
        if isinstance(section.get("weight_search"), dict):  # every candidate, both splits
            from experiments import _search
            tagged += [("search", r) for r in _search.rows(section["weight_search"])]
        for kind, r in tagged:
            row = {k: r.get(k, "") for k in CSV_COLUMNS}
            row["study"], row["kind"] = study, kind
            row["values"] = " ".join(f"{v:.4g}" for v in r.get("values", [])
                                     if v is not None)
            row["ci95_low"], row["ci95_high"] = r.get("ci95") or ("", "")
            for key in ("seeds", "unstable_seeds"):
                row[key] = " ".join(str(seed) for seed in r.get(key) or [])
            row = {k: "" if v is None else v for k, v in row.items()}
            row["paper"] = "" if r.get("paper") is None else r["paper"]
            yield row


def finish(study: Section, workdir: str, summary: dict[str, Any], *, config,
           started: float, command: str | None, total_seconds: float,
           num_cells: int) -> dict[str, Any]:
    """Adds the bookkeeping every study reports (the study's time, this invocation's,
    config, versions and devices, command) to ``summary`` and writes the report files."""
    from experiments import _runtime
    summary.update(total_seconds=total_seconds, num_cells=num_cells,
                   invocation_seconds=time.perf_counter() - started,
                   config=config.to_dict(),
                   versions=_runtime.environment(_runtime.make_mesh(config)))
    if command:
        summary["command"] = command
    write(workdir, study, summary)
    return summary


def write(workdir: str, study: Section, summary: dict[str, Any]) -> list[str]:
    """Replaces ``study``'s section of the results, rewrites every results file and the
    study's plots; returns the plot paths (also stored as ``summary["plots"]``)."""
    os.makedirs(workdir, exist_ok=True)
    plots = study.plots(workdir, summary)
    summary["plots"] = plots
    holm(summary)
    summary["markdown"] = study.markdown(summary)
    json_path = os.path.join(workdir, "results.json")
    results = {}
    if os.path.exists(json_path):
        try:
            with open(json_path) as f:
                results = json.load(f)
        except ValueError:  # damaged (by hand or a bad disk): this study's section only
            print(f"note: {json_path} cannot be read; it is written again with the "
                  f"{study.name} section only.", file=sys.stderr)
        if not isinstance(results, dict):
            results = {}
    results[study.name] = json_safe(summary)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(_csv_rows(results))
    # A section written by an earlier version has no text: its study's next run adds it.
    sections = [section["markdown"] for section in results.values()
                if isinstance(section, dict) and isinstance(section.get("markdown"), str)]
    # Every file atomically (temporary file, fsync, rename), each composed before any is
    # written: a kill or a full disk leaves the previous version or the new one.
    training.atomic_write_json(json_path, results, indent=2)
    training.atomic_write_text(os.path.join(workdir, "results.csv"), text.getvalue())
    training.atomic_write_text(os.path.join(workdir, "results.md"),
                               "# jaxkd experiment results\n\n" + "\n\n".join(sections)
                               + "\n")
    return plots
