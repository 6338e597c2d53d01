"""Plot helpers shared by the studies: one colour per method in every figure.

Accuracy lines with error bars (mean ± std over seeds), paired gains against zero, bar
charts from zero. A method keeps its colour in every figure of a study: the figures
get the study's methods (its config's ``methods``) and the i-th takes the i-th colour
of tab20; a method outside that list takes one from its name.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from typing import Any

from jaxkd import training

MARKERS = "osD^v<>ph*"


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def color(method: str, methods: Sequence[str] = ()):
    """The colour of ``method`` among the study's ``methods`` ("teacher": black)."""
    import matplotlib
    if method == "teacher":
        return "black"
    if method in methods:
        i = list(methods).index(method)
        return matplotlib.colormaps["tab20"].colors[(2 * i) % 20 + (i // 10) % 2]
    return matplotlib.colormaps["tab20b"].colors[zlib.crc32(method.encode()) % 20]


def marker(method: str) -> str:
    return "x" if method == "teacher" else MARKERS[zlib.crc32(method.encode()) % len(MARKERS)]


def lines(ax, rows: Sequence[dict[str, Any]], *, x_key: str, numeric: bool,
          methods: Sequence[str] = (), series_key: str = "method",
          ylabel: str = "test accuracy (%)") -> None:
    """One line per ``series_key`` (labelled by ``label``): mean with ± std error bars.

    A line's colour is its method's among ``methods`` (a paired-gain row's: its
    ``with`` method's).

    ``numeric``: x values on a numeric axis (sigma); else one evenly spaced tick per
    value in order of appearance (examples per class, with "all").
    """
    xs = list(dict.fromkeys(r[x_key] for r in rows))
    position = (lambda x: float(x)) if numeric else {x: i for i, x in enumerate(xs)}.get
    for series in dict.fromkeys(r[series_key] for r in rows):
        pts = sorted((position(r[x_key]), r["mean"], r["std"]) for r in rows
                     if r[series_key] == series and r["num_seeds"])
        if not pts:
            continue
        label = next(r["label"] for r in rows if r[series_key] == series)
        method = series if series_key == "method" else next(
            r["with"] for r in rows if r[series_key] == series)
        x, m, e = zip(*pts)
        ax.errorbar(x, m, yerr=e, capsize=3, label=label, color=color(method, methods),
                    marker=marker(method), linestyle="--" if method == "teacher" else "-")
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def gains(ax, rows: Sequence[dict[str, Any]], *, title: str,
          methods: Sequence[str] = ()) -> None:
    """Paired gains (points) vs examples per class, ± std over seeds, against zero."""
    lines(ax, rows, x_key="examples_per_class", numeric=False, methods=methods,
          series_key="method", ylabel="paired gain (points)")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("examples per class")
    ax.set_title(title)


def gain_figure(workdir: str, name: str, rows: Sequence[dict[str, Any]], *,
                title: str, methods: Sequence[str] = ()) -> list[str]:
    """The paired gains at the last step as their own figure (none without gains)."""
    rows = [r for r in rows if r["checkpoint"] == "last"]
    if not rows:
        return []
    fig, ax = pyplot().subplots(figsize=(8, 5))
    gains(ax, rows, title=title, methods=methods)
    ax.legend(fontsize=7)
    return [save(fig, workdir, name)]


def bars(ax, rows: Sequence[dict[str, Any]], *, x_key: str,
         methods: Sequence[str] = ()) -> None:
    """Grouped bars (mean ± std) per method at each ``x_key`` value, from zero."""
    import numpy as np
    shown = list(dict.fromkeys(r["method"] for r in rows))
    xs = list(dict.fromkeys(r[x_key] for r in rows))
    width = 0.8 / max(1, len(shown))
    for i, method in enumerate(shown):
        got = {r[x_key]: r for r in rows if r["method"] == method and r["num_seeds"]}
        label = next(r["label"] for r in rows if r["method"] == method)
        x = np.arange(len(xs)) + (i - (len(shown) - 1) / 2) * width
        ax.bar(x, [got[n]["mean"] if n in got else 0 for n in xs], width,
               yerr=[got[n]["std"] if n in got else 0 for n in xs], capsize=2,
               label=label, color=color(method, methods))
    ax.set_xticks(range(len(xs)), [str(n) for n in xs])
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3, axis="y")


def save(fig, workdir: str, name: str, *, layout: bool = True) -> str:
    """Saves ``fig`` as ``workdir/name`` (PNG) atomically: a temporary file, then a rename."""
    path = os.path.join(workdir, name)
    if layout:
        fig.tight_layout()
    try:
        with training.atomic_file(path, "wb") as f:  # a failed write names the file
            fig.savefig(f, dpi=120, format="png")
    finally:
        pyplot().close(fig)
    return path
