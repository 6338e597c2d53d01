"""The user-model cases of ``step_cost``: the modes table and the hand-written loss.

Tiny sizes (8x8 images, batch 4, width 4): these check what a step computes and takes,
never how long it runs.
"""

import numpy as np
import pytest

from benchmarks import _user_models

SIZES = dict(batch=4, image_size=8, num_classes=10, width=4, mesh=None)


def _kd_on_precomputed_logits(student_fn, t_logits, x, labels, key):
    """CE + KD with the teacher's logits given: the kd row fed teacher targets."""
    return _user_models.ce_kd()(student_fn, lambda z: t_logits, x, labels, key)


@pytest.fixture
def kd_targets_row(monkeypatch):
    """A mode added as one table entry: its teacher's logits computed once, ahead."""
    row = _user_models.Mode(_kd_on_precomputed_logits,
                            teacher_input=lambda teacher_fn, x, labels, key: teacher_fn(x),
                            note="teacher logits precomputed")
    monkeypatch.setitem(_user_models.MODES, "kd_targets", row)
    return row


def _tiny_pair(seed):
    """A tiny user-model student and teacher as pure functions, a batch of 4 and a key."""
    import jax
    import jax.numpy as jnp

    student = _user_models.cnn("avg", (4, 8), 10, jnp.float32)
    teacher = _user_models.cnn("avg", (8, 16), 10, jnp.float32)
    kx, ky, ks, kt = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(kx, (4, 8, 8, 3))
    y = jax.random.randint(ky, (4,), 0, 10)
    ps, pt = student.init(ks, x), teacher.init(kt, x)

    def s_fn(z):
        return student.apply(ps, z)

    def t_fn(z):
        return teacher.apply(pt, z)

    return s_fn, t_fn, x, y, kt


def test_every_mode_builds_ce_plus_kd_plus_its_term():
    import jax.numpy as jnp

    s_fn, t_fn, x, y, kt = _tiny_pair(0)
    kd = _user_models.MODES["kd"].objective(s_fn, t_fn, x, y, kt)
    assert kd.shape == (4,) and bool(jnp.all(kd > 0))
    for name, mode in _user_models.MODES.items():
        assert mode.dtype in ("float32", "bfloat16"), name
        given = t_fn if mode.teacher_input is None else mode.teacher_input(t_fn, x, y, kt)
        loss = mode.objective(s_fn, given, x, y, kt)
        assert loss.shape == (4,), name
        if name.startswith("kd"):
            np.testing.assert_allclose(loss, kd, rtol=1e-6, err_msg=name)
        else:  # a Jacobian term on top of CE + KD: strictly more
            assert bool(jnp.all(loss > kd)), name


def test_a_row_with_teacher_input_feeds_the_step_precomputed_targets(kd_targets_row):
    import jax

    lowered, finish = _user_models.make_step("user_avg", "kd_targets", **SIZES)
    # The compiled step takes the teacher's [B, K] logits where it took its parameters.
    teacher_arg = lowered.args_info[0][2]
    assert teacher_arg.shape == (4, 10)
    step = finish(lowered.compile(), 0.0)
    assert step.note == "teacher logits precomputed"
    step.run()
    kd_lowered, kd_finish = _user_models.make_step("user_avg", "kd", **SIZES)
    kd_step = kd_finish(kd_lowered.compile(), 0.0)
    assert jax.tree.leaves(kd_lowered.args_info[0][2])[0].shape != (4, 10)
    # Without the teacher's forward pass in it, the step does less work than kd's.
    assert step.flops < kd_step.flops


def test_a_row_with_teacher_input_computes_the_kd_rows_loss(kd_targets_row):
    s_fn, t_fn, x, y, kt = _tiny_pair(1)
    targets = kd_targets_row.teacher_input(t_fn, x, y, kt)
    np.testing.assert_allclose(kd_targets_row.objective(s_fn, targets, x, y, kt),
                               _user_models.MODES["kd"].objective(s_fn, t_fn, x, y, kt),
                               rtol=1e-6)


def test_the_jm_row_fed_teacher_targets_computes_jm_and_runs_no_teacher():
    import jax

    lowered, finish = _user_models.make_step("user_avg", "jm_targets", **SIZES)
    jm_lowered, jm_finish = _user_models.make_step("user_avg", "jm", **SIZES)
    # The compiled step takes the targets: the logits [B, K], the indices [B, 1], the
    # gradients [B, 1, D] and the batch's fingerprint [B, 3].
    shapes = sorted(a.shape for a in jax.tree.leaves(lowered.args_info[0][2]))
    assert shapes == [(4, 1), (4, 1, 8 * 8 * 3), (4, 3), (4, 10)]
    step, jm_step = finish(lowered.compile(), 0.0), jm_finish(jm_lowered.compile(), 0.0)
    step.run()
    assert step.flops < jm_step.flops
    row = _user_models.MODES["jm_targets"]
    s_fn, t_fn, x, y, kt = _tiny_pair(2)
    np.testing.assert_allclose(row.objective(s_fn, row.teacher_input(t_fn, x, y, kt), x, y, kt),
                               _user_models.MODES["jm"].objective(s_fn, t_fn, x, y, kt),
                               rtol=1e-5)


def test_an_unknown_mode_or_case_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown user-model mode 'jm_fast'"):
        _user_models.make_step("user_avg", "jm_fast", **SIZES)
    with pytest.raises(ValueError, match="unknown user-model case 'user_min'"):
        _user_models.make_step("user_min", "kd", **SIZES)


def test_hand_written_jacobian_matching_is_the_library_loss():
    """The "same maths by hand" row computes the library's value (float round-off)."""
    import inspect

    import jax
    import jax.numpy as jnp

    from jaxkd.losses import jacobian_matching_loss

    eps_default = inspect.signature(jacobian_matching_loss).parameters["eps"].default
    assert _user_models.HAND_EPS == eps_default
    student = _user_models.cnn("avg", (4, 8), 10, jnp.float32)
    teacher = _user_models.cnn("avg", (8, 16), 10, jnp.float32)
    kx, ky, ks, kt = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (5, 8, 8, 3))
    y = jax.random.randint(ky, (5,), 0, 10)
    ps, pt = student.init(ks, x), teacher.init(kt, x)

    def s_fn(z):
        return student.apply(ps, z)

    def t_fn(z):
        return teacher.apply(pt, z)

    lib = jacobian_matching_loss(s_fn, t_fn, x, labels=y, outputs="label")
    hand = _user_models.hand_jacobian_matching(s_fn, t_fn, x, y)
    # Values in [0, 4] (unit vectors): sums over D = 192 of float32 products agree to a
    # few ulp of the sum, far inside 1e-5 relative.
    np.testing.assert_allclose(hand, lib, rtol=1e-5, atol=1e-6)
    assert float(jnp.min(lib)) > 1e-3  # not trivially zero
    # And its parameter gradient (what the train step uses): each entry sums ~10^3
    # float32 products (eps 1.2e-7) in a different order, so up to ~1e-4 relative.
    g_lib = jax.grad(lambda p: jnp.mean(jacobian_matching_loss(
        lambda z: student.apply(p, z), t_fn, x, labels=y, outputs="label")))(ps)
    g_hand = jax.grad(lambda p: jnp.mean(_user_models.hand_jacobian_matching(
        lambda z: student.apply(p, z), t_fn, x, y)))(ps)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 g_lib, g_hand)
