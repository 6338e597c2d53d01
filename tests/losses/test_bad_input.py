"""Every bad input of the loss library raises at trace time, naming the argument."""

import functools
import re
import typing

import jax
import jax.numpy as jnp
import pytest

from jaxkd import losses
from tests.losses import nets

D = 4
TP, SP = nets.pair(D)
TEACHER = functools.partial(nets.mlp, TP)
STUDENT = functools.partial(nets.mlp, SP)
X = jnp.ones((nets.BATCH, D))
KEY = jax.random.key(0)
LOGITS = jnp.ones((4, 3))


def wide(x):  # a student with a different number of classes
    return jnp.concatenate([STUDENT(x), STUDENT(x)], axis=-1)


CASES = [
    (TypeError, "`student_logits` must have a floating dtype",
     lambda: losses.distillation_loss(jnp.ones((4, 3), jnp.int32), LOGITS)),
    (ValueError, "same batch size", lambda: losses.distillation_loss(LOGITS, jnp.ones((5, 3)))),
    (ValueError, "same number of classes K",
     lambda: losses.logit_matching_loss(LOGITS, jnp.ones((4, 2)))),
    (ValueError, "must have rank 2", lambda: losses.logit_matching_loss(jnp.ones(3), LOGITS)),
    (ValueError, "`temperature` must be > 0",
     lambda: losses.distillation_loss(LOGITS, LOGITS, temperature=0.0)),
    (ValueError, '`outputs="label"` needs `labels`',
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="label")),
    (TypeError, "`labels` must have an integer dtype",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="label",
                                           labels=jnp.zeros(4))),
    (ValueError, "`labels` must have shape \\[4\\]",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="label",
                                           labels=jnp.zeros(3, jnp.int32))),
    (ValueError, "`labels` must be class indices in \\[0, 3\\)",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="label",
                                           labels=jnp.array([0, 1, 3, 2], jnp.int32))),
    (ValueError, "`outputs` must be one of",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="top5")),
    (ValueError, "`k` must be <= the number of classes K=3",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="top_k", k=4)),
    (ValueError, "`k` must be an integer >= 1",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="top_k", k=0)),
    (ValueError, "same number of classes K",
     lambda: losses.jacobian_matching_loss(wide, TEACHER, X)),
    (TypeError, "`x` must have a floating dtype",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, jnp.ones((4, D), jnp.int32))),
    (ValueError, "`x` must have rank >= 2",
     lambda: losses.jacobian_matching_loss(STUDENT, TEACHER, jnp.ones(D))),
    (ValueError, "`num_probes` must be an integer >= 1",
     lambda: losses.vjp_projection_loss(STUDENT, TEACHER, X, key=KEY, num_probes=0)),
    (ValueError, "`num_probes` must be an integer >= 1",
     lambda: losses.jvp_projection_loss(STUDENT, TEACHER, X, key=KEY, num_probes=0)),
    (ValueError, "`num_probes` must be <= 4",
     lambda: losses.jvp_projection_loss(STUDENT, TEACHER, X, key=KEY, num_probes=5,
                                        distribution="orthogonal")),
    (ValueError, "`distribution` must be one of",
     lambda: losses.vjp_projection_loss(STUDENT, TEACHER, X, key=KEY, distribution="sobol")),
    (ValueError, "`key` is required",
     lambda: losses.vjp_projection_loss(STUDENT, TEACHER, X, key=None)),
    (ValueError, "`sigma` must be > 0",
     lambda: losses.noisy_distillation_loss(STUDENT, TEACHER, X, key=KEY, sigma=0.0)),
    (ValueError, "`sigma` must be > 0",
     lambda: losses.squared_noise_expansion(STUDENT, TEACHER, X, sigma=-1.0)),
    (ValueError, "`num_samples` must be an integer >= 1",
     lambda: losses.noisy_distillation_loss(STUDENT, TEACHER, X, key=KEY, sigma=0.1,
                                            num_samples=0)),
    (ValueError, "`kind` must be one of",
     lambda: losses.noisy_distillation_loss(STUDENT, TEACHER, X, key=KEY, sigma=0.1,
                                            kind="l1")),
    (ValueError, "`curvature` must be one of",
     lambda: losses.squared_noise_expansion(STUDENT, TEACHER, X, sigma=0.1, curvature="x")),
    (ValueError, "`key` is required",
     lambda: losses.cross_entropy_noise_expansion(STUDENT, TEACHER, X, sigma=0.1,
                                                  curvature="hutchinson")),
    (ValueError, "must have rank 4",
     lambda: losses.attention_map(jnp.ones((2, 3, 3)))),
    (ValueError, "spatial size",
     lambda: losses.attention_transfer_loss(jnp.ones((2, 3, 3, 1)), jnp.ones((2, 3, 4, 1)))),
    (ValueError, "non-empty sequences of the same length",
     lambda: losses.attention_transfer_loss([jnp.ones((2, 3, 3, 1))], [])),
    (ValueError, "`method` must be one of \\('exact', 'hutchinson'\\), got 'hutchinsn'",
     lambda: losses.weighted_laplacian(STUDENT, X, LOGITS, method="hutchinsn")),
]
EMPTY = jnp.ones((0, D))
# Every loss of networks, called on the batch `x` (the empty batch below, or a bad sigma).
NETWORK_LOSSES = {
    "jacobian_matching_loss": lambda x: losses.jacobian_matching_loss(STUDENT, TEACHER, x),
    "vjp_projection_loss": lambda x: losses.vjp_projection_loss(STUDENT, TEACHER, x, key=KEY),
    "jvp_projection_loss": lambda x: losses.jvp_projection_loss(STUDENT, TEACHER, x, key=KEY),
    "attention_jacobian_loss": lambda x: losses.attention_jacobian_loss(
        lambda y: y[:, :, None, None], lambda y: y[:, :, None, None], x),
    "noisy_distillation_loss": lambda x: losses.noisy_distillation_loss(
        STUDENT, TEACHER, x, key=KEY, sigma=0.1),
    "squared_noise_expansion": lambda x: losses.squared_noise_expansion(STUDENT, TEACHER, x,
                                                                        sigma=0.1),
    "cross_entropy_noise_expansion": lambda x: losses.cross_entropy_noise_expansion(
        STUDENT, TEACHER, x, sigma=0.1),
}
SIGMA_LOSSES = {
    "noisy_distillation_loss": lambda s: losses.noisy_distillation_loss(STUDENT, TEACHER, X,
                                                                        key=KEY, sigma=s),
    "squared_noise_expansion": lambda s: losses.squared_noise_expansion(STUDENT, TEACHER, X,
                                                                        sigma=s),
    "cross_entropy_noise_expansion": lambda s: losses.cross_entropy_noise_expansion(
        STUDENT, TEACHER, X, sigma=s),
}


