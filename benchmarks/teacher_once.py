"""Teacher targets computed once: the student step fed them against the step that runs
the teacher.

    python -m benchmarks.teacher_once              # 32x32x3, batch 32, width 32, 10 rounds
    python -m benchmarks.teacher_once --quick      # tiny sizes, for a smoke run

The pair is the Linen CNN of the user-model cases (:mod:`benchmarks._user_models`,
reshape-max pooling): student widths (w, 2w), teacher (2w, 4w). Each step is CE +
``distillation_loss(temperature=4)`` + a Jacobian term, ``jax.grad`` of the batch mean, one
Adam update, state donated. Modes:

* ``jm``: ``jacobian_matching_loss`` (teacher's top-1, normalised);
* ``jvp_k1``: ``jvp_projection_loss`` with one probe.

For each mode two steps: ``teacher`` (the teacher's parameters and the probe key are jit
arguments; the step runs the teacher's forward and its VJP or JVP) and ``targets`` (the
step gets :func:`jaxkd.losses.teacher_targets` of the batch, computed beforehand, and runs
the student only). The four steps run interleaved (:func:`_harness.interleave`); the
reported ratio is the median of per-round ``targets / teacher`` times, with the load
average (``uptime``) before and after. The one-off cost of the targets (``teacher_targets``
under ``jit`` for one batch) is timed the same way and reported beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

from benchmarks import _harness, _user_models

MODES = ("jm", "jvp_k1")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def build(*, batch: int, image_size: int, width: int, num_classes: int = 10, seed: int = 0):
    """The four student steps (``<mode>/teacher``, ``<mode>/targets``) and the targets'
    computation (``<mode>/compute_targets``), as :class:`_harness.Step` s."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxkd import losses

    student, teacher, s_params, t_params, x, y, kp = _user_models.pair(
        "reshape", width=width, num_classes=num_classes, dtype=jnp.float32, batch=batch,
        image_size=image_size, seed=seed)
    tx = optax.adam(1e-3)

    def term(mode, s_fn, teacher_or_targets, x, key):
        if mode == "jm":
            return losses.jacobian_matching_loss(s_fn, teacher_or_targets, x)
        return losses.jvp_projection_loss(s_fn, teacher_or_targets, x, key=key)

    def teacher_step(mode):
        def loss_fn(params, t_params, x, y, key):
            def s_fn(z):
                return student.apply(params, z)

            def t_fn(z):
                return teacher.apply(t_params, z)

            logits = s_fn(x)
            loss = (optax.softmax_cross_entropy_with_integer_labels(logits, y)
                    + losses.distillation_loss(logits, t_fn(x), temperature=4.0)
                    + term(mode, s_fn, t_fn, x, key))
            return jnp.mean(loss)

        def step(params, opt_state, t_params, x, y, key):
            grads = jax.grad(loss_fn)(params, t_params, x, y, key)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        return jax.jit(step, donate_argnums=(0, 1)), (t_params, x, y, kp)

    def targets_step(mode):
        def loss_fn(params, targets, x, y):
            def s_fn(z):
                return student.apply(params, z)

            logits = s_fn(x)
            loss = (optax.softmax_cross_entropy_with_integer_labels(logits, y)
                    + losses.distillation_loss(logits, targets.logits, temperature=4.0)
                    + term(mode, s_fn, targets, x, None))
            return jnp.mean(loss)

        def step(params, opt_state, targets, x, y):
            grads = jax.grad(loss_fn)(params, targets, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        targets = compute_targets[mode](t_params, x)
        return jax.jit(step, donate_argnums=(0, 1)), (targets, x, y)

    def make_targets_fn(mode):
        options = {} if mode == "jm" else {"outputs": None, "projections": ("jvp",), "key": kp}
        return jax.jit(lambda t_params, x: losses.teacher_targets(
            lambda z: teacher.apply(t_params, z), x, **options))

    compute_targets = {mode: make_targets_fn(mode) for mode in MODES}
    steps = []
    for mode in MODES:
        for route, (fn, args) in (("teacher", teacher_step(mode)),
                                  ("targets", targets_step(mode))):
            state = [s_params, tx.init(s_params)]
            state[:] = jax.tree.map(jnp.copy, state)  # each step donates its own copy
            t0 = time.perf_counter()
            compiled = fn.lower(state[0], state[1], *args).compile()
            compile_s = time.perf_counter() - t0

            def run(compiled=compiled, state=state, args=args):
                state[:] = jax.block_until_ready(compiled(state[0], state[1], *args))

            steps.append(_harness.Step("jax", f"{mode}/{route}", run, compile_s=compile_s,
                                       **_harness.compiled_stats(compiled)))
    for mode in MODES:
        fn = compute_targets[mode]
        steps.append(_harness.Step("jax", f"{mode}/compute_targets",
                                   lambda fn=fn: jax.block_until_ready(fn(t_params, x))))
    return steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (8x8, batch 4, width 4)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--image-size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--width", type=int, default=32, help="student width (default 32)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per step")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between runs")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--silent", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.image_size, args.width = 4, 8, 4

    load_before = _uptime()
    steps = build(batch=args.batch, image_size=args.image_size, width=args.width)
    times = _harness.interleave(steps, rounds=args.rounds, warmup=args.warmup,
                                pause=args.pause)
    load_after = _uptime()
    flops = {s.mode: s.flops for s in steps}
    rows = []
    for mode in MODES:
        teacher_t = times[("jax", f"{mode}/teacher")]
        targets_t = times[("jax", f"{mode}/targets")]
        once_t = times[("jax", f"{mode}/compute_targets")]
        rows.append({"mode": mode,
                     "teacher_step_s": statistics.median(teacher_t),
                     "targets_step_s": statistics.median(targets_t),
                     "ratio_targets_over_teacher": _harness.paired_ratio(targets_t, teacher_t),
                     "compute_targets_s": statistics.median(once_t),
                     "flops_teacher_step": flops[f"{mode}/teacher"],
                     "flops_targets_step": flops[f"{mode}/targets"],
                     "times_s": {"teacher": teacher_t, "targets": targets_t,
                                 "compute_targets": once_t}})
    result = {"sizes": {"batch": args.batch, "image_size": args.image_size,
                        "width": args.width, "rounds": args.rounds},
              "uptime_before": load_before, "uptime_after": load_after, "rows": rows}
    if not args.silent:
        print(f"batch {args.batch}, {args.image_size}x{args.image_size}x3, student width "
              f"{args.width} (teacher x2), {args.rounds} interleaved rounds")
        print(f"before: {load_before}\nafter:  {load_after}")
        print("| step | with teacher (ms) | with targets (ms) | targets / teacher "
              "| teacher_targets once (ms) |")
        print("|---|---|---|---|---|")
        names = {"jm": "CE + KD + JM (top-1)", "jvp_k1": "CE + KD + JVP k=1"}
        for r in rows:
            print(f"| {names[r['mode']]} | {1e3 * r['teacher_step_s']:.1f} | "
                  f"{1e3 * r['targets_step_s']:.1f} | {r['ratio_targets_over_teacher']:.2f} | "
                  f"{1e3 * r['compute_targets_s']:.1f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
