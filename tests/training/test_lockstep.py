"""Lockstep students: each member is its sequential run, failed members are frozen, a
killed group resumes exactly, and a weight search compiles once."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxkd import models, training
from jaxkd.training import _lockstep
from tests.training import _helpers as h

MESH = training.data_mesh(1)
STEPS = 3
# The learning rate is a hyperparameter leaf of the state, so members may differ in it.
OPTIMIZER = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)
SEEDS = (0, 1, 2)
RATES = (0.05, 0.1, 0.02)
WEIGHTS = (0.5, 2.0, 1.0)  # the teacher term's weight, per member
U = 2.0 ** -24  # float32 unit round-off


def _mlp(seed):
    return models.MLP(64, h.NUM_CLASSES, hidden=(16,), rngs=nnx.Rngs(seed))


def _cnn(seed):  # conv + BatchNorm
    return models.vgg4(1, h.NUM_CLASSES, width=2, rngs=nnx.Rngs(seed))


def _objective(weight=1.0, term=training.logit_matching):
    return training.Objective(training.cross_entropy(), term(weight))


def _batches(m, steps=STEPS, seed=0):
    """``steps`` batches ``[M, B, 8, 8, 1]``: each member its own examples."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps, m, h.BATCH, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, h.NUM_CLASSES, (steps, m, h.BATCH)).astype(np.int32)
    return [{"image": x[t], "label": y[t]} for t in range(steps)]


def _tolerance(params, steps):
    """Relative round-off bound of a trajectory.

    vmap changes a dot product's (or a convolution's) summation order only; two orders of
    a length-``n`` float32 sum differ by at most ``2 n u`` relative to ``sum |x_j y_j|``
    (the standard ``gamma_n`` bound, twice). A step of small-learning-rate SGD is
    nearly an isometry of the parameters, so ``steps`` steps add such errors at most
    ``steps`` times; ``n`` is the largest fan-in of the network (its longest sum).
    """
    fan_in = max(math.prod(p.shape[:-1]) for p in jax.tree.leaves(params) if p.ndim >= 2)
    return 2 * fan_in * U * steps


def _lockstep_run(make, objective, m, batches, teacher, **kwargs):
    state = training.init_lockstep_state(
        [make(s) for s in SEEDS[:m]], objective, OPTIMIZER,
        keys=[jax.random.key(s) for s in SEEDS[:m]],
        weights={"logits": WEIGHTS[:m]}, learning_rates=RATES[:m], **kwargs)
    state = training.replicate(state, MESH)  # placed as the step's output: one compile
    step = training.make_lockstep_step(objective, OPTIMIZER, MESH, teacher=teacher)
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(np.asarray(metrics["loss"]))
    return state, np.stack(losses), metrics


def _sequential_run(make, i, batches, teacher, term=training.logit_matching):
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=RATES[i])
    state = training.replicate(training.init_train_state(
        make(SEEDS[i]), optimizer, key=jax.random.key(SEEDS[i])), MESH)
    step = training.make_train_step(_objective(WEIGHTS[i], term), optimizer, MESH,
                                    teacher=teacher)
    losses = []
    for batch in batches:
        state, metrics = step(state, {k: v[i] for k, v in batch.items()})
        losses.append(float(metrics["loss"]))
    return state, np.asarray(losses)


def _arrays(state):
    """A member's numbers: step, parameters, statistics, optimizer state (not its key)."""
    return jax.tree.leaves((state.step, state.params, state.rest, state.opt_state))


def _assert_close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol * float(np.max(np.abs(y))))


@pytest.mark.parametrize("make,m", [
    (_mlp, 3), pytest.param(_cnn, 2, marks=pytest.mark.slow)], ids=["mlp", "conv_batchnorm"])
def test_each_member_is_its_sequential_run(make, m):
    """Losses per step, parameters and BatchNorm statistics of every member match the
    sequential run of its seed, data, weight and learning rate within round-off."""
    teacher = make(99)
    batches = _batches(m)
    group, losses, metrics = _lockstep_run(make, _objective(), m, batches, teacher)
    assert losses.shape == (STEPS, m) and metrics["finite"].all()
    for i in range(m):
        single, single_losses = _sequential_run(make, i, batches, teacher)
        member = group.member(i)
        tol = _tolerance(single.params, STEPS)
        np.testing.assert_allclose(losses[:, i], single_losses, rtol=tol)
        _assert_close(member.params, single.params, tol)
        _assert_close(member.rest, single.rest, tol)  # running statistics (CNN)
        _assert_close(member.opt_state, single.opt_state, tol)
        assert int(member.step) == int(single.step) == STEPS
    if make is _cnn:
        assert jax.tree.leaves(group.members.rest)  # the CNN has BatchNorm statistics
        assert jax.tree.leaves(group.members.rest)[0].shape[0] == m


