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
    "noisy_n1": dict(kd=True, term="noisy", k=1),
    "noisy_n4": dict(kd=True, term="noisy", k=4),
}


# Student/teacher pairs. SmallCNN: width w student, width 2w teacher. VGG-4/VGG-9 at base
# width 32 (half the paper-scale 64, to keep the CPU run short). WRN-16-1 student of a
# WRN-16-2 teacher (an attention-transfer pair).
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


def build(spec: dict, num_classes: int, seed: int):
    """A zoo model from a spec (the one place that constructs zoo models)."""
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


def make_step(model: str, mode: str, *, batch: int, image_size: int, num_classes: int,
              specs: dict, mesh):
    """Lowers the jaxkd train step of ``mode`` on zoo pair ``model``: ``(lowered, finish)``."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxkd import training
    if mode not in MODES:
        raise ValueError(f"unknown zoo mode {mode!r}; choose from {list(MODES)}")
    student_spec, teacher_spec = specs[model]
    student = build(student_spec, num_classes, 0)
    teacher = build(teacher_spec, num_classes, 1)
    optimizer = optax.sgd(1e-3, momentum=0.9)
    state = training.init_train_state(student, optimizer, key=jax.random.key(0))
    kx, ky = jax.random.split(jax.random.key(1))
    data = {"image": jax.random.normal(kx, (batch, image_size, image_size, 3)),
            "label": jax.random.randint(ky, (batch,), 0, num_classes)}
    objective = objective_for(MODES[mode])
    step = training.make_train_step(objective, optimizer, mesh,
                                    teacher=teacher if objective.needs_teacher else None)
    if mesh is not None:
        state = jax.device_put(state, NamedSharding(mesh, P()))
        data = jax.device_put(data, NamedSharding(mesh, P(mesh.axis_names[0])))
    state = jax.tree.map(jnp.copy, state)
    # make_train_step exposes its jitted function and placed teacher variables (as
    # attributes today; as fields of a step object after issue 10 item 4).
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
