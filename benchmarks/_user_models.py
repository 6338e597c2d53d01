"""The user-model cases of ``step_cost``: a flax.linen CNN trained as a user would write it.

Student: ``Conv(32, 3x3) - ReLU - pool 2x2 - Conv(64, 3x3) - ReLU - pool 2x2 - Dense(10)``
on 32x32x3 images; teacher: the same at twice the width (64, 128). The pool is
``nn.avg_pool`` (case ``user_avg``), ``nn.max_pool`` (``user_max``: ``lax.reduce_window``,
whose second derivative XLA:CPU runs slowly), or a 2x2 max written as reshape + max
(``user_maxr``: what to write instead; the zoo's ``max_pool_if_room`` does the same).

The step: cross-entropy + ``distillation_loss(temperature=4)`` + the term of the mode,
``jax.grad`` of the batch mean, one Adam update, parameters and optimizer state donated.
The batch, the teacher's parameters and the probe key are jit arguments (the teacher is not
closed over as constants). Modes (every one CE + KD, plus):

* ``kd``: nothing more (the baseline of every ratio);
* ``jm``: ``jacobian_matching_loss(outputs="label")`` (exact, one output per example);
* ``jm_hand``: the same maths by hand (:func:`hand_jacobian_matching`): one ``jax.vjp`` per
  network with the ``[B, K]`` one-hot cotangent, normalise, squared distance;
* ``jvp_k1`` / ``vjp_k1``: ``jvp_projection_loss`` / ``vjp_projection_loss``, one probe;
* ``jm_all``: exact matching of all K outputs, ``outputs="all", normalize=False``
  (the ``||J_T - J_S||_F^2`` the projections estimate);
* ``jm_remat``: ``jm`` with the networks rematerialised in the Jacobian term (the
  library's keyword where it has one, else ``jax.checkpoint`` around each network);
* ``kd_bf16`` / ``jm_bf16``: ``kd`` / ``jm`` with both networks computing in bfloat16
  (``dtype=jnp.bfloat16``; parameters, logits, gradient normalisation and the loss
  reductions in float32).

With a mesh (one host device per core) the batch is sharded over its ``"batch"`` axis
(``NamedSharding``), everything else replicated; XLA partitions the step.
"""

from __future__ import annotations

import time

from benchmarks import _harness

CASES = {"user_avg": "avg", "user_max": "max", "user_maxr": "reshape"}
MODES = ("kd", "jm", "jm_hand", "jvp_k1", "vjp_k1", "jm_all", "jm_remat", "kd_bf16",
         "jm_bf16")
# Keyword names under which the Jacobian losses may offer rematerialisation.
# Slices of the batch for the remat row: 2 already brings exact JM near KD's peak memory
# (docs of jaxkd/losses/_remat.py) at a smaller time cost than more slices.
REMAT_CHUNKS = 2
# The library's floor of the gradient norm (jaxkd/losses/_jacobian.py, DEFAULT_EPS);
# tests/benchmarks checks that the two agree.
HAND_EPS = 1e-6


def cnn(pool: str, widths: tuple[int, int], num_classes: int, dtype):
    """The Linen CNN (one place to swap the model; see the module docstring)."""
    import flax.linen as nn
    import jax.numpy as jnp

    def pool2(x):
        if pool == "avg":
            return nn.avg_pool(x, (2, 2), strides=(2, 2))
        if pool == "max":
            return nn.max_pool(x, (2, 2), strides=(2, 2))
        b, h, w, c = x.shape  # reshape + max: same values, cheap second derivative
        x = x[:, : h // 2 * 2, : w // 2 * 2]
        return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for w in widths:
                x = pool2(nn.relu(nn.Conv(w, (3, 3), dtype=dtype)(x)))
            x = x.reshape(x.shape[0], -1)
            return nn.Dense(num_classes, dtype=dtype)(x).astype(jnp.float32)

    return CNN()


def hand_jacobian_matching(student_fn, teacher_fn, x, labels, num_classes: int,
                           eps: float = HAND_EPS):
    """Label-output Jacobian matching written directly: ``[B]`` losses.

    ``|| g_T / sqrt(|g_T|^2 + eps^2) - g_S / sqrt(|g_S|^2 + eps^2) ||^2`` with
    ``g = grad_x f_{y}(x)`` per example: one VJP per network with the one-hot cotangent.
    """
    import jax
    import jax.numpy as jnp

    t_out, t_vjp = jax.vjp(teacher_fn, x)
    _, s_vjp = jax.vjp(student_fn, x)
    c = jax.nn.one_hot(labels, num_classes, dtype=t_out.dtype)
    (g_t,) = t_vjp(c)
    (g_s,) = s_vjp(c)
    g_t = jax.lax.stop_gradient(g_t).reshape(x.shape[0], -1)
    g_s = g_s.reshape(x.shape[0], -1)

    def normalise(g):
        return g / jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True) + eps**2)

    return jnp.sum(jnp.square(normalise(g_t) - normalise(g_s)), axis=-1)


