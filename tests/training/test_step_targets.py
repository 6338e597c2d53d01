"""A train step fed the teacher's precomputed targets: same step, no teacher pass."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd import data, losses, training
from tests.training import _helpers as h

OBJECTIVES = {
    "ce+kd": lambda: training.Objective(training.cross_entropy(),
                                        training.distillation(temperature=2.0)),
    "ce+logits+jm": lambda: training.Objective(training.cross_entropy(),
                                               training.logit_matching(),
                                               training.jacobian_matching(1.0)),
    # Projection terms read probes drawn from their own key: targets drawn with the step's
    # key at the term's position give the very probes, hence the same step.
    "kd+vjp+ce": lambda: training.Objective(training.distillation(temperature=2.0),
                                            training.vjp_projection(0.5),
                                            training.cross_entropy()),
    "ce+jvp": lambda: training.Objective(training.cross_entropy(),
                                         training.jvp_projection(0.5, num_probes=2)),
}


def _flops(step, state, batch) -> float:
    cost = step.jitted.lower(state, batch, step.teacher_vars).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_step_fed_targets_equals_step_running_the_teacher_with_fewer_flops(name):
    objective, mesh = OBJECTIVES[name](), training.data_mesh(1)
    teacher, optimizer = h.teacher(), optax.sgd(0.05, momentum=0.9)
    state = training.init_train_state(h.student(), optimizer, key=jax.random.key(0))
    state = jax.device_put(state, training.replicated(mesh))
    step = training.make_train_step(objective, optimizer, mesh, teacher=teacher)
    x, y = h.images(h.BATCH)
    batch = data.shard_batch({"image": x, "label": y}, data.data_sharding(mesh))
    options = objective.targets_options()
    # The step's key: fold_in(state.key, state.step), state.step = 0 here.
    key = jax.random.fold_in(state.key, 0) if options.get("projections") else None
    targets = training.make_targets_step(teacher, mesh, **options)(batch, key)
    fed = {**batch, training.TARGETS_KEY: targets}
    assert (targets.gradients is None) == (name != "ce+logits+jm")

    def copy(s):  # the step donates its state
        return jax.tree.map(jnp.copy, s)
    ran, ran_m = jax.device_get(step(copy(state), batch))
    got, got_m = jax.device_get(step(copy(state), fed))
    assert ran_m.keys() == got_m.keys()
    for k in ran_m:
        np.testing.assert_allclose(got_m[k], ran_m[k], rtol=2e-5, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(ran.params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    assert ran_m["loss"] > 0 and float(optax.tree.norm(
        jax.tree.map(lambda a, b: a - b, ran.params, jax.device_get(state.params)))) > 0
    assert _flops(step, state, fed) < 0.8 * _flops(step, state, batch)


def test_train_fed_targets_needs_no_teacher_and_matches_the_teacher_run(tmp_path):
    """train() places the targets with the batch; the objective trains without teacher."""
    objective, mesh = OBJECTIVES["ce+logits+jm"](), training.data_mesh(1)
    teacher, optimizer = h.teacher(), optax.sgd(0.05)
    x, y = h.images(2 * h.BATCH)
    to_targets = training.make_targets_step(teacher, mesh, **objective.targets_options())

    class WithTargets(h.ArrayIterator):
        def __next__(self):
            batch = super().__next__()
            placed = data.shard_batch(batch, data.data_sharding(mesh))
            return {**batch, "teacher_targets": jax.device_get(to_targets(placed))}

    common = dict(num_steps=3, mesh=mesh, progress=False, tensorboard=False)
    ran = training.train(h.student(), objective, optimizer, h.ArrayIterator(x, y),
                         teacher=teacher, workdir=tmp_path / "ran", **common)
    fed = training.train(h.student(), objective, optimizer, WithTargets(x, y),
                         workdir=tmp_path / "fed", **common)
    np.testing.assert_allclose(fed.train_metrics["loss"], ran.train_metrics["loss"],
                               rtol=2e-5)
    for a, b in zip(jax.tree.leaves(fed.state.params), jax.tree.leaves(ran.state.params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_targets_options_say_which_targets_serve_every_term():
    t = training
    assert t.Objective(t.cross_entropy()).targets_options() is None
    assert t.Objective(t.cross_entropy(), t.distillation()).targets_options() == {
        "outputs": None, "k": 1}
    assert t.Objective(t.logit_matching(), t.jacobian_matching(outputs="top_k", k=2)
                       ).targets_options() == {"outputs": "top_k", "k": 2}
    assert t.Objective(t.distillation(), t.vjp_projection(), t.jvp_projection()
                       ).targets_options() is None  # two positions: two keys
    assert t.Objective(t.distillation(), t.jacobian_matching(), t.vjp_projection(),
                       ).targets_options() == {
        "outputs": "teacher_top1", "k": 1, "projections": ("vjp",), "num_probes": 1,
        "distribution": "rademacher", "projection_term": 2}
    assert t.Objective(t.jacobian_matching(), t.jacobian_matching(outputs="all", name="b")
                       ).targets_options() is None
    assert t.Objective(t.distillation(), t.noisy_distillation(sigma=0.1)
                       ).targets_options() is None


def test_targets_drawn_with_another_key_give_nan_not_other_probes():
    """The train step cannot compare traced keys before it runs: an example whose probes
    come from another key gets NaN, which train()'s non-finite guard reports."""
    objective, mesh = OBJECTIVES["kd+vjp+ce"](), training.data_mesh(1)
    optimizer = optax.sgd(0.05)
    state = jax.device_put(training.init_train_state(h.student(), optimizer,
                                                     key=jax.random.key(0)),
                           training.replicated(mesh))
    teacher = h.teacher()
    x, y = h.images(h.BATCH)
    batch = data.shard_batch({"image": x, "label": y}, data.data_sharding(mesh))
    to_targets = training.make_targets_step(teacher, mesh, **objective.targets_options())
    step = training.make_train_step(objective, optimizer, mesh)
    wrong = to_targets(batch, jax.random.fold_in(state.key, 1))  # step 1's, fed at step 0
    _, metrics = step(jax.tree.map(jnp.copy, state), {**batch, "teacher_targets": wrong})
    assert np.isnan(float(metrics["loss/vjp"])) and np.isfinite(float(metrics["loss/kd"]))
    with pytest.raises(ValueError, match="`key` is required with projections"):
        to_targets(batch)
    with pytest.raises(ValueError, match="needs \\('vjp',\\) with num_probes=1"):
        step(state, {**batch, "teacher_targets": training.make_targets_step(teacher, mesh)(
            batch)})


