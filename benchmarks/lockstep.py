"""Students per second in lockstep against the same students trained one after another.

``python -m benchmarks.lockstep`` times, for study-sized students, one train step of M
students with :func:`jaxkd.training.make_lockstep_step` (one program, members stacked)
against M calls of :func:`jaxkd.training.make_train_step` (the sequential baseline), in
interleaved rounds on the same machine (:func:`benchmarks._harness.interleave`), and
reports students per second, the lockstep / sequential speed ratio (paired by round) and
XLA's compiled peak memory of the lockstep program (per member: the figure that bounds a
group's size). The objective is the study's label-Jacobian one (cross-entropy plus exact
Jacobian matching of the label output against a frozen teacher of the same architecture).

Cases: an MLP (128, 128) on the digits' 8x8x1 images, batch 64, and the VGG-4 of width 16
on 28x28x1, batch 64. Results go to ``benchmarks/results/lockstep_<backend>.{json,md}``
with the machine, its load (``uptime``), the versions and the commit. ``--quick`` runs
tiny sizes for a smoke test and writes to a temporary directory unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from benchmarks import _harness

CASES = {
    # name: (model, input shape, batch size, model keywords)
    "mlp_digits": ("mlp", (8, 8, 1), 64, {"hidden": (128, 128)}),
    "vgg4_w16_28": ("vgg4", (28, 28, 1), 64, {"width": 16}),
}
QUICK_CASES = {
    "mlp_digits": ("mlp", (8, 8, 1), 8, {"hidden": (8,)}),
    "vgg4_w16_28": ("vgg4", (8, 8, 1), 8, {"width": 2}),
}
NUM_CLASSES = 10


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", default="1,4,16", help="member counts of the MLP case")
    p.add_argument("--conv-members", default="1,4",
                   help="member counts of the VGG-4 case (XLA:CPU runs vmapped "
                        "convolutions as grouped ones, slowly)")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--pause", type=float, default=0.2)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--silent", action="store_true")
    return p.parse_args(argv)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=_harness.REPO, timeout=10).stdout.strip() or "n/a"
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def _case_steps(case: str, spec, m: int):
    """The lockstep step of ``m`` members and the sequential baseline, as harness Steps."""
    import jax
    import numpy as np
    import optax
    from flax import nnx

    from jaxkd import models, training

    name, shape, batch, kw = spec
    mesh = training.data_mesh(1)

    def make(seed):
        return models.create(name, input_shape=shape, num_classes=NUM_CLASSES,
                             rngs=nnx.Rngs(seed), **kw)

    objective = training.Objective(training.cross_entropy(),
                                   training.jacobian_matching(1.0, outputs="label"))
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01)
    teacher = make(1000)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(m, batch, *shape)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, (m, batch)).astype(np.int32)
    seeds = list(range(m))

    lock = training.make_lockstep_step(objective, optimizer, mesh, teacher=teacher)
    # Placed as the steps' outputs are, so that the second call does not compile again.
    group = training.replicate(training.init_lockstep_state(
        [make(s) for s in seeds], objective, optimizer,
        keys=[jax.random.key(s) for s in seeds]), mesh)
    lock_batch = jax.device_put({"image": images, "label": labels},
                                training.member_sharding(mesh))
    lowered = lock.jitted.lower(group, lock_batch, lock.teacher_vars)
    stats = _harness.compiled_stats(lowered.compile())
    holder = {"group": group}

    def run_lock():
        holder["group"], metrics = lock(holder["group"], lock_batch)
        jax.block_until_ready(metrics)

    single = training.make_train_step(objective, optimizer, mesh, teacher=teacher)
    states = [training.replicate(training.init_train_state(
        make(s), optimizer, key=jax.random.key(s)), mesh) for s in seeds]
    batches = [jax.device_put({"image": images[i], "label": labels[i]},
                              training.replicated(mesh)) for i in range(m)]
    one_stats = _harness.compiled_stats(
        single.jitted.lower(states[0], batches[0], single.teacher_vars).compile())

    def run_seq():
        out = []
        for i in range(m):
            states[i], metrics = single(states[i], batches[i])
            out.append(metrics)
        jax.block_until_ready(out)

    steps = [_harness.Step("jax", f"{case}:lockstep:M{m}", run_lock, **stats),
             _harness.Step("jax", f"{case}:sequential:M{m}", run_seq, **one_stats)]
    return steps, stats, one_stats


def main(argv=None) -> dict:
    """Runs the benchmark; returns (and writes) ``{"environment", "rows"}``."""
    args = _parse(argv)
    import flax
    import jax
    import optax

    cases = QUICK_CASES if args.quick else CASES
    rows = []
    load_before = _uptime()
    for case in args.cases.split(","):
        if case not in cases:
            raise ValueError(f"--cases: unknown case {case!r}; known: {sorted(cases)}.")
        counts = args.conv_members if case.startswith("vgg") else args.members
        for m in (int(c) for c in counts.split(",")):
            _harness.log(args, f"{case}: M={m} (compiling)")
            steps, stats, one_stats = _case_steps(case, cases[case], m)
            load = _uptime()
            times = _harness.interleave(steps, rounds=args.rounds, warmup=args.warmup,
                                        pause=args.pause)
            lock_t, seq_t = times[("jax", steps[0].mode)], times[("jax", steps[1].mode)]
            row = {
                "case": case, "members": m, "batch": cases[case][2],
                "input_shape": list(cases[case][1]),
                "lockstep_s": statistics.median(lock_t), "sequential_s":
                    statistics.median(seq_t), "lockstep_times_s": lock_t,
                "sequential_times_s": seq_t,
                "lockstep_students_per_s": m / statistics.median(lock_t),
                "sequential_students_per_s": m / statistics.median(seq_t),
                "speedup": _harness.paired_ratio(seq_t, lock_t),
                "lockstep_peak_bytes": stats["peak_bytes"],
                "lockstep_peak_bytes_per_member": (stats["peak_bytes"] / m
                                                   if stats["peak_bytes"] else None),
                "single_peak_bytes": one_stats["peak_bytes"], "uptime": load,
            }
            rows.append(row)
            _harness.log(args, f"  lockstep {row['lockstep_students_per_s']:.3g} students/s, "
                               f"sequential {row['sequential_students_per_s']:.3g}, "
                               f"speedup {row['speedup']:.3g}x  [{load}]")
    for row in rows:  # students per second against the same case's M = 1 lockstep step
        base = [r for r in rows if r["case"] == row["case"] and r["members"] == 1]
        row["lockstep_over_m1"] = (row["lockstep_students_per_s"]
                                   / base[0]["lockstep_students_per_s"] if base else None)
    backend = jax.default_backend()
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": backend, "device": str(jax.devices()[0].device_kind),
        "processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "uptime_before": load_before, "uptime_after": _uptime(),
        "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
        "python": platform.python_version(), "git_commit": _commit(),
        "command": "python -m benchmarks.lockstep " + " ".join(argv or sys.argv[1:]),
        "quick": args.quick, "rounds": args.rounds,
    }
    result = {"environment": env, "rows": rows}
    out = args.out or (tempfile.mkdtemp(prefix="lockstep_") if args.quick
                       else os.path.join(_harness.REPO, "benchmarks", "results"))
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"lockstep_{backend}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(render(result))
    _harness.log(args, f"wrote {stem}.json and .md")
    result["out"] = out
    return result


def render(result: dict) -> str:
    """The Markdown table of a run."""
    env = result["environment"]
    lines = [f"# Lockstep vs sequential students ({env['backend']}, {env['device']})", "",
             f"{env['date']}, {env['processor']}, {env['cores']} cores, jax {env['jax']}, "
             f"flax {env['flax']}, optax {env['optax']}, commit {env['git_commit']}.",
             f"Load before: `{env['uptime_before']}`; after: `{env['uptime_after']}`.",
             f"Command: `{env['command']}`; median of {env['rounds']} interleaved rounds; "
             "speedup = median over rounds of sequential / lockstep time (paired).", "",
             "| case | M | lockstep students/s | sequential students/s | speedup | "
             "lockstep vs M=1 | peak / member | load at start |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        over = r.get("lockstep_over_m1")
        lines.append(
            f"| {r['case']} | {r['members']} | {r['lockstep_students_per_s']:.3g} | "
            f"{r['sequential_students_per_s']:.3g} | {r['speedup']:.3g}x | "
            f"{'n/a' if over is None else f'{over:.3g}x'} | "
            f"{_harness.fmt_bytes(r['lockstep_peak_bytes_per_member'])} | "
            f"{r['uptime'].split('load average:')[-1].strip()} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