def test_a_non_finite_member_is_frozen_and_does_not_touch_the_others():
    """Member 1's second batch holds a NaN: it keeps its state after step 1, is flagged
    at step 2, and member 0's numbers are those of the clean group, bit for bit."""
    objective = _objective()
    teacher = _mlp(99)
    clean = _batches(2)
    bad = [dict(b) for b in clean]
    bad[1]["image"] = bad[1]["image"].copy()
    bad[1]["image"][1, 0, 0, 0, 0] = np.nan
    after_one, _, _ = _lockstep_run(_mlp, objective, 2, clean[:1], teacher)
    reference, clean_losses, _ = _lockstep_run(_mlp, objective, 2, clean, teacher)
    group, losses, metrics = _lockstep_run(_mlp, objective, 2, bad, teacher)
    assert group.failed_step.tolist() == [0, 2]
    assert metrics["finite"].tolist() == [True, True]  # step 3 is finite again, unused
    frozen = group.member(1)
    assert int(frozen.step) == 1
    for a, b in zip(_arrays(frozen), _arrays(after_one.member(1)), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(losses[:, 0], clean_losses[:, 0])
    for a, b in zip(_arrays(group.member(0)), _arrays(reference.member(0)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(losses[1, 1])


def test_a_weight_search_compiles_once():
    objective = _objective()
    teacher = _mlp(99)
    batch = _batches(2, steps=1)[0]
    step = training.make_lockstep_step(objective, OPTIMIZER, MESH, teacher=teacher)
    step.jitted.clear_cache()
    for weights in ((0.5, 2.0), (10.0, 0.0)):
        state = training.init_lockstep_state([_mlp(0), _mlp(1)], objective, OPTIMIZER,
                                             keys=[jax.random.key(0), jax.random.key(1)],
                                             weights={"logits": weights},
                                             learning_rates=(0.1, 0.2))
        state, _ = step(state, batch)
    assert step.jitted._cache_size() == 1


def test_group_size_for_memory_is_affine_in_the_members():
    """With the memory of exactly k members' compiled peak, the bound is k members."""
    objective = _objective()
    step = training.make_lockstep_step(objective, OPTIMIZER, MESH, teacher=_mlp(99))
    state = training.init_lockstep_state([_mlp(0)], objective, OPTIMIZER,
                                         keys=[jax.random.key(0)])
    batch = _batches(1, steps=1)[0]
    peak = [_lockstep._peak_bytes(step, *[jax.tree.map(
        lambda a, m=m: jax.ShapeDtypeStruct((m, *a.shape[1:]), a.dtype), t)
        for t in (state, batch)]) for m in (1, 2)]
    per_member, shared = peak[1] - peak[0], 2 * peak[0] - peak[1]
    assert per_member > 0
    for k in (1, 3, 10):
        memory = shared + k * per_member
        assert training.group_size_for_memory(step, state, batch, memory_bytes=memory,
                                              fraction=1.0) == k
    assert training.group_size_for_memory(step, state, batch, memory_bytes=1) == 1
    with pytest.raises(ValueError, match="fraction must be in"):
        training.group_size_for_memory(step, state, batch, memory_bytes=1, fraction=0)


def test_objective_weights_argument_replaces_the_term_weights():
    objective = training.Objective(training.cross_entropy(2.0), training.cross_entropy(
        3.0, name="ce2"))
    x, y = h.images(4)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, h.NUM_CLASSES)),
                         jnp.float32)
    inputs = training.TermInputs(x=x, labels=y, student_logits=logits, student_features={},
                                 student_fn=None, student_feature_fn=None)
    key = jax.random.key(0)
    total, terms = objective(inputs, key)
    assert float(total) == float(jnp.float32(2.0) * terms["loss/ce"]
                                 + jnp.float32(3.0) * terms["loss/ce2"])
    swapped, _ = objective(inputs, key, {"ce": jnp.float32(3.0), "ce2": jnp.float32(2.0)})
    assert float(swapped) == float(jnp.float32(3.0) * terms["loss/ce"]
                                   + jnp.float32(2.0) * terms["loss/ce2"])
    with pytest.raises(ValueError, match=r"weights must name every term .* got \['ce'\]"):
        objective(inputs, key, {"ce": 1.0})


