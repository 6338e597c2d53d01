"""The report of ``step_cost``: ratios, paired per-round statistics, Markdown, JSON, plot.

:func:`analyse` turns the workers' per-round times into rows with ratios and the targets;
:func:`write` saves a run as ``<tag>.json`` (everything, every per-round time),
``<tag>.md`` (:func:`markdown`) and ``<tag>.png`` (:func:`plot`). A saved JSON renders
again with ``markdown(result["rows"], result["targets"], result["environment"])``, and
``targets(result["rows"])`` recomputes its targets from the saved times.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess

from benchmarks import _harness
from benchmarks._harness import REPO, step_key


def analyse(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per-step rows with their in-group ratios, and the targets (:func:`targets`).

    ``results``: the workers' outputs, one per budget. A row gets ``time_s`` (median
    over rounds), and where its group holds the KD step of the same framework and case,
    ``time_ratio_kd`` (paired per-round ratio), ``flop_ratio_kd`` and ``peak_ratio_kd``;
    a JAX row next to a PyTorch step of the same case and mode gets ``jax_over_torch``.
    """
    rows = []
    for res in results:
        info = res["info"]
        for group in res["groups"]:
            by_key = {step_key(r): r for r in group["rows"]}
            for r in group["rows"]:
                row = dict(r, budget=info["budget"], group=group["name"])
                t = r["times_s"]
                row["time_s"] = statistics.median(t)
                kd = by_key.get(f"{r['framework']}:{r['case']}:kd")
                if kd is not None:
                    row["time_ratio_kd"] = _harness.paired_ratio(t, kd["times_s"])
                    if r["flops"] and kd["flops"]:
                        row["flop_ratio_kd"] = r["flops"] / kd["flops"]
                    if r["peak_bytes"] and kd["peak_bytes"]:
                        row["peak_ratio_kd"] = r["peak_bytes"] / kd["peak_bytes"]
                other = by_key.get(f"torch:{r['case']}:{r['mode']}")
                if r["framework"] == "jax" and other is not None:
                    row["jax_over_torch"] = _harness.paired_ratio(t, other["times_s"])
                rows.append(row)
    return rows, targets(rows)


def targets(rows: list[dict]) -> list[dict]:
    """The headline ratios, each with its bound where the benchmark sets one.

    Each is ``{"target", "value", "bound", "met", "how"}``; a time ratio is only taken
    between two steps of the same group and budget (timed in the same rounds).
    """
    def find(budget, case, mode, framework="jax"):
        return next((r for r in rows if r["budget"] == budget and r["case"] == case
                     and r["mode"] == mode and r["framework"] == framework), None)

    def ratio(a, b):
        if a is None or b is None or a["group"] != b["group"] or a["budget"] != b["budget"]:
            return None
        return _harness.paired_ratio(a["times_s"], b["times_s"])

    out = []

    def add(name, value, target, how, met=None):
        if value is None:
            return
        if met is None and target is not None:
            op, bound = target
            met = value <= bound if op == "<=" else value >= bound
        out.append(dict(target=name, value=value,
                        bound=None if target is None else f"{target[0]} {target[1]}",
                        met=met, how=how))

    budgets = sorted({r["budget"] for r in rows}, key=lambda b: ("all", "gpu", "one").index(b)
                     if b in ("all", "gpu", "one") else 9)
    for b in budgets:
        c = "user_avg"
        kd, jm = find(b, c, "kd"), find(b, c, "jm")
        add(f"[{b}] library JM / hand-written JM (time)", ratio(jm, find(b, c, "jm_hand")),
            ("<=", 1.03), "user_avg, jm vs jm_hand, paired rounds")
        add(f"[{b}] exact JM (label) / KD (time)", ratio(jm, kd), ("<=", 2.0), "user_avg")
        add(f"[{b}] JVP k=1 / KD (time)", ratio(find(b, c, "jvp_k1"), kd), ("<=", 2.0),
            "user_avg")
        add(f"[{b}] JM step JAX / PyTorch ({'all cores' if b == 'all' else b} each)",
            ratio(jm, find(b, c, "jm", "torch")), ("<=", 0.8) if b != "one" else None,
            "user_avg, same core budget, paired rounds")
        add(f"[{b}] KD step JAX / PyTorch", ratio(kd, find(b, c, "kd", "torch")), None,
            "user_avg")
        jm_all = find(b, c, "jm_all")
        for p in ("jvp_k1", "vjp_k1"):
            add(f"[{b}] exact all-output (K=10) / {p} (time)", ratio(jm_all, find(b, c, p)),
                (">=", 5.0), "user_avg")
        if jm is not None and kd is not None and jm["peak_bytes"] and kd["peak_bytes"]:
            add(f"[{b}] exact JM peak memory / KD's (no remat)",
                jm["peak_bytes"] / kd["peak_bytes"], None, "XLA memory_analysis")
        rm = find(b, c, "jm_remat")
        if rm is not None and kd is not None and rm["peak_bytes"] and kd["peak_bytes"]:
            add(f"[{b}] exact JM peak memory / KD's (remat on)",
                rm["peak_bytes"] / kd["peak_bytes"], ("<=", 2.0),
                f"XLA memory_analysis; {rm['note']}")
            add(f"[{b}] JM with remat / without (time)", ratio(rm, jm), None, rm["note"])
        add(f"[{b}] JM step fed teacher targets / JM step (time)",
            ratio(find(b, c, "jm_targets"), jm), None,
            "user_avg; the targets computed ahead, untimed")
        add(f"[{b}] bf16 / f32 KD step (time)", ratio(find(b, c, "kd_bf16"), kd), None,
            "networks in bfloat16")
        add(f"[{b}] bf16 / f32 JM step (time)", ratio(find(b, c, "jm_bf16"), jm), None,
            "networks in bfloat16")
        for case, label in (("user_max", "nn.max_pool"), ("user_maxr", "reshape + max")):
            add(f"[{b}] {label}: JM / KD (time)",
                ratio(find(b, case, "jm"), find(b, case, "kd")), None, case)
            add(f"[{b}] {label}: JM step JAX / PyTorch",
                ratio(find(b, case, "jm"), find(b, case, "jm", "torch")), None, case)
        add(f"[{b}] nn.max_pool JM step / reshape + max JM step",
            ratio(find(b, "user_max", "jm"), find(b, "user_maxr", "jm")), None,
            "same rounds")
    return out


