r"""Step time, peak memory and FLOPs of every loss mode, as ratios to the KD step.

Run from the repository root::

    python -m benchmarks.step_cost                      # full default (< 10 min, 2-core CPU)
    python -m benchmarks.step_cost --quick              # seconds: tiny CNN, a few modes
    python -m benchmarks.step_cost --models vgg --batch-sizes 64 --no-torch --out /tmp/b

What one figure is. For each model pair and batch size, every mode's real jaxkd train step
(``jaxkd.training.make_train_step``: student train-mode forward, an ``Objective`` of
cross-entropy + Hinton KD + the term under test, optax SGD with momentum, state donated) is
compiled once (``lower().compile()``, timed apart), warmed up, and then the modes (and the
PyTorch eager steps) are run *interleaved*: round after round, every step once in a fresh
random order after a short pause, so that the noise of a shared machine hits all of them
alike. A mode's time is the median over rounds;
its ratio to KD is the median over rounds of ``time / time_of_KD_in_that_round``; the
JAX/PyTorch ratio likewise pairs the two steps of the same round.

Memory is XLA's static buffer assignment of the compiled step
(``compiled.memory_analysis()``): ``peak = argument + output + temp - alias`` bytes (the
live buffers of one step; ``alias`` is the donated state counted once), with ``temp``
(the step's working memory) reported as well. FLOPs are ``compiled.cost_analysis()``.

Outputs, under ``--out`` (default ``benchmarks/results``): ``step_cost.json`` (every
number, with machine, versions, date and the exact command), ``step_cost.md`` (the table)
and ``step_cost.png`` (time ratio against FLOP ratio).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

# name -> (kd, term, k): what the objective holds besides cross-entropy.
MODES: dict[str, dict] = {
    "ce": dict(kd=False, term=None),
    "kd": dict(kd=True, term=None),
    "jm_top1": dict(kd=True, term="jm_top1"),
    # Experiment (not the library's loss): reverse-over-forward parameter gradient.
    "jm_top1_rof": dict(kd=True, term="jm_top1_rof"),
    "jm_all": dict(kd=True, term="jm_all"),
    "vjp_k1": dict(kd=True, term="vjp", k=1),
    "vjp_k4": dict(kd=True, term="vjp", k=4),
    "jvp_k1": dict(kd=True, term="jvp", k=1),
    "jvp_k4": dict(kd=True, term="jvp", k=4),
    "noisy_n1": dict(kd=True, term="noisy", k=1),
    "noisy_n4": dict(kd=True, term="noisy", k=4),
}
DEFAULT_MODES = ("ce", "kd", "jm_top1", "jm_all", "vjp_k1", "vjp_k4", "jvp_k1", "jvp_k4",
                 "noisy_n1", "noisy_n4")


# Student/teacher pairs. SmallCNN: width 32 student, width 64 teacher. VGG-4/VGG-9 at base
# width 32 (half the paper-scale 64, to keep the CPU run under 10 minutes; --vgg-width 64
# for the paper scale). WRN-16-1 student of a WRN-16-2 teacher (an attention-transfer pair).
def model_specs(vgg_width: int = 32, cnn_width: int = 32) -> dict[str, tuple[dict, dict]]:
    from jaxkd.models import VGG4_PLAN, VGG9_PLAN
    return {
        "cnn": (dict(kind="cnn", width=cnn_width), dict(kind="cnn", width=2 * cnn_width)),
        "vgg": (dict(kind="vgg", plan=VGG4_PLAN, width=vgg_width),
                dict(kind="vgg", plan=VGG9_PLAN, width=vgg_width)),
        "wrn": (dict(kind="wrn", depth=16, widen=1), dict(kind="wrn", depth=16, widen=2)),
    }


def describe(spec: dict) -> str:
    if spec["kind"] == "cnn":
        return f"SmallCNN(w={spec['width']})"
    if spec["kind"] == "vgg":
        return f"VGG-{sum(len(b) for b in spec['plan']) + 1}(w={spec['width']})"
    return f"WRN-{spec['depth']}-{spec['widen']}"


def build_jax(spec: dict, num_classes: int, seed: int):
    from flax import nnx

    from jaxkd import models
    rngs = nnx.Rngs(seed)
    if spec["kind"] == "cnn":
        return models.SmallCNN(3, num_classes, width=spec["width"], rngs=rngs)
    if spec["kind"] == "vgg":
        return models.VGG(3, num_classes, plan=spec["plan"], width=spec["width"], rngs=rngs)
    return models.WideResNet(spec["depth"], spec["widen"], 3, num_classes, rngs=rngs)


def objective_for(mode: dict):
    from jaxkd import training
    terms = [training.cross_entropy()]
    if mode["kd"]:
        terms.append(training.distillation(temperature=4.0))
    term, k = mode["term"], mode.get("k", 1)
    if term == "jm_top1":
        terms.append(training.jacobian_matching(1.0))
    elif term == "jm_top1_rof":
        terms.append(_rof_jm_term())
    elif term == "jm_all":
        terms.append(training.jacobian_matching(1.0, outputs="all", normalize=False))
    elif term == "vjp":
        terms.append(training.vjp_projection(1.0, num_probes=k))
    elif term == "jvp":
        terms.append(training.jvp_projection(1.0, num_probes=k))
    elif term == "noisy":
        terms.append(training.noisy_distillation(1.0, sigma=0.1, num_samples=k))
    return training.Objective(*terms)


def _rof_jm_term():
    from benchmarks._reverse_over_forward import jacobian_matching_loss_rof
    from jaxkd import training

    def fn(inputs, key):
        del key
        return jacobian_matching_loss_rof(inputs.student_fn, inputs.teacher_fn, inputs.x)
    return training.Term("jacobian", 1.0, fn)


@dataclasses.dataclass
class Compiled:
    run: Callable[[], None]
    compile_s: float
    flops: float
    bytes_accessed: float
    peak_bytes: int
    temp_bytes: int


def lower_jax_step(mode: dict, student, teacher, batch_size: int, image_size: int,
                   num_classes: int):
    """Lowers the jaxkd train step of ``mode``; returns ``(lowered, finish)``.

    ``finish(compiled, compile_s)`` wraps the compiled step into a :class:`Compiled`.
    Lowering (Python tracing) runs here; compiling (XLA, outside the GIL) may run in a
    thread.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from jaxkd import training
    optimizer = optax.sgd(1e-3, momentum=0.9)
    # Copy: the step donates its state, which would otherwise delete the model's arrays.
    state = jax.tree.map(jnp.copy, training.init_train_state(student, optimizer,
                                                             key=jax.random.key(0)))
    kx, ky = jax.random.split(jax.random.key(1))
    batch = {"image": jax.random.normal(kx, (batch_size, image_size, image_size, 3)),
             "label": jax.random.randint(ky, (batch_size,), 0, num_classes)}
    objective = objective_for(mode)
    step = training.make_train_step(objective, optimizer,
                                    teacher=teacher if objective.needs_teacher else None)
    t0 = time.perf_counter()
    lowered = step.jitted.lower(state, batch, step.teacher_vars)
    lower_s = time.perf_counter() - t0
    teacher_vars = step.teacher_vars

    def finish(compiled, compile_s: float) -> Compiled:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        mem = compiled.memory_analysis()
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
        holder = [state]

        def run():
            new_state, metrics = compiled(holder[0], batch, teacher_vars)
            jax.block_until_ready((new_state, metrics))
            holder[0] = new_state

        return Compiled(run, lower_s + compile_s, float(cost.get("flops", float("nan"))),
                        float(cost.get("bytes accessed", float("nan"))), int(peak),
                        int(mem.temp_size_in_bytes))

    return lowered, finish


