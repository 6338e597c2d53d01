"""The user-model cases of ``step_cost``: a flax.linen CNN trained as a user would write it.

Student: ``Conv(32, 3x3) - ReLU - pool 2x2 - Conv(64, 3x3) - ReLU - pool 2x2 - Dense(10)``
on 32x32x3 images; teacher: the same at twice the width (64, 128). The pool is
``nn.avg_pool`` (case ``user_avg``), ``nn.max_pool`` (``user_max``: ``lax.reduce_window``,
whose second derivative XLA:CPU runs slowly), or a 2x2 max written as reshape + max
(``user_maxr``: what to write instead; the zoo's ``max_pool_if_room`` does the same).

The step: the mode's objective (every mode so far: cross-entropy +
``distillation_loss(temperature=4)`` + the mode's term), ``jax.grad`` of the batch mean,
one Adam update, parameters and optimizer state donated. The batch, the teacher's
parameters and the probe key are jit arguments (the teacher is not closed over as
constants). The modes, one entry each in :data:`MODES` (CE + KD, plus):

* ``kd``: nothing more (the baseline of every ratio);
* ``jm``: ``jacobian_matching_loss(outputs="label")`` (exact, one output per example);
* ``jm_hand``: the same maths by hand (:func:`hand_jacobian_matching`): one ``jax.vjp`` per
  network with the ``[B, K]`` one-hot cotangent, normalise, squared distance;
* ``jvp_k1`` / ``vjp_k1``: ``jvp_projection_loss`` / ``vjp_projection_loss``, one probe;
* ``fd_k1``: ``finite_difference_loss``, one probe (central differences: forward passes
  only, a first-order parameter gradient);
* ``fd_fwd_k1``: the forward difference by hand (:func:`forward_difference`), one probe,
  reusing the objective's clean logits of both networks: what the other form would save;
* ``jm_all``: exact matching of all K outputs, ``outputs="all", normalize=False``
  (the ``||J_T - J_S||_F^2`` the projections estimate);
* ``jm_remat``: ``jm`` computed in ``REMAT_CHUNKS`` slices of the batch, the student
  rematerialised (``jacobian_matching_loss(remat_chunks=...)``);
* ``kd_bf16`` / ``jm_bf16``: ``kd`` / ``jm`` with both networks computing in bfloat16
  (``dtype=jnp.bfloat16``; parameters, logits, gradient normalisation and the loss
  reductions in float32);
* ``jm_targets``: ``jm``'s loss with the teacher's part computed ahead of training
  (``teacher_targets(outputs="label")``, untimed) and fed to the step, which then runs
  only the student: what a student sharing a data stream with others pays.

A new mode is one entry of :data:`MODES` (and, when its loss is not a library call, one
function); a mode whose step takes teacher targets computed ahead of training instead of
the teacher's parameters says how to compute them in ``Mode.teacher_input``.

With a mesh (one host device per core) the batch is sharded over the mesh's axis
(``NamedSharding``), everything else replicated; XLA partitions the step.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

from benchmarks import _harness

CASES = {"user_avg": "avg", "user_max": "max", "user_maxr": "reshape"}
# Slices of the batch for the remat row: 2 already brings exact JM near KD's peak memory
# (docs of jaxkd/losses/_remat.py) at a smaller time cost than more slices.
REMAT_CHUNKS = 2
# The library's floor of the gradient norm (jaxkd/losses/_jacobian.py, DEFAULT_EPS);
# tests/benchmarks checks that the two agree.
HAND_EPS = 1e-6
TEMPERATURE = 4.0


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


def hand_jacobian_matching(student_fn, teacher_fn, x, labels, eps: float = HAND_EPS):
    """Label-output Jacobian matching written directly: ``[B]`` losses.

    ``|| g_T / sqrt(|g_T|^2 + eps^2) - g_S / sqrt(|g_S|^2 + eps^2) ||^2`` with
    ``g = grad_x f_{y}(x)`` per example: one VJP per network with the one-hot cotangent
    (``[B, K]``, K the teacher's number of outputs).
    """
    import jax
    import jax.numpy as jnp

    t_out, t_vjp = jax.vjp(teacher_fn, x)
    _, s_vjp = jax.vjp(student_fn, x)
    c = jax.nn.one_hot(labels, t_out.shape[-1], dtype=t_out.dtype)
    (g_t,) = t_vjp(c)
    (g_s,) = s_vjp(c)
    g_t = jax.lax.stop_gradient(g_t).reshape(x.shape[0], -1)
    g_s = g_s.reshape(x.shape[0], -1)

    def normalise(g):
        return g / jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True) + eps**2)

    return jnp.sum(jnp.square(normalise(g_t) - normalise(g_s)), axis=-1)


# ----------------------------------------------------------------------------- the modes

@dataclasses.dataclass(frozen=True)
class Mode:
    """One loss mode of the user-model step: its objective and how the step feeds it.

    Attributes:
      objective: ``objective(student_fn, teacher, x, labels, key) -> [B]`` per-example
        losses; the step differentiates their batch mean in the student's parameters.
        ``student_fn`` / ``teacher_fn`` map ``[B, H, W, 3]`` images to ``[B, K]`` float32
        logits. ``teacher`` is ``teacher_fn`` itself, or with ``teacher_input`` what that
        returned. :func:`ce_kd` builds the usual CE + KD + term objective.
      teacher_input: ``None``: the compiled step takes the teacher's parameters and runs
        the teacher inside (every mode so far). Otherwise ``teacher_input(teacher_fn, x,
        labels, key) -> pytree of arrays``, run once when the step is built and never
        timed; the compiled step takes that pytree in place of the teacher's parameters
        (a student step fed teacher targets computed ahead of training).
      dtype: the networks' compute dtype, ``"float32"`` or ``"bfloat16"`` (parameters,
        logits and the losses stay float32).
      note: printed beside the row in the report.
    """
    objective: Callable
    teacher_input: Callable | None = None
    dtype: str = "float32"
    note: str = ""


def ce_kd(term: Callable | None = None) -> Callable:
    """The objective cross-entropy + ``distillation_loss(temperature=4)`` [+ ``term``].

    ``term(student_fn, teacher_fn, x, labels, key) -> [B]`` is the mode's extra loss.
    """
    def objective(student_fn, teacher_fn, x, labels, key):
        import optax

        from jaxkd import losses

        logits, t_logits = student_fn(x), teacher_fn(x)
        loss = (optax.softmax_cross_entropy_with_integer_labels(logits, labels)
                + losses.distillation_loss(logits, t_logits, temperature=TEMPERATURE))
        if term is not None:
            loss = loss + term(student_fn, teacher_fn, x, labels, key)
        return loss

    return objective


# The terms. jaxkd (and so JAX) is imported inside them: the command line and the plan
# import this module for its tables, and --help should not wait for JAX to load.
def _jm_label(s, t, x, y, key, **options):
    from jaxkd import losses
    return losses.jacobian_matching_loss(s, t, x, labels=y, outputs="label", **options)


def _jm_all_outputs(s, t, x, y, key):
    from jaxkd import losses
    return losses.jacobian_matching_loss(s, t, x, outputs="all", normalize=False)


def _jvp_one_probe(s, t, x, y, key):
    from jaxkd import losses
    return losses.jvp_projection_loss(s, t, x, key=key, num_probes=1)


def _vjp_one_probe(s, t, x, y, key):
    from jaxkd import losses
    return losses.vjp_projection_loss(s, t, x, key=key, num_probes=1)


def _fd_one_probe(s, t, x, y, key):
    from jaxkd import losses
    return losses.finite_difference_loss(s, t, x, key=key, num_probes=1)


def forward_difference(student_fn, teacher_fn, x, key, logits, t_logits):
    """``||((T - S)(x + h u) - (T - S)(x)) / h||^2`` per example, one Rademacher probe
    ``u`` and the library's float32 step, given the clean ``logits`` / ``t_logits``."""
    import jax
    import jax.numpy as jnp

    from jaxkd import losses
    from jaxkd.losses import _finite_difference as fd
    u = losses.sample_probes(key, x.shape, 1)[0]
    h = fd.example_steps(x, losses.DEFAULT_STEPS["float32"])
    xh = x + h.reshape((-1,) + (1,) * (x.ndim - 1)) * u
    q_t = jax.lax.stop_gradient(teacher_fn(xh) - t_logits)
    return jnp.sum(jnp.square((q_t - (student_fn(xh) - logits)) / h[:, None]), axis=-1)