def test_bad_arguments_name_themselves():
    objective = _objective()
    students = [_mlp(0), _mlp(1)]
    keys = [jax.random.key(0), jax.random.key(1)]
    with pytest.raises(ValueError, match="keys has 1 entries for 2 students"):
        training.init_lockstep_state(students, objective, OPTIMIZER, keys=keys[:1])
    with pytest.raises(ValueError, match=r"weights names \['jm'\], which are not terms"):
        training.init_lockstep_state(students, objective, OPTIMIZER, keys=keys,
                                     weights={"jm": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"weights\['ce'\] has 3 entries for 2 students"):
        training.init_lockstep_state(students, objective, OPTIMIZER, keys=keys,
                                     weights={"ce": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="learning_rates needs an optimizer built with "
                                         "optax.inject_hyperparams"):
        training.init_lockstep_state(students, objective, optax.sgd(0.1), keys=keys,
                                     learning_rates=[0.1, 0.2])
    with pytest.raises(ValueError, match="state 1 is of another architecture"):
        training.init_lockstep_state([_mlp(0), _cnn(1)], objective, OPTIMIZER, keys=keys)
    with pytest.raises(ValueError, match="has teacher terms but teacher is None"):
        training.make_lockstep_step(
            training.Objective(training.noisy_distillation(sigma=0.1)), OPTIMIZER, MESH)


# --- the loop: kill and resume --------------------------------------------------------

LOOP_STEPS = 6


def _train(workdir, data, **kwargs):
    return training.train_lockstep(
        [_mlp(s) for s in SEEDS[:2]], _objective(), OPTIMIZER, data, workdir=workdir,
        num_steps=LOOP_STEPS, seeds=SEEDS[:2], weights={"logits": WEIGHTS[:2]},
        learning_rates=RATES[:2], teacher=_mlp(99), mesh=MESH, checkpoint_every=2,
        log_every=1, **kwargs)


def _data(fail_at=None):
    """Each member its own subset and order; member 1's iterator may fail."""
    x, y = h.images(96)
    return [h.ArrayIterator(x[:48], y[:48], seed=0),
            h.ArrayIterator(x[48:], y[48:], seed=1, fail_at=fail_at)]


def test_killed_group_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    x, y = h.images(32, seed=1)
    eval_data = [{"image": x, "label": y}]
    full = _train(tmp_path / "full", _data(), eval_data=eval_data)
    with pytest.raises(RuntimeError, match="simulated kill"):
        _train(tmp_path / "resumed", _data(fail_at=5))  # steps 1-5 ran; ckpt at 4
    assert training.Checkpointer(tmp_path / "resumed" / "checkpoints").latest_step() == 4
    resumed = _train(tmp_path / "resumed", _data(), eval_data=eval_data)
    assert resumed.failed_step == full.failed_step == [0, 0]
    for part in ("step", "params", "rest", "opt_state"):
        for a, b in zip(jax.tree.leaves(getattr(full.state.members, part)),
                        jax.tree.leaves(getattr(resumed.state.members, part)), strict=True):
            np.testing.assert_array_equal(a, b)
    assert resumed.train_metrics == full.train_metrics
    assert resumed.eval_metrics == full.eval_metrics and full.eval_metrics[0]
    for i in range(2):
        records = [training.read_metrics(training.member_dir(d, i), "train")
                   for d in (tmp_path / "full", tmp_path / "resumed")]
        assert [r["step"] for r in records[0]] == list(range(1, LOOP_STEPS + 1))
        assert records[0] == records[1]


def test_each_member_is_evaluated_on_its_own_set(tmp_path):
    x, y = h.images(32, seed=1)
    sets = [[{"image": x[:16], "label": y[:16]}], [{"image": x[16:], "label": y[16:]}]]
    with pytest.raises(ValueError, match="member_eval_data has 1 entries for 2 students"):
        _train(tmp_path / "short", _data(), member_eval_data=sets[:1])
    with pytest.raises(ValueError, match="not both"):
        _train(tmp_path / "both", _data(), eval_data=sets[0], member_eval_data=sets)
    out = _train(tmp_path / "own", _data(), member_eval_data=sets)
    step = training.make_eval_step(MESH)
    for i in range(2):
        mine = training.evaluate(step, out.state.member(i), sets[i], MESH)
        theirs = training.evaluate(step, out.state.member(i), sets[1 - i], MESH)
        assert out.eval_metrics[i]["accuracy"] == mine["accuracy"]
        assert out.eval_metrics[i]["loss"] == mine["loss"] != theirs["loss"]


def test_resume_with_other_weights_is_refused(tmp_path):
    _train(tmp_path, _data())
    with pytest.raises(training.CheckpointError, match="holds a group of weights"):
        training.train_lockstep(
            [_mlp(s) for s in SEEDS[:2]], _objective(), OPTIMIZER, _data(), workdir=tmp_path,
            num_steps=LOOP_STEPS, seeds=SEEDS[:2], weights={"logits": (9.0, 9.0)},
            learning_rates=RATES[:2], teacher=_mlp(99), mesh=MESH)
