"""Teacher targets computed once: every loss given them equals the loss given the teacher.

Values and the student's parameter gradients agree within float round-off (the same
operations run, in one program or two), under ``jax.jit`` and sharded over the 8 fake
devices; a loss called with options other than the targets' raises, naming both.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxkd import losses
from tests.losses import nets

B, SHAPE = 16, (2, 3)  # 16: two remat slices of 8, one row per device each
D = 6
TP, SP = nets.pair(D)
TEACHER = functools.partial(nets.mlp, TP)
X = jax.random.normal(jax.random.key(3), (B,) + SHAPE)
Y = jnp.arange(B, dtype=jnp.int32) % nets.CLASSES
KEY = jax.random.key(11)


def features(params):
    def fn(x):  # [B, 2, 3] -> [B, 2, 3, 2] feature map
        h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"][:, :D]).reshape(x.shape + (1,))
        return jnp.concatenate([h, jnp.square(h) + x[..., None]], axis=-1)
    return fn


def jm(**options):
    return (dict(outputs=options.get("outputs", "teacher_top1"), k=options.get("k", 1)),
            lambda s, t, x, y: losses.jacobian_matching_loss(
                s, t, x, labels=y if options.get("outputs") == "label" else None, **options))


def projection(loss, which, remat_chunks=None, **options):
    def call(s, t, x, y):
        key = None if isinstance(t, losses.TeacherTargets) else KEY
        return loss(s, t, x, key=key, remat_chunks=remat_chunks, **options)
    return dict(outputs=None, projections=(which,), key=KEY, **options), call


CASES = {
    **{f"jm_{mode}_{'normalized' if normalize else 'raw'}":
       jm(outputs=mode, normalize=normalize, **({"k": 2} if mode == "top_k" else {}))
       for mode in losses.OUTPUT_MODES for normalize in (True, False)},
    "jm_top1_remat": jm(remat_chunks=2),
    "vjp_rademacher_2": projection(losses.vjp_projection_loss, "vjp", num_probes=2),
    "vjp_gaussian_1": projection(losses.vjp_projection_loss, "vjp", distribution="gaussian"),
    "vjp_orthogonal_2_remat": projection(losses.vjp_projection_loss, "vjp", num_probes=2,
                                         distribution="orthogonal", remat_chunks=2),
    "jvp_rademacher_1": projection(losses.jvp_projection_loss, "jvp"),
    "jvp_orthogonal_2": projection(losses.jvp_projection_loss, "jvp", num_probes=2,
                                   distribution="orthogonal"),
    "squared_noise_expansion_none": (dict(outputs="all"), lambda s, t, x, y:
                                     losses.squared_noise_expansion(s, t, x, sigma=0.3,
                                                                    curvature="none")),
    "cross_entropy_noise_expansion_none": (dict(outputs="all"), lambda s, t, x, y:
                                           losses.cross_entropy_noise_expansion(
                                               s, t, x, sigma=0.3, temperature=2.0,
                                               curvature="none")),
    "attention_jacobian": (dict(outputs=None, teacher_feature_fn=features(TP)),
                           lambda s, t, x, y: losses.attention_jacobian_loss(s, t, x)),
}


def student(params, case):
    return features(params) if case == "attention_jacobian" else functools.partial(nets.mlp,
                                                                                   params)


def teacher(case):
    return features(TP) if case == "attention_jacobian" else TEACHER


def targets_of(case, x, y):
    options = dict(CASES[case][0])
    if options.get("outputs") == "label":
        options["labels"] = y
    return losses.teacher_targets(TEACHER, x, **options)


def value_and_grad(case, teacher_or_targets, x, y):
    loss = CASES[case][1]
    return jax.value_and_grad(lambda p: jnp.sum(loss(student(p, case), teacher_or_targets, x,
                                                     y)))(SP)


def assert_round_off(got, want):
    # Same operations, possibly fused or reduced in another order: a few float32 ulp of
    # the largest entry (each entry is a short sum of products).
    ulp = np.finfo(np.float32).eps
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=0, atol=16 * ulp * max(float(jnp.max(jnp.abs(b))),
                                                                     1.0))


@pytest.mark.parametrize("case", sorted(CASES))
def test_targets_give_the_value_and_student_gradient_of_the_teacher(case):
    want = jax.jit(functools.partial(value_and_grad, case, teacher(case)))(X, Y)
    targets = jax.jit(functools.partial(targets_of, case))(X, Y)
    got = jax.jit(functools.partial(value_and_grad, case))(targets, X, Y)
    assert_round_off(got, want)
    assert float(want[0]) > 0  # the networks differ: a loss of 0 would prove nothing


@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_targets_give_the_unsharded_value(case):
    want = jax.jit(lambda x, y: CASES[case][1](student(SP, case), teacher(case), x, y))(X, Y)
    mesh = jax.make_mesh((8,), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        x, y = jax.device_put(X, sharding), jax.device_put(Y, sharding)
        targets = jax.jit(functools.partial(targets_of, case))(x, y)
        # Every array of the targets has the batch as its leading axis: one sharding.
        assert all(leaf.sharding.spec[0] == "data" for leaf in jax.tree.leaves(targets))
        got = jax.jit(lambda t, x, y: CASES[case][1](student(SP, case), t, x, y))(targets, x, y)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_targets_of_some_examples_are_the_slice_of_the_batchs():
    full = losses.teacher_targets(TEACHER, X, outputs="top_k", k=2, projections=("jvp",),
                                  key=KEY)
    rows = jnp.array([5, 1, 2])
    part = jax.tree.map(lambda a: a[rows], full)
    want = losses.jacobian_matching_loss(functools.partial(nets.mlp, SP), TEACHER, X[rows],
                                         outputs="top_k", k=2)
    got = losses.jacobian_matching_loss(functools.partial(nets.mlp, SP), part, X[rows],
                                        outputs="top_k", k=2)
    assert_round_off(got, want)
    # Flattened to arrays (e.g. to save them) and rebuilt, they are the same targets.
    leaves, treedef = jax.tree.flatten(full)
    rebuilt = jax.tree.unflatten(treedef, [np.asarray(a) for a in leaves])
    assert rebuilt.outputs == "top_k" and rebuilt.projections == ("jvp",)
    np.testing.assert_array_equal(rebuilt.jvp_tangents, full.jvp_tangents)


def test_traced_labels_that_differ_from_the_targets_give_nan_rows():
    targets = losses.teacher_targets(TEACHER, X, labels=Y, outputs="label")
    other = Y.at[2].set((Y[2] + 1) % nets.CLASSES)
    got = jax.jit(lambda y: losses.jacobian_matching_loss(
        functools.partial(nets.mlp, SP), targets, X, labels=y, outputs="label"))(other)
    assert np.isnan(got[2]) and np.isfinite(np.delete(np.asarray(got), 2)).all()


STUDENT = functools.partial(nets.mlp, SP)
JM_TOP1 = losses.teacher_targets(TEACHER, X)
LABEL = losses.teacher_targets(TEACHER, X, labels=Y, outputs="label")
TOP2 = losses.teacher_targets(TEACHER, X, outputs="top_k", k=2)
VJP2 = losses.teacher_targets(TEACHER, X, outputs=None, projections=("vjp",), key=KEY,
                              num_probes=2)
ATTENTION = losses.teacher_targets(TEACHER, X, outputs=None, teacher_feature_fn=features(TP))

CONTRACT = {
    "outputs": (r"called with outputs='label' but `targets` were computed with "
                r"outputs='teacher_top1'", lambda: losses.jacobian_matching_loss(
                    STUDENT, JM_TOP1, X, labels=Y, outputs="label")),
    "k": (r"called with k=3 but `targets` were computed with k=2",
          lambda: losses.jacobian_matching_loss(STUDENT, TOP2, X, outputs="top_k", k=3)),
    "labels": (r"`labels` differ from those `targets` were computed with, at rows \[2\]",
               lambda: losses.jacobian_matching_loss(STUDENT, LABEL, X, outputs="label",
                                                     labels=Y.at[2].set((Y[2] + 1) % 3))),
    "num_probes": (r"called with num_probes=1 but `targets` were computed with num_probes=2",
                   lambda: losses.vjp_projection_loss(STUDENT, VJP2, X)),
    "distribution": (r"called with distribution='gaussian' but `targets` were computed with "
                     r"distribution='rademacher'", lambda: losses.vjp_projection_loss(
                         STUDENT, VJP2, X, num_probes=2, distribution="gaussian")),
    "key": (r"differs from the key `targets` drew their probes with .*pass key=None",
            lambda: losses.vjp_projection_loss(STUDENT, VJP2, X, num_probes=2,
                                               key=jax.random.key(12))),
    "no_jvp": (r"`targets` hold no JVP projections: compute them with "
               r"teacher_targets\(\.\.\., projections=\('jvp',\), key=\.\.\.\)",
               lambda: losses.jvp_projection_loss(STUDENT, VJP2, X, num_probes=2)),
    "no_gradients": (r"`targets` hold no input gradients",
                     lambda: losses.jacobian_matching_loss(STUDENT, VJP2, X)),
    "p": (r"called with p=4.0 but `targets` were computed with p=2.0",
          lambda: losses.attention_jacobian_loss(features(SP), ATTENTION, X, p=4.0)),
    "eps": (r"called with eps=0.001 but `targets` were computed with eps=1e-06",
            lambda: losses.attention_jacobian_loss(features(SP), ATTENTION, X, eps=1e-3)),
    "batch": (r"`targets` were computed for a batch of 16 examples, `x` has 4",
              lambda: losses.jacobian_matching_loss(STUDENT, JM_TOP1, X[:4])),
    "projections_without_key": (r"`key` is required", lambda: losses.teacher_targets(
        TEACHER, X, projections=("vjp",))),
    "key_without_projections": (r"`key` draws the probes of `projections`, which is empty",
                                lambda: losses.teacher_targets(TEACHER, X, key=KEY)),
    "bad_projection": (r"`projections` must be one of \('vjp', 'jvp', 'fd'\), got 'jpv'",
                       lambda: losses.teacher_targets(TEACHER, X, projections=("jpv",),
                                                      key=KEY)),
    "empty": (r"`x` has an empty batch", lambda: losses.teacher_targets(TEACHER, X[:0])),
}


@pytest.mark.parametrize("case", sorted(CONTRACT))
def test_a_loss_called_against_its_targets_options_raises_naming_both(case):
    message, call = CONTRACT[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_the_same_key_as_the_targets_is_accepted():
    got = losses.vjp_projection_loss(STUDENT, VJP2, X, num_probes=2, key=KEY)
    np.testing.assert_array_equal(got, losses.vjp_projection_loss(STUDENT, VJP2, X,
                                                                  num_probes=2))


def test_a_traced_key_that_differs_from_the_targets_gives_nan_rows():
    """As for traced labels: inside jit the key cannot be compared before the program
    runs, so every row drawn with another key is NaN (a train step's guard reports it)."""
    def loss(key):
        return losses.vjp_projection_loss(STUDENT, VJP2, X, num_probes=2, key=key)
    assert_round_off(jax.jit(loss)(KEY), loss(None))  # the targets' key: their value
    assert np.isnan(jax.jit(loss)(jax.random.key(12))).all()


ALL = losses.teacher_targets(TEACHER, X, outputs="all")


@pytest.mark.parametrize("call", [
    lambda t: losses.noisy_distillation_loss(STUDENT, t, X, key=KEY, sigma=0.1),
    lambda t: losses.squared_noise_expansion(STUDENT, t, X, sigma=0.1),
    lambda t: losses.cross_entropy_noise_expansion(STUDENT, t, X, sigma=0.1,
                                                   curvature="hutchinson", key=KEY),
], ids=["noisy_distillation_loss", "squared_noise_expansion_exact",
        "cross_entropy_noise_expansion_hutchinson"])
def test_the_noise_losses_refuse_targets_they_cannot_use_saying_why(call):
    # The noisy loss needs the teacher at noisy inputs; the expansions' Laplacian terms
    # need its Hessian traces (only curvature="none" takes targets).
    with pytest.raises(TypeError, match=r"does not take TeacherTargets as `teacher_fn`: "
                                        r".*Pass the teacher as a function"):
        call(ALL)


def test_an_expansion_needs_targets_of_every_output():
    with pytest.raises(ValueError, match=r"needs the teacher's full input Jacobian, `targets` "
                                         r"computed with outputs='all'; got targets of "
                                         r"outputs='teacher_top1'"):
        losses.squared_noise_expansion(STUDENT, JM_TOP1, X, sigma=0.1, curvature="none")


# Another batch of the same shape: example 5 flipped along its last axis, which keeps its
# sums of x and x**2 (only the signed sum of the fingerprint sees it), example 9 replaced.
OTHER_X = X.at[5].set(X[5, :, ::-1]).at[9].set(X[9] + 0.5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_targets_used_with_another_batch_are_refused_naming_x(case):
    targets = targets_of(case, X, Y)
    with pytest.raises(ValueError, match=r"`x` is not the batch `targets` were computed on: "
                                         r"examples \[5, 9\] \(2 of 16\) differ"):
        CASES[case][1](student(SP, case), targets, OTHER_X, Y)


@pytest.mark.parametrize("case", ["jm_label_normalized", "vjp_rademacher_2",
                                  "jvp_rademacher_1", "squared_noise_expansion_none",
                                  "cross_entropy_noise_expansion_none", "attention_jacobian"])
def test_a_traced_other_batch_gives_nan_in_its_differing_rows(case):
    """As for a traced key: inside jit the batch cannot be compared before the program
    runs, so the rows of the examples that differ are NaN, the others the loss's."""
    targets = targets_of(case, X, Y)
    loss = jax.jit(lambda x: CASES[case][1](student(SP, case), targets, x, Y))
    assert_round_off(loss(X), CASES[case][1](student(SP, case), targets, X, Y))
    got = np.asarray(loss(OTHER_X))
    assert np.isnan(got[[5, 9]]).all() and np.isfinite(np.delete(got, [5, 9])).all()


def test_the_same_batch_summed_in_any_order_matches_its_fingerprint():
    """The comparison allows the float32 round-off of a sum of D terms in any order: the
    fingerprint of values of very different sizes, summed one by one forwards and
    backwards in float32 (the worst order for round-off), matches jax's (pairwise)."""
    from jaxkd.losses import _contract, _targets
    x = np.exp(3 * np.random.default_rng(0).standard_normal((8, 4096))).astype(np.float32)
    x *= np.where(np.arange(4096) % 3, 1, -1).astype(np.float32)
    signs = np.asarray(_targets._signs(4096))
    for order in (slice(None), slice(None, None, -1)):
        terms = [x, x * x, x * signs]
        stored = np.stack([np.cumsum(t[:, order], axis=-1, dtype=np.float32)[:, -1]
                           for t in terms], axis=-1)
        assert np.asarray(_contract.same_batch(jnp.asarray(stored), jnp.asarray(x))).all()
    # Not vacuous: moving the largest value of example 3 to a position of the other sign
    # changes its signed sum by about twice that value, far beyond the tolerance
    # (3 D eps sum|x|, about 1.5e-3 of sum|x| here).
    i = int(np.argmax(np.abs(x[3])))
    j = int(np.flatnonzero(signs != signs[i])[0])
    moved = x.copy()
    moved[3, [i, j]] = moved[3, [j, i]]
    same = np.asarray(_contract.same_batch(_targets.fingerprint(jnp.asarray(x)),
                                           jnp.asarray(moved)))
    assert same.tolist() == [True] * 3 + [False] + [True] * 4
