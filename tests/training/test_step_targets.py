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
    targets = training.make_targets_step(teacher, mesh, **objective.targets_options())(batch)
    fed = {**batch, training.TARGETS_KEY: targets}
    assert (targets.gradients is None) == (name == "ce+kd")

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
    assert t.Objective(t.distillation(), t.vjp_projection()).targets_options() is None
    assert t.Objective(t.jacobian_matching(), t.jacobian_matching(outputs="all", name="b")
                       ).targets_options() is None


def test_targets_the_objective_cannot_use_are_refused():
    mesh, optimizer = training.data_mesh(1), optax.sgd(0.1)
    teacher = h.teacher()
    x, y = h.images(h.BATCH)
    batch = data.shard_batch({"image": x, "label": y}, data.data_sharding(mesh))
    state = jax.device_put(training.init_train_state(h.student(), optimizer,
                                                     key=jax.random.key(0)),
                           training.replicated(mesh))
    vjp = training.Objective(training.distillation(), training.vjp_projection())
    with pytest.raises(ValueError, match="teacher is None"):
        training.make_train_step(vjp, optimizer, mesh)
    logits_only = training.make_targets_step(teacher, mesh)(batch)
    step = training.make_train_step(vjp, optimizer, mesh, teacher=teacher)
    with pytest.raises(ValueError, match=r"cannot be fed teacher targets.*\['vjp'\]"):
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