def test_targets_the_objective_cannot_use_are_refused():
    mesh, optimizer = training.data_mesh(1), optax.sgd(0.1)
    teacher = h.teacher()
    x, y = h.images(h.BATCH)
    batch = data.shard_batch({"image": x, "label": y}, data.data_sharding(mesh))
    state = jax.device_put(training.init_train_state(h.student(), optimizer,
                                                     key=jax.random.key(0)),
                           training.replicated(mesh))
    noisy = training.Objective(training.distillation(),
                               training.noisy_distillation(sigma=0.1))
    with pytest.raises(ValueError, match="teacher is None"):
        training.make_train_step(noisy, optimizer, mesh)
    logits_only = training.make_targets_step(teacher, mesh)(batch)
    step = training.make_train_step(noisy, optimizer, mesh, teacher=teacher)
    with pytest.raises(ValueError, match=r"cannot be fed teacher targets.*\['noisy_kd'\]"):
        step(state, {**batch, "teacher_targets": logits_only})
    jm = training.Objective(training.jacobian_matching())
    step = training.make_train_step(jm, optimizer, mesh, teacher=teacher)
    with pytest.raises(ValueError, match="outputs=None.*needs outputs='teacher_top1'"):
        step(state, {**batch, "teacher_targets": logits_only})
    with pytest.raises(ValueError, match="must be a jaxkd.losses.TeacherTargets"):
        step(state, {**batch, "teacher_targets": {"logits": batch["image"]}})
    with pytest.raises(ValueError, match="needs a teacher"):
        training.make_targets_step(None, mesh)


def test_train_refuses_targets_of_another_batch_size(tmp_path):
    objective, mesh = OBJECTIVES["ce+kd"](), training.data_mesh(1)
    x, y = h.images(h.BATCH)
    logits = np.zeros((h.BATCH // 2, h.NUM_CLASSES), np.float32)

    def batches():
        while True:
            yield {"image": x, "label": y, "teacher_targets": losses.TeacherTargets(logits)}
    with pytest.raises(ValueError, match=r"teacher targets of \[8\] rows for 16 labels"):
        training.train(h.student(), objective, optax.sgd(0.1), batches(), num_steps=1,
                       mesh=mesh, workdir=tmp_path, progress=False, tensorboard=False)
