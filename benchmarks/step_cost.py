r"""Step cost of Jacobian matching and its projections, against KD and against PyTorch.

Run from the repository root::

    python -m benchmarks.step_cost                # the default (about 5 min on 2 CPU cores)
    python -m benchmarks.step_cost --quick        # tens of seconds; writes to a temp folder
    python -m benchmarks.step_cost --budgets all --zoo-models '' --out /tmp/b

What is measured (details in ``docs/benchmarks.md``):

* **User-model cases** (``benchmarks/_user_models.py``): a flax.linen CNN as a user writes
  it, with ``nn.avg_pool`` (``user_avg``), ``nn.max_pool`` (``user_max``) and a reshape +
  max pool (``user_maxr``); batch 64 of 32x32x3, Adam; CE + KD + the term of the mode;
  the library's Jacobian matching next to the same maths written by hand; exact
  all-output matching next to one-probe projections; rematerialisation; bfloat16.
* **Zoo cases** (``benchmarks/_zoo.py``): jaxkd's own models through jaxkd's train step.
* **PyTorch eager** (``benchmarks/_torch_reference.py``) doing the same steps with
  ``autograd.grad(create_graph=True)``, at the **same core budget** as JAX:
  ``all`` = every core each (JAX: one host device per core, the batch sharded over a
  ``Mesh`` with ``NamedSharding``; PyTorch: ``torch.set_num_threads(cores)``) and ``one`` =
  one core each (both processes pinned to one core; JAX one device with single-threaded
  Eigen; PyTorch one thread). A host device count is fixed when JAX initialises its
  backend, so every budget runs in its own subprocess. On a GPU (JAX's default backend is
  not the CPU) there is one budget, ``gpu``: JAX on its default device, PyTorch on
  ``cuda`` when available, no CPU-device settings.

Every figure is a ratio to a baseline timed in the same rounds: within a budget, the steps
of a group (all user-model cases together; each zoo pair on its own) run *interleaved*,
each round every step once in a fresh random order after a short pause, and a ratio is
the median over rounds of the per-round quotient. FLOPs are XLA's cost analysis and peak
memory its static buffer assignment (``argument + output + temp - alias``, per device
when sharded) of the compiled step.

Outputs under ``--out`` (default ``benchmarks/results``; with ``--quick`` a fresh temporary
folder unless ``--out`` is given): ``<tag>.json`` (every per-round time, the machine,
versions, commit, date and command), ``<tag>.md`` (the targets and the tables) and
``<tag>.png``.

Why argparse and not absl + ml_collections like ``experiments/``: this is a stand-alone
measurement script with a handful of flat flags, no nested config and no workdir to
resume; it re-executes itself as subprocesses with a private ``--worker`` flag, and it
must run where only the library and (optionally) torch are installed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import _harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_CORE_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
USER_MODES = ("kd", "jm", "jm_hand", "jvp_k1", "vjp_k1", "jm_all", "jm_remat", "kd_bf16",
              "jm_bf16")
TORCH_USER_MODES = ("kd", "jm", "jvp_k1", "vjp_k1", "jm_all")
TORCH_ZOO_MODES = ("ce", "kd", "jm_top1", "jm_all", "vjp_k1", "vjp_k4", "jvp_k1", "jvp_k4",
                   "noisy_n1", "noisy_n4")


# ----------------------------------------------------------------------------- the plan

def plan(args) -> list[dict]:
    """The budgets to run, each a subprocess job with its groups of interleaved steps."""
    cores = available_cores()
    user_cases = _split(args.user_cases)
    zoo_models = _split(args.zoo_models)
    batches = [args.batch_size] + ([int(b) for b in _split(args.zoo_batch_sizes)]
                                   if zoo_models else [])
    jobs = []
    budgets = _split(args.budgets)
    for budget in budgets:
        if budget not in ("all", "one"):
            raise SystemExit(f"--budgets: expected a comma list of 'all' and 'one', got "
                             f"{budget!r}.")
    # 'all' first: its worker finds out whether JAX's backend is a GPU (then 'one' is moot).
    for budget in sorted(set(budgets), key=("all", "one").index):
        n = 1 if budget == "one" else device_count(cores, batches, args.devices)
        groups = []
        steps = []
        for case in user_cases:
            modes = (_split(args.modes) if case == user_cases[0] and budget == "all"
                     else _split(args.other_modes))
            for mode in modes:
                steps.append(dict(kind="user", case=case, mode=mode, framework="jax"))
            if args.torch:
                for mode in modes:
                    if mode in _split(args.torch_modes) and mode in TORCH_USER_MODES:
                        steps.append(dict(kind="user", case=case, mode=mode,
                                          framework="torch"))
        if steps:
            groups.append(dict(name="user", batch=args.batch_size, steps=steps))
        if budget == "all" or args.zoo_one_core:
            for model in zoo_models:
                for b in [int(s) for s in _split(args.zoo_batch_sizes)]:
                    zsteps = [dict(kind="zoo", case=model, mode=m, framework="jax")
                              for m in _split(args.zoo_modes)]
                    if args.torch:
                        zsteps += [dict(kind="zoo", case=model, mode=m, framework="torch")
                                   for m in _split(args.zoo_modes)
                                   if m in _split(args.torch_modes) + ["jm_top1"]
                                   and m in TORCH_ZOO_MODES]
                    groups.append(dict(name=f"zoo_{model}_b{b}", batch=b, steps=zsteps))
        jobs.append(dict(budget=budget, devices=n, torch_threads=1 if budget == "one" else cores,
                         pin_one_core=budget == "one", groups=groups, args=vars(args)))
    return jobs


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def device_count(cores: int, batches: list[int], requested: int | None) -> int:
    """Host devices for the all-cores budget: one per core, a divisor of every batch."""
    n = requested or cores
    g = 0
    for b in batches:
        g = math.gcd(g, b)
    return max(d for d in range(1, n + 1) if g % d == 0)


def _split(s: str) -> list[str]:
    return [p.strip() for p in (s or "").split(",") if p.strip()]


# ----------------------------------------------------------------------------- the worker

def worker(job_path: str, out_path: str) -> None:
    """One budget, in its own process: pin, configure JAX, build, time, write JSON."""
    with open(job_path) as f:
        job = json.load(f)
    args = argparse.Namespace(**job["args"])
    if job["pin_one_core"] and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import jax
    jax.config.update("jax_num_cpu_devices", job["devices"])
    backend = jax.default_backend()
    mesh = None
    if backend == "cpu" and job["devices"] > 1:
        from jax.sharding import AxisType, Mesh
        import numpy as np
        mesh = Mesh(np.array(jax.devices()[:job["devices"]]), ("data",),
                    axis_types=(AxisType.Auto,))
    torch_device = None
    if any(s["framework"] == "torch" for g in job["groups"] for s in g["steps"]):
        import warnings

        import torch

        # torch's forward-mode AD scripts a helper on first use and warns about its own API.
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
        torch.set_num_threads(job["torch_threads"])
        torch_device = "cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu"
        if backend != "cpu" and torch_device == "cpu":
            # JAX on an accelerator against PyTorch on the host CPU compares nothing.
            _log(args, f"[{backend}] PyTorch has no {backend} here: its steps are left out")
            torch_device = None
            for g in job["groups"]:
                g["steps"] = [s for s in g["steps"] if s["framework"] != "torch"]
    info = dict(budget=job["budget"] if backend == "cpu" else backend, backend=backend,
                jax_devices=len(mesh.devices.flat) if mesh is not None else 1,
                device_kind=jax.devices()[0].device_kind, torch_device=torch_device,
                torch_threads=job["torch_threads"] if torch_device == "cpu" else None,
                pinned_cores=sorted(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity") else None,
                load_before=_loadavg(),
                XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
    _log(args, f"[{info['budget']}] {info['jax_devices']} JAX device(s) "
               f"({backend}: {info['device_kind']}), torch on {torch_device} "
               f"({info['torch_threads']} threads)")
    groups = [run_group(g, args, mesh, torch_device, info, job) for g in job["groups"]]
    info["load_after"] = _loadavg()
    with open(out_path, "w") as f:
        json.dump(dict(info=info, groups=groups), f)


def run_group(group: dict, args, mesh, torch_device, info, job) -> dict:
    from benchmarks import _torch_reference, _user_models, _zoo
    specs = _zoo.model_specs(args.vgg_width, args.cnn_width)
    lowered = []
    for s in group["steps"]:
        if s["framework"] != "jax":
            continue
        if s["kind"] == "user":
            lowered.append(_user_models.make_step(
                s["case"], s["mode"], batch=group["batch"], image_size=args.image_size,
                num_classes=args.num_classes, width=args.width, mesh=mesh))
        else:
            lowered.append(_zoo.make_step(s["case"], s["mode"], batch=group["batch"],
                                          image_size=args.image_size,
                                          num_classes=args.num_classes, specs=specs,
                                          mesh=mesh))
    # XLA compiles outside the GIL: a few at a time (compile_s overlaps then).
    workers = 1 if job["pin_one_core"] else args.compile_workers
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_compile, low) for low, _ in lowered]
        compiled = [fin(*fut.result()) for (_, fin), fut in zip(lowered, futures)]
    jax_steps = iter(compiled)
    steps = []
    for s in group["steps"]:
        if s["framework"] == "jax":
            step = next(jax_steps)
            _log(args, f"  [{info['budget']}] compiled {_key(s)}: {step.compile_s:.1f}s, "
                       f"{_harness.fmt_flops(step.flops)}, "
                       f"peak {_harness.fmt_bytes(step.peak_bytes)}")
        elif s["kind"] == "user":
            from benchmarks._user_models import CASES
            run = _torch_reference.make_user_step(
                CASES[s["case"]], s["mode"], batch=group["batch"],
                image_size=args.image_size, num_classes=args.num_classes, width=args.width,
                device=torch_device)
            step = _harness.Step("torch", s["mode"], run)
        else:
            student_spec, teacher_spec = specs[s["case"]]
            run = _torch_reference.make_step(_zoo.MODES[s["mode"]], student_spec,
                                              teacher_spec, group["batch"], args.image_size,
                                              args.num_classes, device=torch_device)
            step = _harness.Step("torch", s["mode"], run)
        step.mode = _key(s)  # unique within the group
        steps.append(step)
    t0 = time.perf_counter()
    times = _harness.interleave(steps, rounds=args.rounds, warmup=args.warmup,
                                pause=args.pause)
    _log(args, f"  [{info['budget']}] timed group {group['name']}: {len(steps)} steps x "
               f"{args.rounds} rounds in {time.perf_counter() - t0:.0f}s")
    rows = []
    for s, step in zip(group["steps"], steps):
        rows.append(dict(s, batch=group["batch"], compile_s=step.compile_s, flops=step.flops,
                         peak_bytes=step.peak_bytes, temp_bytes=step.temp_bytes,
                         note=step.note, times_s=times[(step.framework, step.mode)]))
    return dict(name=group["name"], batch=group["batch"], rows=rows)


def _compile(lowered):
    t0 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, time.perf_counter() - t0


def _loadavg() -> float | None:
    """The 1-minute load average: above the core count, other jobs shared the cores."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _key(s: dict) -> str:
    return f"{s['framework']}:{s['case']}:{s['mode']}"