def environment(args, results: list[dict], cores: int) -> dict:
    """The header of a run: date, machine, versions, commit, command and budgets."""
    import jax
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cores": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "git_commit": _git_commit(),
        "command": shlex.join(["python", "-m", "benchmarks.step_cost"] + (args.argv or [])),
        "budgets": [r["info"] for r in results],
        "quick": bool(args.quick),
    }
    for mod in ("flax", "optax", "torch"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    return env


def _git_commit() -> str:
    """The checked-out commit (``+dirty`` with uncommitted changes)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=REPO).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=REPO).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(rows: list[dict], tgts: list[dict], env: dict) -> str:
    """The Markdown report: the run's header, the targets, then every step."""
    lines = [
        "# Step cost: Jacobian matching against KD and against PyTorch",
        "",
        f"{env['date']} · {env['processor']} ({env['machine']}, {env['cores']} cores) · "
        f"jax {env['jax']}, flax {env['flax']}, optax {env['optax']}, torch {env['torch']} · "
        f"commit {env['git_commit']} · {env.get('wall_s', 0):.0f} s",
        "",
        f"Command: `{env['command']}`",
        "",
        "Budgets (each its own process):",
        "",
    ]
    for b in env["budgets"]:
        threads = "" if b["torch_threads"] is None else f" with {b['torch_threads']} thread(s)"
        lines.append(f"* `{b['budget']}`: {b['jax_devices']} JAX device(s) ({b['backend']}, "
                     f"{b['device_kind']}), PyTorch on {b['torch_device'] or '-'}{threads}; "
                     f"cores {b['pinned_cores']}; XLA_FLAGS=`{b['XLA_FLAGS'] or '(none)'}`; "
                     f"load average {b['load_before']} before, {b.get('load_after')} after")
    loads = [b.get(k) for b in env["budgets"] for k in ("load_before", "load_after")]
    if any(load is not None and load > env["cores"] for load in loads):
        lines += ["", f"**Loaded machine**: a load average above {env['cores']} means other "
                  "jobs shared the cores; multi-threaded PyTorch suffers most (its OpenMP "
                  "threads wait for cores), so read this run's JAX/PyTorch ratios at the "
                  "all-cores budget as unreliable."]
    if env.get("quick"):
        lines += ["", "**--quick: tiny sizes (a smoke run of the code path); the targets do "
                  "not apply to these figures.**"]
    lines += ["", "## Targets: each a ratio of steps timed in the same rounds", "",
              "| quantity | measured | target | met | how |", "|---|---|---|---|---|"]
    for t in tgts:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {r3(t['value'])} | {t['bound'] or '–'} | {met} | "
                     f"{t['how']} |")
    lines += ["", "## Every step", "",
              "time: median over interleaved rounds; ×KD: median per-round ratio to the KD "
              "step of the same framework, case and budget; FLOPs: XLA cost analysis; peak: "
              "XLA buffer assignment (argument + output + temp − alias, per device); "
              "JAX/torch: median per-round ratio to PyTorch's step of the same mode.", "",
              "| budget | case | B | framework | mode | ms | ×KD time | FLOPs | ×KD FLOPs | "
              "peak | ×KD peak | JAX/torch | compile s | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(row, key, fmt=None):
        if row.get(key) is None:
            return "–"
        return r3(row[key]) if fmt is None else format(row[key], fmt)

    for r in rows:
        lines.append(
            f"| {r['budget']} | {r['case']} | {r['batch']} | {r['framework']} | {r['mode']} | "
            f"{r['time_s'] * 1e3:.1f} | {f(r, 'time_ratio_kd')} | "
            f"{_harness.fmt_flops(r['flops']) if r['framework'] == 'jax' else '–'} | "
            f"{f(r, 'flop_ratio_kd')} | "
            f"{_harness.fmt_bytes(r['peak_bytes']) if r['framework'] == 'jax' else '–'} | "
            f"{f(r, 'peak_ratio_kd')} | {f(r, 'jax_over_torch')} | {f(r, 'compile_s', '.1f')} | "
            f"{r.get('note') or ''} |")
    return "\n".join(lines) + "\n"


def r3(x: float) -> str:
    """A ratio to three significant digits (0.0041, not 0.00)."""
    return f"{x:.3g}"


def plot(rows: list[dict], path: str) -> None:
    """Left: user_avg step time / KD per mode; right: JAX / PyTorch per step. Bars from 0."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    budgets = sorted({r["budget"] for r in rows})
    left = [r for r in rows if r["case"] == "user_avg" and r["framework"] == "jax"
            and "time_ratio_kd" in r]
    right = [r for r in rows if "jax_over_torch" in r]
    left_labels = list(dict.fromkeys(r["mode"] for r in left))
    right_labels = list(dict.fromkeys(f"{r['case']}:{r['mode']}" for r in right))
    width = 0.8 / max(1, len(budgets))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, b in enumerate(budgets):
        for ax, sel, labels, key, name in (
                (axes[0], left, left_labels, "time_ratio_kd", lambda r: r["mode"]),
                (axes[1], right, right_labels, "jax_over_torch",
                 lambda r: f"{r['case']}:{r['mode']}")):
            mine = [r for r in sel if r["budget"] == b]
            ax.bar([labels.index(name(r)) + (i - (len(budgets) - 1) / 2) * width
                    for r in mine], [r[key] for r in mine], width=width,
                   label=f"budget {b}", color=f"C{i}")
    for ax, labels in ((axes[0], left_labels), (axes[1], right_labels)):
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(bottom=0)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].axhline(2.0, color="k", ls=":", lw=1, label="target 2.0 (jm, jvp_k1)")
    axes[0].set_ylabel("step time / KD step time (same rounds)")
    axes[0].set_title("user_avg (Linen CNN, avg-pool): cost of each mode relative to KD",
                      fontsize=9)
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].axhline(0.8, color="k", ls=":", lw=1, label="target 0.8 (jm, all cores)")
    axes[1].set_ylabel("JAX step time / PyTorch step time (same rounds)")
    axes[1].set_title("JAX / PyTorch eager at the same core budget", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out: str, tag: str, *, with_plot: bool = True) -> str:
    """Saves ``result`` as ``out/<tag>.{json,md[,png]}``; returns the path stem."""
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, tag)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result["rows"], result["targets"], result["environment"]))
    if with_plot:
        plot(result["rows"], stem + ".png")
    return stem


def summary(tgts: list[dict]) -> list[str]:
    """One line per target: its value, its bound and whether it is met."""
    lines = []
    for t in tgts:
        met = "" if t["met"] is None else ("  (met)" if t["met"] else "  (NOT met)")
        lines.append(f"{t['target']}: {r3(t['value'])}"
                     f"{'' if t['bound'] is None else ' target ' + t['bound']}{met}")
    return lines
