"""The jitted train/eval steps: 8-device sharding equivalence, frozen teacher, objective terms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd import data, losses, models, training
from tests.training import _helpers as h

OBJECTIVES = {
    "kd": lambda: training.Objective(training.cross_entropy(),
                                     training.distillation(temperature=2.0)),
    "jacobian": lambda: training.Objective(training.cross_entropy(),
                                           training.distillation(temperature=2.0),
                                           training.jacobian_matching(1.0)),
}
NUM_STEPS = 2


def _run(objective, mesh, teacher, batches):
    optimizer = optax.sgd(0.05, momentum=0.9)
    state = training.init_train_state(h.student(), optimizer, key=jax.random.key(0))
    state = jax.device_put(state, training.replicated(mesh))
    step = training.make_train_step(objective, optimizer, mesh, teacher=teacher)
    metrics = []
    for batch in batches:
        state, m = step(state, data.shard_batch(batch, data.data_sharding(mesh)))
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics, step


@pytest.fixture(scope="module", params=sorted(OBJECTIVES))
def runs(request):
    """The same steps on one device and on 8 (a default, Explicit-axes jax.make_mesh)."""
    objective = OBJECTIVES[request.param]()
    teacher = h.teacher()
    teacher_before = jax.device_get(models.split(teacher))
    x, y = h.images(h.BATCH * NUM_STEPS)
    batches = [{"image": x[i::NUM_STEPS], "label": y[i::NUM_STEPS]} for i in range(NUM_STEPS)]
    one = _run(objective, training.data_mesh(1), teacher, batches)
    eight = _run(objective, jax.make_mesh((8,), ("data",)), teacher, batches)
    return request.param, one, eight, teacher, teacher_before


def test_sharded_step_matches_single_device(runs):
    """8-way data parallel == 1 device up to float32 reduction order.

    The two programs sum the batch in a different order (per-device partial sums, then an
    all-reduce), so parameters differ by float32 round-off amplified by two momentum-SGD
    steps: observed max |diff| ~1e-7 relative; the bound leaves a 100x margin.
    """
    name, (state1, metrics1, _), (state8, metrics8, _), _, _ = runs
    errors = [float(np.max(np.abs(a - b) / (np.abs(b) + 1e-3)))
              for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params))]
    print(f"\n[{name}] max relative param difference, 8 devices vs 1: {max(errors):.2e}")
    for part in ("params", "rest", "opt_state"):
        assert jax.tree.structure(getattr(state8, part)) == jax.tree.structure(
            getattr(state1, part)), part
        for a, b in zip(jax.tree.leaves(getattr(state8, part)),
                        jax.tree.leaves(getattr(state1, part))):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=part)
    for m8, m1 in zip(metrics8, metrics1):
        assert m8.keys() == m1.keys()
        for k in m1:
            np.testing.assert_allclose(m8[k], m1[k], rtol=2e-5, atol=2e-6, err_msg=k)
    assert int(state8.step) == NUM_STEPS


def test_sharded_step_keeps_teacher_bit_identical(runs):
    """The teacher is frozen by structure: after training steps its arrays are unchanged."""
    _, _, (_, _, step), teacher, before = runs
    after_module = jax.device_get(models.split(teacher))
    after_step = jax.device_get(step.teacher_vars)
    assert jax.tree.structure(after_module) == jax.tree.structure(before)
    assert jax.tree.structure(after_step) == jax.tree.structure((before.params, before.rest))
    for a, b in zip(jax.tree.leaves(after_module), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(after_step), jax.tree.leaves((before.params, before.rest))):
        np.testing.assert_array_equal(a, b)


def test_sharded_step_updates_student_batch_stats(runs):
    """The 8-device step writes the student's new BatchNorm statistics back to the state."""
    _, _, (state8, _, _), _, _ = runs
    init = models.split(h.student())
    assert jax.tree.leaves(init.rest)
    assert jax.tree.structure(state8.rest) == jax.tree.structure(init.rest)
    assert not all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(state8.rest), jax.tree.leaves(init.rest)))


def test_every_term_reported_and_weighted():
    """One step with every term: each is logged on its own and the total is their sum."""
    terms = [training.cross_entropy(), training.distillation(0.5, temperature=2.0),
             training.logit_matching(0.1), training.jacobian_matching(1.0, outputs="top_k", k=2),
             training.jacobian_matching(1.0, outputs="label", name="jacobian_label"),
             training.vjp_projection(0.1, num_probes=2), training.jvp_projection(0.1),
             training.noisy_distillation(0.1, sigma=0.1),
             training.attention_transfer(1.0, layers=["block1", "block2"]),
             training.attention_jacobian(1.0, layer="block2")]
    objective = training.Objective(*terms)
    optimizer = optax.sgd(0.0)
    state = training.init_train_state(h.student(), optimizer, key=jax.random.key(0))
    teacher = h.teacher()
    x, y = h.images(8)
    mesh = training.data_mesh(1)
    step = training.make_train_step(objective, optimizer, mesh, teacher=teacher)
    _, metrics = step(state, data.shard_batch({"image": x, "label": y},
                                              data.data_sharding(mesh)))
    metrics = jax.device_get(metrics)
    for term in terms:
        assert np.isfinite(metrics[f"loss/{term.name}"]), term.name
    total = sum(t.weight * metrics[f"loss/{t.name}"] for t in terms)
    np.testing.assert_allclose(metrics["loss"], total, rtol=1e-5)
    # The KD term is the loss library's value on the train-mode student logits.
    s_logits = models.apply(*models.split(h.student()), jnp.asarray(x), train=True)[0]
    t_logits = models.logits_fn(*models.split(teacher))(jnp.asarray(x))
    expected = jnp.mean(losses.distillation_loss(s_logits, t_logits, temperature=2.0))
    np.testing.assert_allclose(metrics["loss/kd"], expected, rtol=1e-5)