@pytest.mark.parametrize("error,message,call", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_input_raises_with_a_clear_message(error, message, call):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("loss", sorted(NETWORK_LOSSES))
def test_an_empty_batch_is_refused_naming_x(loss):
    with pytest.raises(ValueError, match=r"`x` has an empty batch \(shape \(0, 4\)\)"):
        NETWORK_LOSSES[loss](EMPTY)


@pytest.mark.parametrize("loss", sorted(SIGMA_LOSSES))
@pytest.mark.parametrize("sigma", [float("inf"), float("nan")])
def test_a_non_finite_sigma_is_refused_naming_it(loss, sigma):
    with pytest.raises(ValueError, match=f"`sigma` must be finite and > 0, got {sigma}"):
        SIGMA_LOSSES[loss](sigma)


def test_checks_run_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="same batch size"):
        jax.jit(losses.logit_matching_loss)(LOGITS, jnp.ones((5, 3)))


def test_student_batch_mismatch_is_reported():
    def drops_rows(x):
        return STUDENT(x)[:2]
    with pytest.raises(ValueError, match="same batch size|one row per example"):
        losses.jacobian_matching_loss(drops_rows, TEACHER, X)


# Readable failures for a wrong kind of argument.

BIG_LOGITS = jnp.arange(4 * 1000, dtype=jnp.float32).reshape(4, 1000)
FN_CALLS = {
    "jacobian_matching_loss": lambda s, t: losses.jacobian_matching_loss(s, t, X),
    "vjp_projection_loss": lambda s, t: losses.vjp_projection_loss(s, t, X, key=KEY),
    "jvp_projection_loss": lambda s, t: losses.jvp_projection_loss(s, t, X, key=KEY),
    "noisy_distillation_loss": lambda s, t: losses.noisy_distillation_loss(s, t, X, key=KEY,
                                                                           sigma=0.1),
    "squared_noise_expansion": lambda s, t: losses.squared_noise_expansion(s, t, X, sigma=0.1),
    "cross_entropy_noise_expansion": lambda s, t: losses.cross_entropy_noise_expansion(
        s, t, X, sigma=0.1),
}