def _compile(lowered):
    t0 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, time.perf_counter() - t0


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_pair(model: str, specs: tuple[dict, dict], batch_size: int, args,
               modes: list[str]) -> list[dict]:
    from benchmarks import _torch_reference
    student_spec, teacher_spec = specs
    student = build_jax(student_spec, args.num_classes, 0)
    teacher = build_jax(teacher_spec, args.num_classes, 1)
    runners: dict[str, Callable[[], object]] = {}
    rows: dict[str, dict] = {}
    lowered = {name: lower_jax_step(MODES[name], student, teacher, batch_size,
                                    args.image_size, args.num_classes) for name in modes}
    # XLA compiles outside the GIL: two at a time. A mode's compile_s is its own
    # lowering + compilation wall time (inflated when the two overlap on few cores).
    with concurrent.futures.ThreadPoolExecutor(args.compile_workers) as pool:
        futures = {name: pool.submit(_compile, lowered[name][0]) for name in modes}
        compiled = {name: lowered[name][1](*futures[name].result()) for name in modes}
    for name in modes:
        c = compiled[name]
        runners[("jax", name)] = c.run
        rows[name] = dict(model=model, student=describe(student_spec),
                          teacher=describe(teacher_spec), batch=batch_size, mode=name,
                          num_classes=args.num_classes, compile_s=c.compile_s,
                          flops=c.flops, bytes_accessed=c.bytes_accessed,
                          peak_bytes=c.peak_bytes, temp_bytes=c.temp_bytes)
        _log(args, f"  compiled {model} B={batch_size} {name}: {c.compile_s:.1f}s, "
                   f"{c.flops / 1e9:.2f} GFLOP, peak {c.peak_bytes / 2**20:.0f} MiB")
    if args.torch:
        for name in modes:
            if name.endswith("_rof"):
                continue
            runners[("torch", name)] = _torch_reference.make_step(
                MODES[name], student_spec, teacher_spec, batch_size, args.image_size,
                args.num_classes)
    for fn in runners.values():  # warm-up
        for _ in range(args.warmup):
            fn()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    keys = list(runners)
    order = random.Random(0)
    for _ in range(args.rounds):
        # A fresh order every round, so no step always follows the same neighbour, and a
        # pause between steps: freeing a large step's buffers (GBs for exact all-output
        # matching at K=100) must not be billed to the step that follows it.
        order.shuffle(keys)
        for key in keys:
            time.sleep(args.pause)
            times[key].append(timed(runners[key]))
    kd = times.get(("jax", "kd"))
    torch_kd = times.get(("torch", "kd"))
    out = []
    for name in modes:
        row = rows[name]
        t = times[("jax", name)]
        row["time_s"] = statistics.median(t)
        row["times_s"] = t
        if kd is not None:
            row["time_ratio_kd"] = statistics.median(a / b for a, b in zip(t, kd))
        tt = times.get(("torch", name))
        if tt is not None:
            row["torch_time_s"] = statistics.median(tt)
            row["torch_times_s"] = tt
            row["jax_over_torch"] = statistics.median(a / b for a, b in zip(t, tt))
            if torch_kd is not None:
                row["torch_time_ratio_kd"] = statistics.median(
                    a / b for a, b in zip(tt, torch_kd))
        out.append(row)
    base = rows.get("kd")
    if base is not None:
        for row in out:
            row["flop_ratio_kd"] = row["flops"] / base["flops"]
            row["peak_ratio_kd"] = row["peak_bytes"] / base["peak_bytes"]
    for row in out:
        _log(args, "  " + _summary(row))
    return out


