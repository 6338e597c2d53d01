"""One budget of ``step_cost``, in its own process: configure JAX, build, compile, time.

``python -m benchmarks.step_cost`` writes each budget's job (its groups of steps and the
command line's settings) to a JSON file and runs ``python -m benchmarks.step_cost --worker
JOB OUT``, which lands in :func:`worker`. A host device count is fixed when JAX
initialises its backend, so the worker pins its process (one-core budget) and sets the
device count before anything touches JAX; nothing in this module imports JAX at module
level for the same reason.

The worker writes ``{"info": ..., "groups": [{"name", "batch", "rows": [...]}]}`` to OUT:
one row per step with its XLA statistics and every per-round time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import time

from benchmarks import _harness
from benchmarks._harness import log, step_key


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
        import numpy as np
        from jax.sharding import AxisType, Mesh
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
            log(args, f"[{backend}] PyTorch has no {backend} here: its steps are left out")
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
    log(args, f"[{info['budget']}] {info['jax_devices']} JAX device(s) "
              f"({backend}: {info['device_kind']}), torch on {torch_device} "
              f"({info['torch_threads']} threads)")
    groups = [run_group(g, args, mesh, torch_device, info, job) for g in job["groups"]]
    info["load_after"] = _loadavg()
    with open(out_path, "w") as f:
        json.dump(dict(info=info, groups=groups), f)


def run_group(group: dict, args, mesh, torch_device, info, job) -> dict:
    """Builds and compiles every step of ``group``, then times them interleaved."""
    from benchmarks import _zoo
    specs = _zoo.model_specs(args.vgg_width, args.cnn_width)
    lowered = [_lower_jax_step(s, group["batch"], args, mesh, specs)
               for s in group["steps"] if s["framework"] == "jax"]
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
            log(args, f"  [{info['budget']}] compiled {step_key(s)}: {step.compile_s:.1f}s, "
                      f"{_harness.fmt_flops(step.flops)}, "
                      f"peak {_harness.fmt_bytes(step.peak_bytes)}")
        else:
            step = _harness.Step("torch", s["mode"], _torch_step(s, group["batch"], args,
                                                                 specs, torch_device))
        step.mode = step_key(s)  # unique within the group
        steps.append(step)
    t0 = time.perf_counter()
    times = _harness.interleave(steps, rounds=args.rounds, warmup=args.warmup,
                                pause=args.pause)
    log(args, f"  [{info['budget']}] timed group {group['name']}: {len(steps)} steps x "
              f"{args.rounds} rounds in {time.perf_counter() - t0:.0f}s")
    rows = []
    for s, step in zip(group["steps"], steps):
        rows.append(dict(s, batch=group["batch"], compile_s=step.compile_s, flops=step.flops,
                         peak_bytes=step.peak_bytes, temp_bytes=step.temp_bytes,
                         note=step.note, times_s=times[(step.framework, step.mode)]))
    return dict(name=group["name"], batch=group["batch"], rows=rows)


def _lower_jax_step(s: dict, batch: int, args, mesh, specs):
    """``(lowered, finish)`` of one JAX step: a user-model case or a zoo pair."""
    from benchmarks import _user_models, _zoo
    if s["kind"] == "user":
        return _user_models.make_step(s["case"], s["mode"], batch=batch,
                                      image_size=args.image_size,
                                      num_classes=args.num_classes, width=args.width,
                                      mesh=mesh)
    return _zoo.make_step(s["case"], s["mode"], batch=batch, image_size=args.image_size,
                          num_classes=args.num_classes, specs=specs, mesh=mesh)


def _torch_step(s: dict, batch: int, args, specs, torch_device):
    """``run()`` of one PyTorch eager step: a user-model case or a zoo pair."""
    from benchmarks import _torch_reference, _user_models, _zoo
    if s["kind"] == "user":
        return _torch_reference.make_user_step(
            _user_models.CASES[s["case"]], s["mode"], batch=batch,
            image_size=args.image_size, num_classes=args.num_classes, width=args.width,
            device=torch_device)
    student_spec, teacher_spec = specs[s["case"]]
    return _torch_reference.make_step(_zoo.MODES[s["mode"]], student_spec, teacher_spec,
                                      batch, args.image_size, args.num_classes,
                                      device=torch_device)


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