@pytest.mark.parametrize("loss", sorted(FN_CALLS))
@pytest.mark.parametrize("which", ["student_fn", "teacher_fn"])
def test_logits_where_a_network_function_is_expected(loss, which):
    args = {"student_fn": STUDENT, "teacher_fn": TEACHER, which: BIG_LOGITS}
    with pytest.raises(TypeError) as info:
        FN_CALLS[loss](args["student_fn"], args["teacher_fn"])
    message = str(info.value)
    assert f"`{which}` must be a function x -> [B, K]" in message
    assert "got an array of shape (4, 1000) and dtype float32" in message
    assert "3999" not in message and len(message) < 300  # the array is not printed


def test_feature_map_passed_where_a_feature_function_is_expected():
    with pytest.raises(TypeError, match=r"`teacher_feature_fn` must be a function "
                                        r"x -> \[B, H, W, C\].*got an array of shape"):
        losses.attention_jacobian_loss(lambda x: x[:, :, None, None], jnp.ones((4, 4, 1, 1)), X)


def as_dict(x):
    return {"logits": STUDENT(x), "features": x}


@pytest.mark.parametrize("loss", sorted(FN_CALLS))
def test_network_returning_a_dict_is_named(loss):
    with pytest.raises(TypeError, match=r"`student_fn` must return one array \[B, K\], got a "
                                        r"dict with keys \['features', 'logits'\]"):
        FN_CALLS[loss](as_dict, TEACHER)


def test_network_returning_a_tuple_is_named():
    with pytest.raises(TypeError, match=r"`teacher_fn` must return one array \[B, K\], got a "
                                        r"tuple of 2 items"):
        losses.jacobian_matching_loss(STUDENT, lambda x: (TEACHER(x), x), X)
    with pytest.raises(TypeError, match=r"`student_feature_fn` must return one array "
                                        r"\[B, H, W, C\], got a tuple of 2 items"):
        losses.attention_jacobian_loss(lambda x: (x, x), lambda x: x[:, :, None, None], X)


LIST = [[0.0, 1.0, 2.0]] * 4
LIST_CASES = {
    "distillation_loss/student_logits": lambda: losses.distillation_loss(LIST, LOGITS),
    "distillation_loss/teacher_logits": lambda: losses.distillation_loss(LOGITS, LIST),
    "logit_matching_loss/student_logits": lambda: losses.logit_matching_loss(LIST, LOGITS),
    "attention_map/features": lambda: losses.attention_map([[[[1.0]]]]),
    "jacobian_matching_loss/x": lambda: losses.jacobian_matching_loss(STUDENT, TEACHER,
                                                                      [[1.0] * D] * 4),
    "jacobian_matching_loss/labels": lambda: losses.jacobian_matching_loss(
        STUDENT, TEACHER, X, labels=[0, 1, 2, 0], outputs="label"),
    "vjp_projection_loss/x": lambda: losses.vjp_projection_loss(STUDENT, TEACHER,
                                                                [[1.0] * D] * 4, key=KEY),
}


@pytest.mark.parametrize("case", sorted(LIST_CASES))
def test_python_lists_are_refused_naming_the_argument(case):
    name = case.split("/")[1]
    with pytest.raises(TypeError, match=f"`{name}`: expected an array, got list"):
        LIST_CASES[case]()


