"""The library's Jacobian-matching step against the same step written by hand, quickly.

``python -m benchmarks.user_model [ROUNDS]`` (default 30) builds a user's own Linen CNN
and training step three times: with the library's ``distillation_loss`` +
``jacobian_matching_loss(outputs="label")`` (``library``), with both losses written by hand
(``hand``), and with KD alone (``kd``); it times them round-robin in one process and prints
the medians, the library/hand ratio (median of the per-round ratios, and ratio of the
medians) and JM/KD. It is the quick check of "the library costs what the maths costs";
``python -m benchmarks.step_cost`` is the full benchmark (budgets, PyTorch, the zoo).

The setting: conv32 3x3 + relu + 2x2 average pool, conv64 3x3 + relu + 2x2 average pool,
dense 10 (teacher: the same network, other weights); 32x32x3 inputs, batch 64, Adam;
cross-entropy + KD (temperature 4) + Jacobian matching; data and teacher passed as jit
arguments.

:func:`hand_written_jacobian_matching` is that maths by hand: one ``jax.vjp`` per network
with the ``[B, K]`` one-hot cotangent, normalise, squared distance. :func:`make_steps`
builds the three steps on the same model; :func:`peak_bytes` gives XLA's peak memory of a
step (e.g. ``make_steps(remat_chunks=2)`` for the library's rematerialised term).
"""

from __future__ import annotations

import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxkd import losses

BATCH, IMAGE, CLASSES = 64, (32, 32, 3), 10
TEMPERATURE = 4.0


class UserCNN(nn.Module):
    """What a user writes: two conv + relu + average-pool stages and a dense head."""
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3), dtype=self.dtype)(x)), (2, 2), (2, 2))
        x = nn.avg_pool(nn.relu(nn.Conv(64, (3, 3), dtype=self.dtype)(x)), (2, 2), (2, 2))
        return nn.Dense(CLASSES, dtype=self.dtype)(x.reshape(x.shape[0], -1))


def hand_written_jacobian_matching(student_fn, teacher_fn, x, labels, eps=1e-6):
    """``||g_T/||g_T|| - g_S/||g_S|| ||^2`` of the label output: one VJP per network."""
    t_out, t_vjp = jax.vjp(teacher_fn, x)
    _, s_vjp = jax.vjp(student_fn, x)
    onehot = jax.nn.one_hot(labels, t_out.shape[-1], dtype=t_out.dtype)
    (g_t,) = t_vjp(onehot)
    (g_s,) = s_vjp(onehot)
    g_t = jax.lax.stop_gradient(g_t).reshape(x.shape[0], -1)
    g_s = g_s.reshape(x.shape[0], -1)

    def normalise(g):
        return g * jax.lax.rsqrt(jnp.sum(jnp.square(g), -1, keepdims=True) + eps**2)

    return jnp.sum(jnp.square(normalise(g_t) - normalise(g_s)), -1)


def hand_written_distillation(s, t, temperature):
    log_p_t = jax.nn.log_softmax(jax.lax.stop_gradient(t) / temperature, -1)
    log_p_s = jax.nn.log_softmax(s / temperature, -1)
    return temperature**2 * jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), -1)


def make_steps(jm_weight=1.0, seed=0, dtype=None, *, batch_size=BATCH, image_shape=IMAGE,
               **jm_options):
    """``(steps, state, batch)``: jitted steps ``{"library", "hand", "kd"}``, each
    ``(params, opt_state, teacher_params, x, y) -> (params, opt_state, loss)``.

    ``jm_options`` go to :func:`jacobian_matching_loss` in the library step (e.g.
    ``remat_chunks=2``); ``dtype`` is the networks' compute dtype (``jnp.bfloat16``);
    ``batch_size`` and ``image_shape`` (``(H, W, C)``) size the fixed batch.
    """
    model = UserCNN(dtype=dtype)
    k_s, k_t, k_x = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k_x, (batch_size,) + tuple(image_shape), jnp.float32)
    y = jnp.arange(batch_size, dtype=jnp.int32) % CLASSES
    params = model.init(k_s, x)
    teacher_params = model.init(k_t, x)
    optimizer = optax.adam(1e-3)

    def objective(kind):
        def loss_fn(params, teacher_params, x, y):
            def student_fn(z):
                return model.apply(params, z)

            def teacher_fn(z):
                return model.apply(teacher_params, z)

            s, t = student_fn(x), teacher_fn(x)
            ce = optax.softmax_cross_entropy_with_integer_labels(s.astype(jnp.float32), y)
            if kind == "hand":
                kd = hand_written_distillation(s.astype(jnp.float32), t.astype(jnp.float32),
                                               TEMPERATURE)
                jm = hand_written_jacobian_matching(student_fn, teacher_fn, x, y)
            else:
                kd = losses.distillation_loss(s, t, temperature=TEMPERATURE)
                jm = 0.0 if kind == "kd" else losses.jacobian_matching_loss(
                    student_fn, teacher_fn, x, labels=y, outputs="label", **jm_options)
            return jnp.mean(ce + kd + jm_weight * jm)
        return loss_fn

    def step_of(kind):
        loss_fn = objective(kind)

        @jax.jit
        def step(params, opt_state, teacher_params, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, teacher_params, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss
        return step

    steps = {kind: step_of(kind) for kind in ("library", "hand", "kd")}
    state = (params, optimizer.init(params), teacher_params)
    return steps, state, (x, y)


def time_interleaved(steps, state, batch, repeats=30):
    """Seconds per call of each step, run in turn (round-robin) ``repeats`` times:
    ``{name: [seconds of round 0, 1, ...]}``."""
    params, opt_state, teacher_params = state
    for step in steps.values():  # compile and warm up
        jax.block_until_ready(step(params, opt_state, teacher_params, *batch))
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step(params, opt_state, teacher_params, *batch))
            times[name].append(time.perf_counter() - start)
    return times


def peak_bytes(step, state, batch):
    """XLA's buffer-assignment peak of ``step``: argument + output + temp - alias bytes."""
    mem = step.lower(*state, *batch).compile().memory_analysis()
    return (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)


def main(argv=None) -> dict:
    """Times the three steps ``argv[0]`` rounds (default 30), prints and returns the medians."""
    argv = sys.argv[1:] if argv is None else argv
    repeats = int(argv[0]) if argv else 30
    steps, state, batch = make_steps()
    times = {k: np.asarray(v) for k, v in time_interleaved(steps, state, batch, repeats).items()}
    per_round = float(np.median(times["library"] / times["hand"]))
    of_medians = float(np.median(times["library"]) / np.median(times["hand"]))
    jm_over_kd = float(np.median(times["library"] / times["kd"]))
    print({k: f"{np.median(v) * 1e3:.1f} ms" for k, v in times.items()},
          f"library/hand: median ratio per round {per_round:.3f}, ratio of medians "
          f"{of_medians:.3f}; JM/KD {jm_over_kd:.2f}")
    return {"median_s": {k: float(np.median(v)) for k, v in times.items()},
            "library_over_hand": per_round, "jm_over_kd": jm_over_kd}


if __name__ == "__main__":
    main()