def _summary(row: dict) -> str:
    s = (f"{row['model']} B={row['batch']} {row['mode']:>13}: "
         f"{row['time_s'] * 1e3:8.1f} ms")
    for key, label in (("time_ratio_kd", "x KD"), ("flop_ratio_kd", "x KD FLOPs"),
                       ("peak_ratio_kd", "x KD peak"), ("jax_over_torch", "JAX/torch")):
        if key in row:
            s += f"  {row[key]:5.2f} {label}"
    return s


def _log(args, msg: str) -> None:
    if not args.silent:
        print(msg, file=sys.stderr, flush=True)


def environment(args) -> dict:
    import jax
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [str(d.device_kind) for d in jax.local_devices()][:1],
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "git_commit": _git_commit(),
        "command": " ".join(["python -m benchmarks.step_cost"] + sys.argv[1:]),
    }
    for mod in ("flax", "optax", "torch"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    if env["torch"] is not None:
        import torch
        env["torch_threads"] = torch.get_num_threads()
    return env


def _git_commit() -> str:
    """The checked-out commit, so a results file says which code it measured."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=os.path.dirname(__file__))
        return out.stdout.strip()
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


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "# Step cost of each loss mode (ratios to the KD step of the same run)",
        "",
        f"{env['date']} · {env['processor']} ({env['cpu_count']} cores, "
        f"{env['jax_backend']}: {', '.join(env['devices'])}) · jax {env['jax']}, "
        f"flax {env['flax']}, optax {env['optax']}, torch {env['torch']} · "
        f"XLA_FLAGS={env['XLA_FLAGS'] or '(none)'} · commit {env['git_commit']}",
        "",
        f"Command: `{env['command']}`",
        "",
        "time: median over interleaved rounds; ×KD: median per-round ratio to the JAX KD "
        "step; FLOPs: XLA cost analysis; peak: XLA buffer assignment "
        "(argument + output + temp − alias); JAX/torch: median per-round ratio to the "
        "PyTorch eager step of the same objective.",
        "",
        "| model (student / teacher) | B | mode | time ms | ×KD time | ×KD FLOPs | GFLOP | "
        "peak MiB | ×KD peak | compile s | torch ms | torch ×KD | JAX/torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(row, key, fmt):
        return format(row[key], fmt) if key in row else "–"

    for row in rows:
        lines.append(
            f"| {row['model']} ({row['student']} / {row['teacher']}) | {row['batch']} | "
            f"{row['mode']} | {row['time_s'] * 1e3:.1f} | {f(row, 'time_ratio_kd', '.2f')} | "
            f"{f(row, 'flop_ratio_kd', '.2f')} | {row['flops'] / 1e9:.2f} | "
            f"{row['peak_bytes'] / 2**20:.1f} | {f(row, 'peak_ratio_kd', '.2f')} | "
            f"{row['compile_s']:.1f} | "
            f"{format(row['torch_time_s'] * 1e3, '.1f') if 'torch_time_s' in row else '–'} | "
            f"{f(row, 'torch_time_ratio_kd', '.2f')} | {f(row, 'jax_over_torch', '.2f')} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"cnn": "o", "vgg": "s", "wrn": "^"}
    modes = sorted({r["mode"] for r in rows})
    colors = {m: plt.cm.tab20(i / max(1, len(modes) - 1)) for i, m in enumerate(modes)}
    for row in rows:
        if "time_ratio_kd" not in row:
            continue
        ax.scatter(row["flop_ratio_kd"], row["time_ratio_kd"],
                   marker=markers.get(row["model"], "x"), color=colors[row["mode"]],
                   label=row["mode"])
    lim = max([1.0] + [max(r.get("flop_ratio_kd", 1), r.get("time_ratio_kd", 1))
                       for r in rows]) * 1.1
    ax.plot([0, lim], [0, lim], "k:", lw=1, label="time ratio = FLOP ratio")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FLOPs / KD step FLOPs (XLA cost analysis)")
    ax.set_ylabel("step time / KD step time (same run)")
    ax.set_title("Cost of each loss mode relative to KD "
                 "(o CNN, s VGG-4/9, ^ WRN-16-1/2)", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_cost",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="seconds: tiny SmallCNN at 8x8, batch 4, modes ce,kd,jm_top1,jvp_k1")
    p.add_argument("--models", default="cnn,vgg,wrn", help="comma list of cnn, vgg, wrn")
    p.add_argument("--batch-sizes", default="8,32", help="comma list of batch sizes")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES),
                   help="comma list of: " + ", ".join(MODES))
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--vgg-width", type=int, default=32)
    p.add_argument("--cnn-width", type=int, default=32)
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timing rounds (default 5; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs of each step first (default 1)")
    p.add_argument("--torch", dest="torch", action="store_true", default=None,
                   help="PyTorch eager side-by-side (default: on if torch is installed)")
    p.add_argument("--no-torch", dest="torch", action="store_false")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: on a shared 2-core machine two "
                        "OpenMP threads made torch's steps up to 10x slower)")
    p.add_argument("--xla-single-thread", action="store_true",
                   help="append --xla_cpu_multi_thread_eigen=false to XLA_FLAGS (only "
                        "effective if jax is not imported yet)")
    p.add_argument("--pause", type=float, default=0.05,
                   help="seconds of rest before each timed step")
    p.add_argument("--compile-workers", type=int, default=2,
                   help="XLA compilations run in parallel")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--tag", default=None,
                   help="output file stem (default step_cost; step_cost_quick with --quick, "
                        "so a quick run never overwrites the committed results)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--silent", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch_sizes = "cnn", "4"
        if args.modes == ",".join(DEFAULT_MODES):
            args.modes = "ce,kd,jm_top1,jvp_k1"
        args.image_size, args.cnn_width = 8, 4
    if args.tag is None:
        args.tag = "step_cost_quick" if args.quick else "step_cost"
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.warmup is None:
        args.warmup = 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.xla_single_thread:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false").strip()
    from benchmarks import _torch_reference
    if args.torch is None:
        args.torch = _torch_reference.available()
    if args.torch:
        import torch
        torch.set_num_threads(args.torch_threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown modes {unknown}; choose from {list(MODES)}")
    specs = model_specs(args.vgg_width, args.cnn_width)
    env = environment(args)
    rows = []
    t0 = time.perf_counter()
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for b in [int(s) for s in args.batch_sizes.split(",") if s.strip()]:
            _log(args, f"{model} batch {b}")
            rows.extend(bench_pair(model, specs[model], b, args, modes))
    env["wall_s"] = time.perf_counter() - t0
    result = {"environment": env, "rows": rows}
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{args.tag}.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, f"{args.tag}.md"), "w") as f:
        f.write(markdown(rows, env))
    if not args.no_plot:
        plot(rows, os.path.join(out, f"{args.tag}.png"))
    _log(args, f"wrote {out}/{args.tag}.{{json,md{',png' if not args.no_plot else ''}}} "
               f"in {env['wall_s']:.0f}s")
    return result


if __name__ == "__main__":
    main()