def remat_how() -> str:
    """How the ``jm_remat`` row rematerialises (printed in the results header)."""
    return f"jacobian_matching_loss(remat_chunks={REMAT_CHUNKS})"


def term_fn(mode: str, num_classes: int):
    """``term(student_fn, teacher_fn, x, labels, key) -> [B]`` added to CE + KD."""
    from jaxkd import losses

    if mode in ("kd", "kd_bf16"):
        return None
    if mode in ("jm", "jm_bf16"):
        return lambda s, t, x, y, key: losses.jacobian_matching_loss(
            s, t, x, labels=y, outputs="label")
    if mode == "jm_hand":
        return lambda s, t, x, y, key: hand_jacobian_matching(s, t, x, y, num_classes)
    if mode == "jvp_k1":
        return lambda s, t, x, y, key: losses.jvp_projection_loss(s, t, x, key=key,
                                                                   num_probes=1)
    if mode == "vjp_k1":
        return lambda s, t, x, y, key: losses.vjp_projection_loss(s, t, x, key=key,
                                                                   num_probes=1)
    if mode == "jm_all":
        return lambda s, t, x, y, key: losses.jacobian_matching_loss(
            s, t, x, outputs="all", normalize=False)
    if mode == "jm_remat":
        return lambda s, t, x, y, key: losses.jacobian_matching_loss(
            s, t, x, labels=y, outputs="label", remat_chunks=REMAT_CHUNKS)
    raise ValueError(f"unknown user-model mode {mode!r}; choose from {MODES}")


def make_step(case: str, mode: str, *, batch: int, image_size: int, num_classes: int,
              width: int, mesh, seed: int = 0):
    """Lowers the step of ``mode`` on ``case``; returns ``(lowered, finish)``.

    ``finish(compiled, compile_s) -> _harness.Step`` wraps the compiled executable with
    its own copy of the state (donated and replaced at every call).
    """
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxkd import losses

    if case not in CASES:
        raise ValueError(f"unknown user-model case {case!r}; choose from {list(CASES)}")
    dtype = jnp.bfloat16 if mode.endswith("_bf16") else jnp.float32
    student = cnn(CASES[case], (width, 2 * width), num_classes, dtype)
    teacher = cnn(CASES[case], (2 * width, 4 * width), num_classes, dtype)
    kx, ky, ks, kt, kp = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(kx, (batch, image_size, image_size, 3))
    y = jax.random.randint(ky, (batch,), 0, num_classes)
    params = student.init(ks, x[:1])
    t_params = teacher.init(kt, x[:1])
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    term = term_fn(mode, num_classes)

    def loss_fn(params, t_params, x, y, key):
        def s_fn(z):
            return student.apply(params, z)

        def t_fn(z):
            return teacher.apply(t_params, z)

        logits, t_logits = s_fn(x), t_fn(x)
        loss = (optax.softmax_cross_entropy_with_integer_labels(logits, y)
                + losses.distillation_loss(logits, t_logits, temperature=4.0))
        if term is not None:
            loss = loss + term(s_fn, t_fn, x, y, key)
        return jnp.mean(loss)

    def train_step(params, opt_state, t_params, x, y, key):
        grads = jax.grad(loss_fn)(params, t_params, x, y, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    if mesh is not None:
        rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(mesh.axis_names[0]))
        params, opt_state, t_params, kp = jax.device_put((params, opt_state, t_params, kp),
                                                         rep)
        x, y = jax.device_put((x, y), split)
    state = [params, opt_state]
    jitted = jax.jit(train_step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    lowered = jitted.lower(params, opt_state, t_params, x, y, kp)
    lower_s = time.perf_counter() - t0

    def finish(compiled, compile_s: float) -> _harness.Step:
        def run():
            state[:] = jax.block_until_ready(compiled(state[0], state[1], t_params, x, y, kp))

        note = {"jm_remat": remat_how(),
                "kd_bf16": "networks in bfloat16", "jm_bf16": "networks in bfloat16",
                "jm_hand": "hand-written: one jax.vjp per network"}.get(mode, "")
        return _harness.Step("jax", mode, run, compile_s=lower_s + compile_s, note=note,
                             **_harness.compiled_stats(compiled))

    return lowered, finish
