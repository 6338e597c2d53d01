"""What every benchmark case shares: compiled-step statistics, interleaved timing, units.

Nothing here imports JAX or torch at module level: the orchestrator in
:mod:`benchmarks.step_cost` imports this module before it decides, per subprocess, how
many host devices JAX gets (which must happen before JAX initialises its backend).
"""

from __future__ import annotations

import dataclasses
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

# The repository root: the workers run from here, and results default to benchmarks/results.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Step:
    """One runnable step of a case: ``run()`` executes it once and waits for the result.

    ``flops``/``peak_bytes``/``temp_bytes`` come from XLA (``None`` where the backend does
    not report them, and always for PyTorch); ``compile_s`` is lowering + compilation.
    """
    framework: str  # "jax" | "torch"
    mode: str
    run: Callable[[], None]
    compile_s: float | None = None
    flops: float | None = None
    peak_bytes: int | None = None
    temp_bytes: int | None = None
    note: str = ""


def compiled_stats(compiled) -> dict:
    """FLOPs and static peak memory of a compiled XLA executable (None if unreported).

    ``peak = argument + output + temp - alias`` bytes: everything live during one call,
    donated buffers counted once. For an SPMD-partitioned step these are per device.
    """
    out = {"flops": None, "peak_bytes": None, "temp_bytes": None}
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and cost.get("flops", 0) > 0:
            out["flops"] = float(cost["flops"])
    except Exception:  # noqa: BLE001 - some backends raise NotImplementedError / return None
        pass
    try:
        mem = compiled.memory_analysis()
        if mem is not None:
            peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                    + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
            if peak > 0:
                out["peak_bytes"] = int(peak)
                out["temp_bytes"] = int(mem.temp_size_in_bytes)
    except Exception:  # noqa: BLE001
        pass
    return out


def interleave(steps: list[Step], *, rounds: int, warmup: int, pause: float,
               seed: int = 0) -> dict[tuple[str, str], list[float]]:
    """Per-round wall times of every step, the steps run interleaved.

    Each step first runs ``warmup`` times untimed. Then, ``rounds`` times, every step runs
    once, in a fresh random order, each after ``pause`` seconds of rest, so that the
    noise of a shared machine hits all steps alike and freeing one step's buffers is not
    billed to the next. Round ``r`` of two steps can then be compared pairwise.
    """
    for s in steps:
        for _ in range(warmup):
            s.run()
    times: dict[tuple[str, str], list[float]] = {(s.framework, s.mode): [] for s in steps}
    order = list(steps)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for s in order:
            time.sleep(pause)
            t0 = time.perf_counter()
            s.run()
            times[(s.framework, s.mode)].append(time.perf_counter() - t0)
    return times


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a[r] / b[r]`` (two steps timed in the same rounds)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_ratio needs two equally long, non-empty series, got "
                         f"{len(a)} and {len(b)} values.")
    return statistics.median(x / y for x, y in zip(a, b))


def fmt_flops(flops: float | None) -> str:
    """``1.23 GFLOP`` / ``456 MFLOP`` / ``n/a`` (never a zero for a positive count)."""
    if flops is None:
        return "n/a"
    for scale, unit in ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP")):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.0f} FLOP"


def fmt_bytes(n: int | None) -> str:
    """``1.5 GiB`` / ``12.3 MiB`` / ``456 KiB`` / ``n/a`` (never a zero for a positive size)."""
    if n is None:
        return "n/a"
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def step_key(step: dict) -> str:
    """``framework:case:mode``, a step's name, unique within its group."""
    return f"{step['framework']}:{step['case']}:{step['mode']}"


def log(args, msg: str) -> None:
    """A progress line on stderr, unless ``--silent``."""
    if not args.silent:
        print(msg, file=sys.stderr, flush=True)
