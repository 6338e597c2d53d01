"""Results of the studies: results.json / .csv / .md and PNG plots in the work directory.

``results.json`` holds one section per study (``limited_data``, ``noise_robustness``,
``transfer``); a study rewrites only its own section, so studies sharing a work
directory (study 2 reuses study 1's) keep each other's results. ``results.csv`` is the
long form of every row of every section, ``results.md`` the tables (mean +- std over
seeds, the paper's number beside ours where the setting matches).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

STUDIES = ("limited_data", "noise_robustness", "transfer")

# Srinivas & Fleuret (2018), from the authors' poster and slides (docs/experiments.md).
# Distillation: CIFAR-100, VGG-9 teacher (64.78 %) -> VGG-4 student, test accuracy (%).
PAPER_DISTILLATION = {
    "ce": {10: 20.03, 50: 37.6, "all": 54.28},
    "logits+ce": {10: 33.92, 50: 46.47, "all": 56.65},
    "logits+jacobian+ce": {10: 39.55, 50: 49.49, "all": 54.57},
    "logits": {10: 33.6, 50: 45.73, "all": 56.59},
    "logits+jacobian": {10: 38.16, 50: 47.79, "all": 51.33},
}
# Transfer: ImageNet ResNet teacher -> VGG-9 student on MIT Indoor Scenes (67 classes).
PAPER_TRANSFER = {
    "no_transfer": {25: 35.19, 50: 46.38, "all": 59.33},
    "finetune": {25: 57.65, 50: 64.18, "all": 71.42},
    "lwf": {25: 45.08, 50: 55.22, "all": 65.22},
    "lwf+jacobian": {25: 45.26, 50: 56.49, "all": 66.04},
    "lwf+attention": {25: 46.01, 50: 57.80, "all": 67.24},
    "lwf+attention+attention_jacobian": {25: 47.31, 50: 58.35, "all": 67.31},
}


def paper_distillation(dataset: str, method: str, examples_per_class) -> float | None:
    """The paper's number for this cell, only when the setting is the paper's (CIFAR-100)."""
    if dataset.removeprefix("tfds:").split("/")[0].split(":")[0] != "cifar100":
        return None
    return PAPER_DISTILLATION.get(method, {}).get(examples_per_class)


def paper_transfer(paper_table: str, method: str, examples_per_class) -> float | None:
    """The paper's transfer number, when the config declares the MIT Indoor setting."""
    if paper_table != "mit_indoor":
        return None
    return PAPER_TRANSFER.get(method, {}).get(examples_per_class)


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and the values."""
    values = [float(v) for v in values]
    if not values:
        return {"mean": math.nan, "std": math.nan, "num_seeds": 0, "values": []}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "num_seeds": len(values),
            "values": values}


def paired_gains(results, pairs, *, methods, sizes, seeds, label) -> list[dict[str, Any]]:
    """Test accuracy of ``with`` minus ``without`` per seed, as stats rows (points).

    ``results`` maps cells (``.method``, ``.examples_per_class``, ``.seed``) to their
    result dicts. Seeds share the subset and the student's initial weights across
    methods, so the per-seed difference removes most of the seed-to-seed spread.
    """
    by_key = {(c.method, c.examples_per_class, c.seed): r for c, r in results.items()}
    rows = []
    for without, with_ in pairs:
        if without not in methods or with_ not in methods:
            continue
        for n in sizes:
            for which in ("last", "best"):
                diffs = [100.0 * (by_key[(with_, n, s)][which]["test"]
                                  - by_key[(without, n, s)][which]["test"])
                         for s in seeds if (with_, n, s) in by_key and (without, n, s) in by_key]
                rows.append({"method": f"{with_} - {without}",
                             "label": f"{label(with_)} vs {label(without)}",
                             "examples_per_class": n, "checkpoint": which, **stats(diffs)})
    return rows


def _gains_md(s: dict[str, Any], title: str) -> list[str]:
    gains = s.get("paired_gains") or []
    if not gains:
        return []
    out = ["", f"### {title}, paired by seed (last step)", "",
           "Test accuracy of the first method minus the second, per seed (same subset, "
           "same initial weights), in points: mean ± std over seeds.", ""]
    out.append(table([r for r in gains if r["checkpoint"] == "last"],
                     col_key="examples_per_class", col_title="comparison \\ examples/class",
                     signed=True))
    return out


def fmt(row: dict[str, Any], *, signed: bool = False) -> str:
    """``mean ± std`` (and ``(paper x)`` when the paper has this cell)."""
    if not row.get("num_seeds"):
        return "-"
    text = f"{row['mean']:{'+' if signed else ''}.1f} ± {row['std']:.1f}"
    if row.get("paper") is not None:
        text += f" (paper {row['paper']:.1f})"
    return text


def _col_name(value) -> str:
    return str(value)


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
    head = f"| {col_title} | " + " | ".join(_col_name(c) for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(
            fmt(cells[(label, c)], signed=signed) if (label, c) in cells else "-"
            for c in cols) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Markdown sections.


def _header(summary: dict[str, Any]) -> list[str]:
    v = summary.get("versions", {})
    lines = []
    if "command" in summary:
        lines.append(f"Command: `{summary['command']}`")
    if "wall_seconds" in summary:
        lines.append(f"Wall time of the last invocation: {summary['wall_seconds']:.0f} s "
                     f"(finished cells are skipped on a re-run); training time summed over "
                     f"all cells and the teacher: {summary.get('train_seconds', 0):.0f} s.")
    if v:
        lines.append(f"Versions: Python {v.get('python')}, jax {v.get('jax')}, flax "
                     f"{v.get('flax')}, optax {v.get('optax')}; backend {v.get('backend')} "
                     f"({v.get('devices')} x {v.get('device_kind')}).")
    return lines


def _checkpoint_tables(rows: list[dict[str, Any]], what: str) -> list[str]:
    """The method x examples-per-class tables at the last and the best-on-validation step."""
    out = []
    for which, title in (("last", "at the last step"),
                         ("best", "at the step with the best validation accuracy")):
        out += ["", f"### {what} {title}", ""]
        out.append(table([r for r in rows if r["checkpoint"] == which],
                         col_key="examples_per_class", col_title="method \\ examples/class"))
    return out


def _limited_data_md(s: dict[str, Any]) -> str:
    cfg = s.get("config", {})
    out = ["## Study 1: distillation with limited data", ""]
    out += _header(s)
    out += ["", f"Data: `{s['dataset']}`; teacher `{cfg.get('teacher', {}).get('name')}` "
            f"(test accuracy {s['teacher_test_accuracy']:.1f} %); student "
            f"`{cfg.get('student', {}).get('name')}`; {cfg.get('num_seeds')} seeds; test "
            "accuracy (%) as mean ± std over seeds."]
    if not any(r.get("paper") is not None for r in s["rows"]):
        out += ["The paper's numbers (CIFAR-100) are not beside ours: the setting differs. "
                "They are in docs/experiments.md, for the shape of the comparison."]
    out += _checkpoint_tables(s["rows"], "Test accuracy")
    out += _gains_md(s, "Gain from the Jacobian term")
    return "\n".join(out)


def _noise_md(s: dict[str, Any]) -> str:
    out = ["## Study 2: robustness to Gaussian input noise", ""]
    out += _header(s)
    out += ["", f"Data: `{s['dataset']}`; the final students of study 1 on test images "
            "with additive N(0, sigma^2) noise per pixel (pixels in [0, 1], noise added "
            "before normalisation); test accuracy (%), mean ± std over seeds."]
    for n in s["examples_per_class"]:
        out += ["", f"### {n} examples per class", ""]
        out.append(table([r for r in s["rows"] if r["examples_per_class"] == n],
                         col_key="sigma", col_title="method \\ sigma"))
    return "\n".join(out)


def _transfer_md(s: dict[str, Any]) -> str:
    out = ["## Study 3: transfer learning (LwF as distillation)", ""]
    out += _header(s)
    out += ["", f"Source: `{s['source']}`, target: `{s['target']}`; teacher "
            f"`{s['teacher_model']}` (source test accuracy {s['teacher_test_accuracy']:.1f} %),"
            f" student `{s['student_model']}`; target test accuracy (%), mean ± std over "
            "seeds."]
    if not any(r.get("paper") is not None for r in s["rows"]):
        out += ["The paper's numbers (MIT Indoor 67) are not beside ours: the setting "
                "differs."]
    out += _checkpoint_tables(s["rows"], "Target test accuracy")
    out += _gains_md(s, "Gain from each added term")
    return "\n".join(out)


MARKDOWN = {"limited_data": _limited_data_md, "noise_robustness": _noise_md,
            "transfer": _transfer_md}


# ----------------------------------------------------------------------------------------
# Plots.


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _lines(ax, rows, *, x_key, xs, title, xlabel):
    labels = []
    for r in rows:
        if r["label"] not in labels:
            labels.append(r["label"])
    positions = {x: i for i, x in enumerate(xs)}
    import matplotlib
    colors = matplotlib.colormaps["tab20"].colors
    markers = "osD^v<>ph*"
    for i, label in enumerate(labels):
        pts = [(positions[r[x_key]], r["mean"], r["std"]) for r in rows
               if r["label"] == label and r["num_seeds"] and r[x_key] in positions]
        if pts:
            x, m, e = zip(*sorted(pts))
            teacher = label.startswith("teacher")
            ax.errorbar(x, m, yerr=e, capsize=3, label=label,
                        color="black" if teacher else colors[(2 * i) % 20 + (i // 10) % 2],
                        marker="x" if teacher else markers[i % len(markers)],
                        linestyle="--" if teacher else "-")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)


def _plot_limited_data(workdir, s):
    plt = _pyplot()
    xs = list(dict.fromkeys(r["examples_per_class"] for r in s["rows"]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, which in zip(axes, ("last", "best")):
        _lines(ax, [r for r in s["rows"] if r["checkpoint"] == which],
               x_key="examples_per_class", xs=xs, xlabel="examples per class",
               title=f"{s['dataset']}: {which} step" + (" (by validation)" if which == "best"
                                                        else ""))
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = os.path.join(workdir, "accuracy_vs_examples.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def _plot_noise(workdir, s):
    plt = _pyplot()
    ns = s["examples_per_class"]
    sigmas = list(dict.fromkeys(r["sigma"] for r in s["rows"]))
    cols = min(2, len(ns))
    rows = -(-len(ns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.8 * rows), sharey=True,
                             squeeze=False)
    for ax, n in zip(axes.flat, ns):
        _lines(ax, [r for r in s["rows"] if r["examples_per_class"] == n], x_key="sigma",
               xs=sigmas, xlabel="noise sigma (pixels in [0, 1])",
               title=f"{s['dataset']}: {n} examples per class")
    for ax in list(axes.flat)[len(ns):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = os.path.join(workdir, "accuracy_vs_sigma.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def _plot_transfer(workdir, s):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    lows = [r["mean"] - r["std"] for r in s["rows"] if r["num_seeds"]]
    for ax, which in zip(axes, ("last", "best")):
        rows = [r for r in s["rows"] if r["checkpoint"] == which]
        labels = list(dict.fromkeys(r["label"] for r in rows))
        ns = list(dict.fromkeys(r["examples_per_class"] for r in rows))
        width = 0.8 / max(1, len(labels))
        for i, label in enumerate(labels):
            got = {r["examples_per_class"]: r for r in rows if r["label"] == label}
            x = np.arange(len(ns)) + (i - (len(labels) - 1) / 2) * width
            ax.bar(x, [got[n]["mean"] if n in got else 0 for n in ns], width,
                   yerr=[got[n]["std"] if n in got else 0 for n in ns], capsize=2,
                   label=label)
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_xlabel("target examples per class")
        ax.set_ylabel("target test accuracy (%)")
        ax.set_title(f"transfer, {which} step" + (" (by validation)" if which == "best"
                                                  else ""))
        ax.grid(alpha=0.3, axis="y")
    if lows:  # start the axis near the data: the differences are a few points
        axes[0].set_ylim(bottom=max(0.0, 5.0 * math.floor((min(lows) - 5.0) / 5.0)))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = os.path.join(workdir, "transfer_accuracy.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


PLOTS = {"limited_data": _plot_limited_data, "noise_robustness": _plot_noise,
         "transfer": _plot_transfer}


# ----------------------------------------------------------------------------------------
# Files.


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


CSV_COLUMNS = ("study", "kind", "method", "label", "examples_per_class", "sigma",
               "checkpoint", "mean", "std", "num_seeds", "paper", "values")


def _csv_rows(results: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for study in STUDIES:
        section = results.get(study, {})
        tagged = [("accuracy", r) for r in section.get("rows", [])]
        tagged += [("paired_gain", r) for r in section.get("paired_gains", [])]
        for kind, r in tagged:
            row = {k: r.get(k, "") for k in CSV_COLUMNS}
            row["study"], row["kind"] = study, kind
            row["values"] = " ".join(f"{v:.4g}" for v in r.get("values", []))
            row["paper"] = "" if r.get("paper") is None else r["paper"]
            yield row


def write(workdir: str, study: str, summary: dict[str, Any]) -> list[str]:
    """Replaces ``study``'s section of the results and rewrites every results file.

    Returns the paths written.
    """
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; expected one of {STUDIES}.")
    os.makedirs(workdir, exist_ok=True)
    json_path = os.path.join(workdir, "results.json")
    results = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            results = json.load(f)
    results[study] = _json_safe(summary)
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, json_path)

    csv_path = os.path.join(workdir, "results.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(_csv_rows(results))

    md_path = os.path.join(workdir, "results.md")
    sections = [MARKDOWN[s](results[s]) for s in STUDIES if s in results]
    with open(md_path, "w") as f:
        f.write("# jaxkd experiment results\n\n" + "\n\n".join(sections) + "\n")

    plots = PLOTS[study](workdir, results[study])
    return [json_path, csv_path, md_path, *plots]
