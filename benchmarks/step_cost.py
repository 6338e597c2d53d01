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

The code: this module holds the command line and the plan (which budgets, cases and modes,
one subprocess per budget); :mod:`benchmarks._step_worker` builds and times one budget's
steps; :mod:`benchmarks._step_report` computes the ratios and writes the report. The loss
modes are tables: ``_user_models.MODES`` and ``_zoo.MODES``.

Why argparse and not absl + ml_collections like ``experiments/``: this is a stand-alone
measurement script with a handful of flat flags, no nested config and no workdir to
resume; it re-executes itself as subprocesses with a private ``--worker`` flag, and it
must run where only the library and (optionally) torch are installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import _step_report, _torch_reference, _user_models, _zoo
from benchmarks._harness import REPO, log

ONE_CORE_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


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
                    if (mode in _split(args.torch_modes)
                            and mode in _torch_reference.USER_MODES):
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
                                   and _zoo.MODES[m]["term"] in _torch_reference.ZOO_TERMS]
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


def run_job(job: dict, args, workdir: str) -> dict:
    """Runs one budget's worker subprocess (its environment set for the budget)."""
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
                        + ", ".join(_user_models.MODES) + " (default all)")
    p.add_argument("--other-modes", default=None,
                   help="modes of the other user cases and of the one-core budget "
                        "(default kd,jm,jvp_k1)")
    p.add_argument("--torch-modes", default="kd,jm,jvp_k1",
                   help="modes that also get a PyTorch step (user: kd, jm, jvp_k1, vjp_k1, "
                        "jm_all; the zoo's jm_top1 always with jm)")
    p.add_argument("--zoo-models", default=None,
                   help="comma list of cnn, vgg, wrn (default all; none with --quick)")
    p.add_argument("--zoo-modes", default="kd,jm_top1,jvp_k1",
                   help="zoo modes, from: " + ", ".join(_zoo.MODES))
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
                    modes="kd,jm,jm_hand,jvp_k1" if quick else ",".join(_user_models.MODES),
                    other_modes="kd,jm,jvp_k1", zoo_models="" if quick else "cnn,vgg,wrn",
                    batch_size=4 if quick else 64, width=4 if quick else 32,
                    image_size=8 if quick else 32, rounds=3 if quick else 10,
                    tag="step_cost")
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for m in _split(args.modes) + _split(args.other_modes):
        if m not in _user_models.MODES:
            p.error(f"--modes/--other-modes: unknown mode {m!r}; choose from "
                    f"{list(_user_models.MODES)}")
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
        args.torch = _torch_reference.available()
    if args.out is None:
        args.out = (tempfile.mkdtemp(prefix="step_cost_quick_") if quick
                    else os.path.join(REPO, "benchmarks", "results"))
    return args


def main(argv=None) -> dict:
    """Runs the benchmark (or, with ``--worker JOB OUT``, one budget's worker)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        from benchmarks import _step_worker
        _step_worker.worker(argv[1], argv[2])
        return {}
    args = parse_args(argv)
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="step_cost_jobs_") as workdir:
        for job in plan(args):
            if results and results[0]["info"]["backend"] != "cpu":
                log(args, f"skipping the {job['budget']!r} budget: not a CPU backend")
                continue
            results.append(run_job(job, args, workdir))
    rows, tgts = _step_report.analyse(results)
    if args.quick:  # tiny sizes: a smoke run of the code path, not the targets' setting
        for t in tgts:
            t["met"] = None
    env = _step_report.environment(args, results, available_cores())
    env["wall_s"] = time.perf_counter() - t0
    result = {"environment": env, "targets": tgts, "rows": rows}
    stem = _step_report.write(result, args.out, args.tag, with_plot=not args.no_plot)
    for line in _step_report.summary(tgts):
        log(args, line)
    log(args, f"wrote {stem}.{{json,md{'' if args.no_plot else ',png'}}} in "
              f"{env['wall_s']:.0f}s")
    return result


if __name__ == "__main__":
    main()