CHOICES = [
    (losses.jacobian_matching_loss, "outputs", losses.OUTPUT_MODES),
    (losses.vjp_projection_loss, "distribution", losses.DISTRIBUTIONS),
    (losses.jvp_projection_loss, "distribution", losses.DISTRIBUTIONS),
    (losses.sample_probes, "distribution", losses.DISTRIBUTIONS),
    (losses.noisy_distillation_loss, "kind", losses.NOISE_KINDS),
    (losses.squared_noise_expansion, "curvature", losses.CURVATURE_METHODS),
    (losses.cross_entropy_noise_expansion, "curvature", losses.CURVATURE_METHODS),
    (losses.weighted_laplacian, "method", ("exact", "hutchinson")),
]


@pytest.mark.parametrize("fn,name,values", CHOICES, ids=lambda v: getattr(v, "__name__", v))
def test_choice_arguments_are_typed_as_their_literal_values(fn, name, values):
    # The type a checker sees and the values the runtime check accepts are one list.
    assert typing.get_args(typing.get_type_hints(fn)[name]) == tuple(values)


# Every hyper-parameter of every public loss fed a bad value: a wrong type (a string, a
# bool where a number is expected, None), a non-finite or out-of-range number. Each is
# refused by the shared checks with an error naming the argument, before any compute.
NAN, INF = float("nan"), float("inf")
BAD = {
    "positive": [("str", "4", TypeError), ("bool", True, TypeError), ("None", None, TypeError),
                 ("nan", NAN, ValueError), ("inf", INF, ValueError),
                 ("negative", -1.0, ValueError), ("zero", 0.0, ValueError)],
    "count": [("str", "4", TypeError), ("bool", True, TypeError), ("float", 2.0, TypeError),
              ("nan", NAN, TypeError), ("zero", 0, ValueError), ("negative", -1, ValueError)],
    "choice": [("int", 3, TypeError), ("None", None, TypeError),
               ("unknown", "nope", ValueError)],
    "flag": [("str", "False", TypeError), ("None", None, TypeError)],
    "key": [("int", 0, TypeError), ("str", "key", TypeError)],
    "step": [("str", "0.01", TypeError), ("bool", True, TypeError),
             ("nan", NAN, ValueError), ("inf", INF, ValueError),
             ("negative", -1.0, ValueError), ("zero", 0.0, ValueError)],
    "remat_chunks": [("str", "2", TypeError), ("bool", True, TypeError),
                     ("float", 2.0, TypeError), ("zero", 0, ValueError)],
}
MAPS = lambda y: y[:, :, None, None]  # noqa: E731  [B, D] -> [B, D, 1, 1] feature map
HYPER = [
    ("distillation_loss", "temperature", "positive",
     lambda v: losses.distillation_loss(LOGITS, LOGITS, temperature=v)),
    ("jacobian_matching_loss", "k", "count",
     lambda v: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs="top_k", k=v)),
    ("jacobian_matching_loss", "eps", "positive",
     lambda v: losses.jacobian_matching_loss(STUDENT, TEACHER, X, eps=v)),
    ("jacobian_matching_loss", "outputs", "choice",
     lambda v: losses.jacobian_matching_loss(STUDENT, TEACHER, X, outputs=v)),
    ("jacobian_matching_loss", "normalize", "flag",
     lambda v: losses.jacobian_matching_loss(STUDENT, TEACHER, X, normalize=v)),
    ("jacobian_matching_loss", "remat_chunks", "remat_chunks",
     lambda v: losses.jacobian_matching_loss(STUDENT, TEACHER, X, remat_chunks=v)),
    *[(loss.__name__, arg, kind, functools.partial(
        lambda loss, arg, v: loss(STUDENT, TEACHER, X, **{"key": KEY, arg: v}), loss, arg))
      for loss in (losses.vjp_projection_loss, losses.jvp_projection_loss)
      for arg, kind in (("num_probes", "count"), ("distribution", "choice"), ("key", "key"),
                        ("remat_chunks", "remat_chunks"))],
    *[("finite_difference_loss", arg, kind, functools.partial(
        lambda arg, v: losses.finite_difference_loss(STUDENT, TEACHER, X,
                                                     **{"key": KEY, arg: v}), arg))
      for arg, kind in (("num_probes", "count"), ("distribution", "choice"), ("key", "key"),
                        ("step", "step"))],
    ("attention_jacobian_loss", "p", "positive",
     lambda v: losses.attention_jacobian_loss(MAPS, MAPS, X, p=v)),
    ("attention_jacobian_loss", "eps", "positive",
     lambda v: losses.attention_jacobian_loss(MAPS, MAPS, X, eps=v)),
    ("attention_transfer_loss", "p", "positive",
     lambda v: losses.attention_transfer_loss(MAPS(X), MAPS(X), p=v)),
    ("attention_map", "p", "positive", lambda v: losses.attention_map(MAPS(X), p=v)),
    ("attention_map", "eps", "positive", lambda v: losses.attention_map(MAPS(X), eps=v)),
    ("noisy_distillation_loss", "sigma", "positive",
     lambda v: losses.noisy_distillation_loss(STUDENT, TEACHER, X, key=KEY, sigma=v)),
    ("noisy_distillation_loss", "temperature", "positive",
     lambda v: losses.noisy_distillation_loss(STUDENT, TEACHER, X, key=KEY, sigma=0.1,
                                              temperature=v)),
    ("noisy_distillation_loss", "num_samples", "count",
     lambda v: losses.noisy_distillation_loss(STUDENT, TEACHER, X, key=KEY, sigma=0.1,
                                              num_samples=v)),
    ("noisy_distillation_loss", "kind", "choice",
     lambda v: losses.noisy_distillation_loss(STUDENT, TEACHER, X, key=KEY, sigma=0.1,
                                              kind=v)),
    ("noisy_distillation_loss", "key", "key",
     lambda v: losses.noisy_distillation_loss(STUDENT, TEACHER, X, key=v, sigma=0.1)),
    ("squared_noise_expansion", "sigma", "positive",
     lambda v: losses.squared_noise_expansion(STUDENT, TEACHER, X, sigma=v)),
    ("squared_noise_expansion", "curvature", "choice",
     lambda v: losses.squared_noise_expansion(STUDENT, TEACHER, X, sigma=0.1, curvature=v)),
    ("squared_noise_expansion", "num_probes", "count",
     lambda v: losses.squared_noise_expansion(STUDENT, TEACHER, X, sigma=0.1, key=KEY,
                                              curvature="hutchinson", num_probes=v)),
    ("cross_entropy_noise_expansion", "sigma", "positive",
     lambda v: losses.cross_entropy_noise_expansion(STUDENT, TEACHER, X, sigma=v)),
    ("cross_entropy_noise_expansion", "temperature", "positive",
     lambda v: losses.cross_entropy_noise_expansion(STUDENT, TEACHER, X, sigma=0.1,
                                                    temperature=v)),
    ("cross_entropy_noise_expansion", "curvature", "choice",
     lambda v: losses.cross_entropy_noise_expansion(STUDENT, TEACHER, X, sigma=0.1,
                                                    curvature=v)),
    ("cross_entropy_noise_expansion", "key", "key",
     lambda v: losses.cross_entropy_noise_expansion(STUDENT, TEACHER, X, sigma=0.1, key=v,
                                                    curvature="hutchinson")),
    ("weighted_laplacian", "method", "choice",
     lambda v: losses.weighted_laplacian(STUDENT, X, LOGITS, method=v)),
    ("weighted_laplacian", "num_probes", "count",
     lambda v: losses.weighted_laplacian(STUDENT, X, LOGITS, method="hutchinson", key=KEY,
                                         num_probes=v)),
    ("weighted_laplacian", "key", "key",
     lambda v: losses.weighted_laplacian(STUDENT, X, LOGITS, method="hutchinson", key=v)),
    ("sample_probes", "num_probes", "count", lambda v: losses.sample_probes(KEY, (4, 3), v)),
    ("sample_probes", "distribution", "choice",
     lambda v: losses.sample_probes(KEY, (4, 3), 1, distribution=v)),
    ("sample_probes", "key", "key", lambda v: losses.sample_probes(v, (4, 3), 1)),
    ("teacher_targets", "outputs", "choice",
     lambda v: losses.teacher_targets(TEACHER, X, outputs=v)),
    ("teacher_targets", "k", "count",
     lambda v: losses.teacher_targets(TEACHER, X, outputs="top_k", k=v)),
    ("teacher_targets", "num_probes", "count",
     lambda v: losses.teacher_targets(TEACHER, X, projections=("vjp",), key=KEY,
                                      num_probes=v)),
    ("teacher_targets", "distribution", "choice",
     lambda v: losses.teacher_targets(TEACHER, X, projections=("vjp",), key=KEY,
                                      distribution=v)),
    ("teacher_targets", "key", "key",
     lambda v: losses.teacher_targets(TEACHER, X, projections=("vjp",), key=v)),
    ("teacher_targets", "projections", "choice",
     lambda v: losses.teacher_targets(TEACHER, X, projections=(v,), key=KEY)),
    ("teacher_targets", "p", "positive",
     lambda v: losses.teacher_targets(TEACHER, X, teacher_feature_fn=MAPS, p=v)),
    ("teacher_targets", "eps", "positive",
     lambda v: losses.teacher_targets(TEACHER, X, teacher_feature_fn=MAPS, eps=v)),
]
HYPER_CASES = [pytest.param(call, arg, value, error, id=f"{loss}-{arg}-{what}")
               for loss, arg, kind, call in HYPER for what, value, error in BAD[kind]
               if not (kind == "choice" and value is None and arg == "outputs"
                       and loss == "teacher_targets")]  # outputs=None: no gradients