def _log(args, msg: str) -> None:
    if not args.silent:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the parent

def run_job(job: dict, args, workdir: str) -> dict:
    job_path = os.path.join(workdir, f"job_{job['budget']}.json")
    out_path = os.path.join(workdir, f"result_{job['budget']}.json")
    with open(job_path, "w") as f:
        json.dump(job, f)
    env = dict(os.environ)
    if job["budget"] == "one":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + ONE_CORE_XLA_FLAGS).strip()
        env["OMP_NUM_THREADS"] = "1"
    if args.platform:
        env["JAX_PLATFORMS"] = args.platform
    # On a GPU, JAX and PyTorch share the device: JAX takes half, not 75 %, up front.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.step_cost", "--worker", job_path,
                           out_path], cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the {job['budget']!r} budget's worker failed (exit "
                         f"{proc.returncode}); its traceback is above.")
    with open(out_path) as f:
        return json.load(f)


def analyse(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per-step rows with their in-group ratios, and the targets of issue 9."""
    rows = []
    for res in results:
        info = res["info"]
        for group in res["groups"]:
            by_key = {_key(r): r for r in group["rows"]}
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
        add(f"[{b}] bf16 / f32 KD step (time)", ratio(find(b, c, "kd_bf16"), kd), None,
            "networks in bfloat16")
        add(f"[{b}] bf16 / f32 JM step (time)", ratio(find(b, c, "jm_bf16"), jm), None,
            "networks in bfloat16")
        for case, label in (("user_max", "nn.max_pool"), ("user_maxr", "reshape + max")):
            add(f"[{b}] {label}: JM / KD (time)", ratio(find(b, case, "jm"),
                                                         find(b, case, "kd")), None, case)
            add(f"[{b}] {label}: JM step JAX / PyTorch",
                ratio(find(b, case, "jm"), find(b, case, "jm", "torch")), None, case)
        add(f"[{b}] nn.max_pool JM step / reshape + max JM step",
            ratio(find(b, "user_max", "jm"), find(b, "user_maxr", "jm")), None,
            "same rounds")
    return out


def environment(args, results: list[dict]) -> dict:
    import jax
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cores": available_cores(),
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
    lines += ["", "## Targets (issue 9): each a ratio of steps timed in the same rounds", "",
              "| quantity | measured | target | met | how |", "|---|---|---|---|---|"]
    for t in tgts:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {_r(t['value'])} | {t['bound'] or '–'} | {met} | "
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
        return _r(row[key]) if fmt is None else format(row[key], fmt)

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


def _r(x: float) -> str:
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


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a zero batch or width has no step to time)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_cost",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tens of seconds: tiny Linen CNN (8x8, batch 4, width 4), modes "
                        "kd,jm,jm_hand,jvp_k1, all-cores budget, no zoo; writes to a temp "
                        "folder unless --out is given")
    p.add_argument("--budgets", default=None,
                   help="comma list of 'all' (every core each) and 'one' (one core each); "
                        "default all,one (all with --quick); on a GPU only one runs")
    p.add_argument("--devices", type=int, default=None,
                   help="JAX host devices of the 'all' budget (default: one per core, "
                        "rounded down to a divisor of the batch sizes)")
    p.add_argument("--user-cases", default=None,
                   help="comma list of user_avg, user_max, user_maxr (default all three; "
                        "user_avg with --quick)")
    p.add_argument("--modes", default=None,
                   help="modes of the first user case at the all-cores budget, from: "
                        + ", ".join(USER_MODES) + " (default all)")
    p.add_argument("--other-modes", default=None,
                   help="modes of the other user cases and of the one-core budget "
                        "(default kd,jm,jvp_k1)")
    p.add_argument("--torch-modes", default="kd,jm,jvp_k1",
                   help="modes that also get a PyTorch step (user: kd, jm, jvp_k1, vjp_k1, "
                        "jm_all; the zoo's jm_top1 always with jm)")
    p.add_argument("--zoo-models", default=None,
                   help="comma list of cnn, vgg, wrn (default all; none with --quick)")
    p.add_argument("--zoo-modes", default="kd,jm_top1,jvp_k1",
                   help="zoo modes, from: " + ", ".join(TORCH_ZOO_MODES) + ", jm_top1_rof")
    p.add_argument("--zoo-batch-sizes", default="32")
    p.add_argument("--zoo-one-core", action="store_true",
                   help="also run the zoo at the one-core budget")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="user-model batch (default 64; 4 with --quick)")
    p.add_argument("--width", type=_positive_int, default=None,
                   help="user-model student width (default 32, teacher 2x; 4 with --quick)")
    p.add_argument("--num-classes", type=_positive_int, default=10)
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help="default 32 (8 with --quick)")
    p.add_argument("--vgg-width", type=_positive_int, default=32)
    p.add_argument("--cnn-width", type=_positive_int, default=32)
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timing rounds (default 10; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each step first")
    p.add_argument("--pause", type=float, default=0.05,
                   help="seconds of rest before each timed step")
    p.add_argument("--torch", dest="torch", action="store_true", default=None,
                   help="PyTorch side-by-side (default: on if torch is installed)")
    p.add_argument("--no-torch", dest="torch", action="store_false")
    p.add_argument("--platform", default=None,
                   help="JAX_PLATFORMS for the workers (e.g. cpu on a GPU machine)")
    p.add_argument("--compile-workers", type=int, default=2,
                   help="XLA compilations in parallel (all-cores budget)")
    p.add_argument("--out", default=None,
                   help="output folder (default benchmarks/results; a new temporary folder "
                        "with --quick)")
    p.add_argument("--tag", default=None, help="output file stem (default step_cost)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--silent", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    quick = args.quick
    defaults = dict(budgets="all" if quick else "all,one",
                    user_cases="user_avg" if quick else "user_avg,user_max,user_maxr",
                    modes="kd,jm,jm_hand,jvp_k1" if quick else ",".join(USER_MODES),
                    other_modes="kd,jm,jvp_k1", zoo_models="" if quick else "cnn,vgg,wrn",
                    batch_size=4 if quick else 64, width=4 if quick else 32,
                    image_size=8 if quick else 32, rounds=3 if quick else 10,
                    tag="step_cost")
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for m in _split(args.modes) + _split(args.other_modes):
        if m not in USER_MODES:
            p.error(f"--modes/--other-modes: unknown mode {m!r}; choose from {USER_MODES}")
    from benchmarks import _user_models, _zoo
    for c in _split(args.user_cases):
        if c not in _user_models.CASES:
            p.error(f"--user-cases: unknown case {c!r}; choose from {list(_user_models.CASES)}")
    for m in _split(args.zoo_modes):
        if m not in _zoo.MODES:
            p.error(f"--zoo-modes: unknown mode {m!r}; choose from {list(_zoo.MODES)}")
    for m in _split(args.zoo_models):
        if m not in ("cnn", "vgg", "wrn"):
            p.error(f"--zoo-models: unknown model {m!r}; choose from cnn, vgg, wrn")
    if args.torch is None:
        from benchmarks import _torch_reference
        args.torch = _torch_reference.available()
    if args.out is None:
        args.out = (tempfile.mkdtemp(prefix="step_cost_quick_") if quick
                    else os.path.join(REPO, "benchmarks", "results"))
    return args


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker(argv[1], argv[2])
        return {}
    args = parse_args(argv)
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="step_cost_jobs_") as workdir:
        for job in plan(args):
            if results and results[0]["info"]["backend"] != "cpu":
                _log(args, f"skipping the {job['budget']!r} budget: not a CPU backend")
                continue
            results.append(run_job(job, args, workdir))
    rows, tgts = analyse(results)
    if args.quick:  # tiny sizes: a smoke run of the code path, not the targets' setting
        for t in tgts:
            t["met"] = None
    env = environment(args, results)
    env["wall_s"] = time.perf_counter() - t0
    result = {"environment": env, "targets": tgts, "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.tag)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(rows, tgts, env))
    if not args.no_plot:
        plot(rows, stem + ".png")
    for t in tgts:
        met = "" if t["met"] is None else ("  (met)" if t["met"] else "  (NOT met)")
        _log(args, f"{t['target']}: {_r(t['value'])}"
                   f"{'' if t['bound'] is None else ' target ' + t['bound']}{met}")
    _log(args, f"wrote {stem}.{{json,md{'' if args.no_plot else ',png'}}} in "
               f"{env['wall_s']:.0f}s")
    return result


if __name__ == "__main__":
    main()