def test_objective_validation():
    with pytest.raises(ValueError, match="unique"):
        training.Objective(training.cross_entropy(), training.cross_entropy())
    with pytest.raises(ValueError, match="teacher"):
        training.make_train_step(
            training.Objective(training.noisy_distillation(sigma=0.1)), optax.sgd(0.1))
    # An objective that can be fed teacher targets builds without the teacher; a batch
    # without targets is then refused at its first step.
    mesh, optimizer = training.data_mesh(1), optax.sgd(0.1)
    step = training.make_train_step(training.Objective(training.distillation()), optimizer,
                                    mesh)
    state = jax.device_put(training.init_train_state(h.student(), optimizer,
                                                     key=jax.random.key(0)),
                           training.replicated(mesh))
    x, y = h.images(h.BATCH)
    with pytest.raises(ValueError, match=r"no teacher \(nor teacher targets\)"):
        step(state, data.shard_batch({"image": x, "label": y}, data.data_sharding(mesh)))
    with pytest.raises(ValueError, match="outputs"):
        training.jacobian_matching(outputs="bogus")


def test_eval_step_sharded_with_padding():
    """evaluate() on 8 devices pads 13 examples to 16 and masks the padding out."""
    mesh = jax.make_mesh((8,), ("data",))
    state = training.init_train_state(h.student(), optax.sgd(0.1), key=jax.random.key(0))
    state = jax.device_put(state, training.replicated(mesh))
    x, y = h.images(13, seed=3)
    result = training.evaluate(training.make_eval_step(mesh), state,
                               [{"image": x, "label": y}], mesh)
    logits = models.logits_fn(*models.split(h.student()))(jnp.asarray(x))
    np.testing.assert_allclose(result["accuracy"],
                               np.mean(np.argmax(logits, -1) == y), rtol=1e-6)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y))
    np.testing.assert_allclose(result["loss"], np.mean(ce), rtol=1e-5)


def test_train_step_is_a_typed_object_and_mesh_none_means_all_devices():
    """make_train_step returns a TrainStep holding its pieces; mesh=None is every device
    in make_train_step, make_eval_step and train alike."""
    objective = OBJECTIVES["kd"]()
    optimizer = optax.sgd(0.1)
    teacher = h.teacher()
    step = training.make_train_step(objective, optimizer, teacher=teacher)
    assert isinstance(step, training.TrainStep)
    assert step.objective is objective and step.optimizer is optimizer
    assert step.mesh == training.data_mesh() and step.mesh.size == jax.device_count() == 8
    assert jax.tree.structure(step.teacher_vars) == jax.tree.structure(
        tuple(models.split(teacher)[1:]))
    for leaf in jax.tree.leaves(step.teacher_vars):
        assert leaf.sharding.is_equivalent_to(training.replicated(step.mesh), leaf.ndim)
    # The eval step compiled for mesh=None is the one for the all-device mesh.
    assert training.make_eval_step() is training.make_eval_step(training.data_mesh())


def test_train_takes_a_built_step_and_checks_it(tmp_path):
    """train(train_step=...) uses that step (one compile shared on purpose) and refuses a
    step built from other objects, a second teacher or another mesh."""
    objective = training.Objective(training.cross_entropy())
    optimizer = optax.sgd(0.05)
    mesh = training.data_mesh(1)
    step = training.make_train_step(objective, optimizer, mesh)
    x, y = h.images(32)
    kw = dict(workdir=tmp_path / "a", num_steps=2, progress=False, tensorboard=False)
    with pytest.raises(ValueError, match="another objective or optimizer"):
        training.train(h.student(), objective, optax.sgd(0.05), h.ArrayIterator(x, y),
                       train_step=step, **kw)
    with pytest.raises(ValueError, match="pass the teacher to make_train_step"):
        training.train(h.student(), objective, optimizer, h.ArrayIterator(x, y),
                       train_step=step, teacher=h.teacher(), **kw)
    with pytest.raises(ValueError, match="differs from train_step's mesh"):
        training.train(h.student(), objective, optimizer, h.ArrayIterator(x, y),
                       train_step=step, mesh=training.data_mesh(2), **kw)
    calls = []

    class Counting(training.TrainStep):
        def __call__(self, state, batch):
            calls.append(batch["label"].shape)
            return super().__call__(state, batch)

    counting = Counting(step.jitted, step.teacher_vars, objective, optimizer, mesh)
    result = training.train(h.student(), objective, optimizer, h.ArrayIterator(x, y),
                            train_step=counting, **kw)
    assert calls == [(h.BATCH,), (h.BATCH,)] and int(result.state.step) == 2
    assert result.state.params  # trained on the step's one-device mesh
    for leaf in jax.tree.leaves(result.state.params):
        assert leaf.sharding.device_set == set(mesh.devices.flat)