def _ce_kd_forward_difference(s, t, x, y, key):
    """CE + KD + :func:`forward_difference` on the same clean passes."""
    import optax

    from jaxkd import losses
    logits, t_logits = s(x), t(x)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y)
            + losses.distillation_loss(logits, t_logits, temperature=TEMPERATURE)
            + forward_difference(s, t, x, key, logits, t_logits))


def _jm_by_hand(s, t, x, y, key):
    return hand_jacobian_matching(s, t, x, y)


def _ce_kd_jm_on_targets(s, targets, x, y, key):
    """``jm``'s CE + KD + label-output JM, the teacher given as its ``TeacherTargets``."""
    import optax

    from jaxkd import losses
    logits = s(x)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y)
            + losses.distillation_loss(logits, targets.logits, temperature=TEMPERATURE)
            + losses.jacobian_matching_loss(s, targets, x, labels=y, outputs="label"))


def _label_targets(teacher_fn, x, y, key):
    from jaxkd import losses
    return losses.teacher_targets(teacher_fn, x, labels=y, outputs="label")


# One entry per mode; ``--modes`` chooses from these names, in this order by default.
MODES: dict[str, Mode] = {
    "kd": Mode(ce_kd()),
    "jm": Mode(ce_kd(_jm_label)),
    "jm_hand": Mode(ce_kd(_jm_by_hand), note="hand-written: one jax.vjp per network"),
    "jvp_k1": Mode(ce_kd(_jvp_one_probe)),
    "vjp_k1": Mode(ce_kd(_vjp_one_probe)),
    "jm_all": Mode(ce_kd(_jm_all_outputs)),
    "fd_k1": Mode(ce_kd(_fd_one_probe)),
    "fd_fwd_k1": Mode(_ce_kd_forward_difference,
                      note="forward difference by hand, clean passes reused"),
    "jm_remat": Mode(ce_kd(functools.partial(_jm_label, remat_chunks=REMAT_CHUNKS)),
                     note=f"jacobian_matching_loss(remat_chunks={REMAT_CHUNKS})"),
    "kd_bf16": Mode(ce_kd(), dtype="bfloat16", note="networks in bfloat16"),
    "jm_bf16": Mode(ce_kd(_jm_label), dtype="bfloat16", note="networks in bfloat16"),
    "jm_targets": Mode(_ce_kd_jm_on_targets, teacher_input=_label_targets,
                       note="fed teacher_targets (computed ahead, untimed)"),
}