@pytest.mark.parametrize("call,arg,value,error", HYPER_CASES)
def test_every_hyper_parameter_fed_a_bad_value_is_refused_naming_it(call, arg, value, error):
    with pytest.raises(error, match=f"^`{arg}`") as info:
        call(value)
    assert "\n" not in str(info.value)


def test_every_public_loss_is_in_the_hyper_parameter_table():
    # A public function of the losses that takes a hyper-parameter and is not in the
    # table above would escape it: every name of jaxkd.losses that is a function is here.
    tabled = {loss for loss, *_ in HYPER} | {"logit_matching_loss"}
    functions = {name for name in losses.__all__ if callable(getattr(losses, name))
                 and not isinstance(getattr(losses, name), type)}
    assert functions == tabled


# Empty and mismatched batches of the losses of logits and feature maps (the losses of
# networks refuse an empty `x` above, and a student's batch that differs from `x`).
EMPTY_LOGITS = jnp.ones((0, 3))
BATCH_CASES = [
    ("empty", "student_logits", lambda: losses.distillation_loss(EMPTY_LOGITS, EMPTY_LOGITS)),
    ("empty", "student_logits", lambda: losses.logit_matching_loss(EMPTY_LOGITS, EMPTY_LOGITS)),
    ("empty", "student_features", lambda: losses.attention_transfer_loss(
        jnp.ones((0, 2, 2, 1)), jnp.ones((0, 2, 2, 1)))),
    ("empty", "features", lambda: losses.attention_map(jnp.ones((0, 2, 2, 1)))),
    ("mismatch", "student_logits", lambda: losses.distillation_loss(LOGITS, LOGITS[:3])),
    ("mismatch", "student_logits", lambda: losses.logit_matching_loss(LOGITS[:3], LOGITS)),
    ("mismatch", "student_features", lambda: losses.attention_transfer_loss(
        jnp.ones((3, 2, 2, 1)), jnp.ones((4, 2, 2, 1)))),
    ("mismatch", "teacher_fn(x)", lambda: losses.jacobian_matching_loss(
        STUDENT, lambda x: TEACHER(x)[:2], X)),
    ("mismatch", "labels", lambda: losses.jacobian_matching_loss(
        STUDENT, TEACHER, X, outputs="label", labels=jnp.zeros(3, jnp.int32))),
    ("mismatch", "labels", lambda: losses.teacher_targets(
        TEACHER, X, outputs="label", labels=jnp.zeros(5, jnp.int32))),
]


@pytest.mark.parametrize("what,arg,call", BATCH_CASES,
                         ids=[f"{w}-{a}-{i}" for i, (w, a, _) in enumerate(BATCH_CASES)])
def test_an_empty_or_mismatched_batch_is_refused_naming_the_argument(what, arg, call):
    with pytest.raises(ValueError, match=re.escape(f"`{arg}`")):
        call()
