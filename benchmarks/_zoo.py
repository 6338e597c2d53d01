"""The zoo cases of ``step_cost``: jaxkd's own models through jaxkd's own train step.

Each step is ``jaxkd.training.make_train_step`` (student train-mode forward, an
``Objective`` of cross-entropy + Hinton KD at temperature 4 + the term under test, optax
SGD with momentum, state donated); the teacher's variables are an argument of the
compiled step. With a mesh the batch is sharded over its data axis.
"""

from __future__ import annotations

import time

from benchmarks import _harness

# name -> what the objective holds besides cross-entropy.
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
    "fd_k1": dict(kd=True, term="fd", k=1),
    "noisy_n1": dict(kd=True, term="noisy", k=1),
    "noisy_n4": dict(kd=True, term="noisy", k=4),
}


# Student/teacher pairs. SmallCNN: width w student, width 2w teacher. VGG-4/VGG-9 at base
# width 32 (half the paper-scale 64, to keep the CPU run short). WRN-16-1 student of a
# WRN-16-2 teacher (an attention-transfer pair).
def model_specs(vgg_width: int = 32, cnn_width: int = 32) -> dict[str, tuple[dict, dict]]:
    """``{pair: (student, teacher)}``, each ``{"name": ..., **sizes}`` of ``models.create``."""
    return {
        "cnn": (dict(name="small_cnn", width=cnn_width),
                dict(name="small_cnn", width=2 * cnn_width)),
        "vgg": (dict(name="vgg4", width=vgg_width), dict(name="vgg9", width=vgg_width)),
        "wrn": (dict(name="wrn", depth=16, widen_factor=1),
                dict(name="wrn", depth=16, widen_factor=2)),
    }


def describe(spec: dict) -> str:
    sizes = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
    return f"{spec['name']}({sizes})"


def build(spec: dict, num_classes: int, seed: int, image_size: int):
    """A zoo model from a spec, through ``jaxkd.models.create`` (RGB inputs)."""
    from flax import nnx

    from jaxkd import models
    sizes = {k: v for k, v in spec.items() if k != "name"}
    return models.create(spec["name"], input_shape=(image_size, image_size, 3),
                         num_classes=num_classes, rngs=nnx.Rngs(seed), **sizes)


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
    elif term == "fd":
        terms.append(training.finite_difference(1.0, num_probes=k))
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


def make_step(model: str, mode: str, *, batch: int, image_size: int, num_classes: int,
              specs: dict, mesh):
    """Lowers the jaxkd train step of ``mode`` on zoo pair ``model``: ``(lowered, finish)``."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxkd import data as jdata
    from jaxkd import training
    if mode not in MODES:
        raise ValueError(f"unknown zoo mode {mode!r}; choose from {list(MODES)}")
    student_spec, teacher_spec = specs[model]
    student = build(student_spec, num_classes, 0, image_size)
    teacher = build(teacher_spec, num_classes, 1, image_size)
    optimizer = optax.sgd(1e-3, momentum=0.9)
    state = training.init_train_state(student, optimizer, key=jax.random.key(0))
    kx, ky = jax.random.split(jax.random.key(1))
    data = {"image": jax.random.normal(kx, (batch, image_size, image_size, 3)),
            "label": jax.random.randint(ky, (batch,), 0, num_classes)}
    objective = objective_for(MODES[mode])
    # mesh=None would mean every device; the benchmark's budget says how many it has.
    mesh = training.data_mesh(1) if mesh is None else mesh
    step = training.make_train_step(objective, optimizer, mesh,
                                    teacher=teacher if objective.needs_teacher else None)
    state = jax.tree.map(jnp.copy, training.replicate(state, mesh))
    data = jdata.shard_batch(data, jdata.data_sharding(mesh))
    jitted, teacher_vars = step.jitted, step.teacher_vars
    t0 = time.perf_counter()
    lowered = jitted.lower(state, data, teacher_vars)
    lower_s = time.perf_counter() - t0
    holder = [state]

    def finish(compiled, compile_s: float) -> _harness.Step:
        def run():
            new_state, metrics = compiled(holder[0], data, teacher_vars)
            jax.block_until_ready((new_state, metrics))
            holder[0] = new_state

        return _harness.Step("jax", mode, run, compile_s=lower_s + compile_s,
                             **_harness.compiled_stats(compiled))

    return lowered, finish