# ----------------------------------------------------------------------------- the step

def pair(pool: str, *, width: int, num_classes: int, dtype, batch: int, image_size: int,
         seed: int = 0):
    """The student (widths ``(w, 2w)``) and teacher (``(2w, 4w)``) CNNs with ``pool``,
    their parameters, a random batch ``x [batch, size, size, 3]``, labels ``y`` and a
    probe key: ``(student, teacher, s_params, t_params, x, y, key)``."""
    import jax

    student = cnn(pool, (width, 2 * width), num_classes, dtype)
    teacher = cnn(pool, (2 * width, 4 * width), num_classes, dtype)
    kx, ky, ks, kt, kp = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(kx, (batch, image_size, image_size, 3))
    y = jax.random.randint(ky, (batch,), 0, num_classes)
    return student, teacher, student.init(ks, x[:1]), teacher.init(kt, x[:1]), x, y, kp


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

    if case not in CASES:
        raise ValueError(f"unknown user-model case {case!r}; choose from {list(CASES)}")
    if mode not in MODES:
        raise ValueError(f"unknown user-model mode {mode!r}; choose from {list(MODES)}")
    spec = MODES[mode]
    student, teacher, params, t_params, x, y, kp = pair(
        CASES[case], width=width, num_classes=num_classes, dtype=jnp.dtype(spec.dtype),
        batch=batch, image_size=image_size, seed=seed)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def teacher_fn_of(t_params):
        return lambda z: teacher.apply(t_params, z)

    if spec.teacher_input is None:
        teacher_of = teacher_fn_of
    else:
        def teacher_of(targets):
            return targets

    def loss_fn(params, teacher_arg, x, y, key):
        def s_fn(z):
            return student.apply(params, z)

        return jnp.mean(spec.objective(s_fn, teacher_of(teacher_arg), x, y, key))

    def train_step(params, opt_state, teacher_arg, x, y, key):
        grads = jax.grad(loss_fn)(params, teacher_arg, x, y, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    if mesh is not None:
        rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(mesh.axis_names[0]))
        params, opt_state, t_params, kp = jax.device_put((params, opt_state, t_params, kp),
                                                         rep)
        x, y = jax.device_put((x, y), split)
    teacher_arg = t_params
    if spec.teacher_input is not None:  # once, outside the timed step
        teacher_arg = jax.block_until_ready(jax.jit(
            lambda tp, x, y, key: spec.teacher_input(teacher_fn_of(tp), x, y, key))(
                t_params, x, y, kp))
    state = [params, opt_state]
    jitted = jax.jit(train_step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    lowered = jitted.lower(params, opt_state, teacher_arg, x, y, kp)
    lower_s = time.perf_counter() - t0

    def finish(compiled, compile_s: float) -> _harness.Step:
        def run():
            state[:] = jax.block_until_ready(
                compiled(state[0], state[1], teacher_arg, x, y, kp))

        return _harness.Step("jax", mode, run, compile_s=lower_s + compile_s,
                             note=spec.note, **_harness.compiled_stats(compiled))

    return lowered, finish
