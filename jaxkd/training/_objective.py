"""Objectives: a weighted sum of named loss terms, each an adapter to one jaxkd.losses function.

A term sees one :class:`TermInputs` (the batch, both networks' logits and feature maps,
and both networks as pure functions) and a PRNG key, and returns per-example values
``[batch_size]``. The objective is ``sum_i weight_i * mean_batch(term_i)``; every term's
unweighted batch mean is reported on its own, under ``"loss/<name>"``.

Which forward each term sees:

* ``student_logits`` / ``student_features`` come from the student's *train-mode* pass
  (BatchNorm batch statistics; this pass also updates the running statistics);
* ``student_fn`` / ``student_feature_fn`` are the student in *inference mode* (running
  statistics) as pure functions of ``x``, still differentiable in the student's
  parameters: the Jacobian and noise terms use them, so each example's input gradient is
  its own (see ``docs/training.md``);
* the teacher is always in inference mode and is a constant: its parameters are not an
  argument of the differentiated function, and the losses stop its gradient as well.

**Precomputed teacher targets.** The teacher's part of the distillation and Jacobian
terms does not depend on the student. A term that declares ``Term.targets`` (the
``jaxkd.losses.teacher_targets`` options it needs) can be fed a
:class:`jaxkd.losses.TeacherTargets` instead of the teacher (``TermInputs.teacher_targets``,
with ``teacher_logits`` its logits and no ``teacher_fn``): a step fed the targets never runs
the teacher. :meth:`Objective.targets_options` says which targets serve all its terms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import optax

from jaxkd import losses
from jaxkd.losses._jacobian import OutputMode
from jaxkd.losses._noise import NoiseKind
from jaxkd.losses._projection import Distribution

Fn = Callable[[jax.Array], jax.Array]
T = TypeVar("T")


def _teacher_field(value: T | None, field: str) -> T:
    """A teacher field of :class:`TermInputs` a teacher term reads, which must be given.

    :class:`Objective` refuses inputs without a teacher (or its targets) before any term
    runs, so this raises only for a term called on its own without one.
    """
    if value is None:
        raise _no_teacher(field)
    return value


def _no_teacher(field: str) -> ValueError:
    return ValueError(f"TermInputs.{field} is None, but this term reads the teacher; pass "
                      f"the teacher (or teacher targets) in the TermInputs.")


@dataclasses.dataclass(frozen=True)
class TermInputs:
    """What a loss term may use (``None`` where the objective has no teacher).

    Attributes:
      x: ``[B, H, W, C]`` images.
      labels: ``[B]`` integer labels.
      student_logits: ``[B, K]``, train-mode pass.
      student_features: ``{name: [B, H, W, C]}``, train-mode pass.
      teacher_logits: ``[B, K]``, inference mode (constant).
      teacher_features: ``{name: [B, H, W, C]}``, inference mode (constant).
      student_fn: pure inference-mode student ``x -> logits``.
      teacher_fn: pure teacher ``x -> logits``.
      student_feature_fn: ``name -> (x -> student feature map)``, inference mode.
      teacher_feature_fn: ``name -> (x -> teacher feature map)``.
      teacher_targets: the teacher's precomputed targets on this batch, or None; when
        given, ``teacher_logits`` are their logits and the teacher functions are None.
    """
    x: jax.Array
    labels: jax.Array
    student_logits: jax.Array
    student_features: Mapping[str, jax.Array]
    student_fn: Fn
    student_feature_fn: Callable[[str], Fn]
    teacher_logits: jax.Array | None = None
    teacher_features: Mapping[str, jax.Array] | None = None
    teacher_fn: Fn | None = None
    teacher_feature_fn: Callable[[str], Fn] | None = None
    teacher_targets: losses.TeacherTargets | None = None

    @property
    def teacher(self) -> Fn | losses.TeacherTargets | None:
        """What a Jacobian loss takes in ``teacher_fn``'s place: the targets when the
        batch carries them, else the teacher function."""
        return self.teacher_targets if self.teacher_targets is not None else self.teacher_fn


TermFn = Callable[[TermInputs, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Term:
    """A named, weighted loss term.

    Attributes:
      name: the metric name (``"loss/<name>"``); unique within an objective.
      weight: its weight in the total loss.
      fn: ``(inputs: TermInputs, key) -> [batch_size]`` per-example values.
      needs_teacher: whether ``fn`` reads the teacher fields.
      targets: the :func:`jaxkd.losses.teacher_targets` options of the precomputed
        targets ``fn`` can be fed instead of the teacher: ``{}`` when it reads only
        ``teacher_logits``, ``{"outputs": ..., "k": ...}`` when it reads input gradients
        through :attr:`TermInputs.teacher`, ``{"projection": "vjp" | "jvp" | "fd",
        "num_probes": ..., "distribution": ...}`` when it reads a projection's probes
        (drawn from the term's own key, see :meth:`Objective.targets_options`); None
        (the default) when it needs the teacher itself (its feature maps, noisy inputs).
    """
    name: str
    weight: float
    fn: TermFn
    needs_teacher: bool = True
    targets: Mapping[str, Any] | None = None


class Objective:
    """``loss = sum_i weight_i * mean(term_i)`` over named terms, each reported on its own.

    Example::

      objective = Objective(cross_entropy(), distillation(temperature=4.0),
                            jacobian_matching(10.0))
    """

    def __init__(self, *terms: Term):
        if not terms:
            raise ValueError("an Objective needs at least one term.")
        names = [t.name for t in terms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"term names must be unique; repeated: {dupes}. Pass name=... "
                             f"to tell two terms of the same kind apart.")
        self.terms: tuple[Term, ...] = tuple(terms)

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher for t in self.terms)

    def targets_options(self) -> dict[str, Any] | None:
        """The options of the :func:`jaxkd.training.make_targets_step` whose targets can
        stand for the teacher in every term, or None when none can.

        ``{"outputs", "k"}``: the input gradients the Jacobian terms read (``outputs``
        None when the terms read only the teacher's logits). With projection terms, also
        ``projections`` (their kinds), ``num_probes``, ``distribution`` and
        ``projection_term``: a term draws its probes from ``fold_in(step_key, i)``, ``i``
        its position in the objective, so targets computed with that key give the very
        probes the term would draw (one position for all the projection terms).

        None when the objective has no teacher term, or one of them needs the teacher
        itself (``Term.targets`` is None), or two need input gradients of different
        outputs, or two projection terms differ in position or probes.
        """
        if not self.needs_teacher:
            return None
        teacher_terms = [(i, t) for i, t in enumerate(self.terms) if t.needs_teacher]
        wanted = [(i, t.targets) for i, t in teacher_terms if t.targets is not None]
        if len(wanted) != len(teacher_terms):  # a term needs the teacher itself
            return None
        # k matters only for top_k: every other mode's targets serve any k.
        grads = {(w["outputs"], w.get("k", 1) if w["outputs"] == "top_k" else 1)
                 for _, w in wanted if w.get("outputs")}
        probes = {(i, w["num_probes"], w["distribution"])
                  for i, w in wanted if w.get("projection")}
        if len(grads) > 1 or len(probes) > 1:
            return None
        outputs, k = grads.pop() if grads else (None, 1)
        options: dict[str, Any] = {"outputs": outputs, "k": k}
        if probes:
            (index, num_probes, distribution), = probes
            options.update(
                projections=tuple(sorted({w["projection"] for _, w in wanted
                                          if w.get("projection")})),
                num_probes=num_probes, distribution=distribution, projection_term=index)
        return options

    def check_targets(self, targets: Any) -> None:
        """Raises ``ValueError`` unless this objective can be fed ``targets`` (a
        :class:`jaxkd.losses.TeacherTargets`) in the teacher's place."""
        where = "batch['teacher_targets']"
        if not isinstance(targets, losses.TeacherTargets):
            raise ValueError(f"{where} must be a jaxkd.losses.TeacherTargets (from "
                             f"teacher_targets or make_targets_step), got "
                             f"{type(targets).__name__}.")
        options = self.targets_options()
        if options is None:
            raise ValueError(
                f"{where}: {self!r} cannot be fed teacher targets (terms that need the "
                f"teacher itself: {self.terms_needing_teacher()}, or no teacher term); "
                f"leave the targets out of its batches.")
        if options["outputs"] is not None and (
                targets.outputs != options["outputs"]
                or (options["outputs"] == "top_k" and targets.k != options["k"])):
            raise ValueError(
                f"{where} holds targets of outputs={targets.outputs!r} (k={targets.k}); "
                f"{self!r} needs outputs={options['outputs']!r} (k={options['k']}): "
                f"compute them with objective.targets_options().")
        wanted = options.get("projections", ())
        if wanted and (not set(wanted) <= set(targets.projections)
                       or targets.num_probes != options["num_probes"]
                       or targets.distribution != options["distribution"]):
            raise ValueError(
                f"{where} holds projections {targets.projections} with num_probes="
                f"{targets.num_probes}, distribution={targets.distribution!r}; {self!r} "
                f"needs {wanted} with num_probes={options['num_probes']}, distribution="
                f"{options['distribution']!r}: compute them with "
                f"objective.targets_options().")

    def terms_needing_teacher(self) -> list[str]:
        """The teacher terms that cannot be fed precomputed targets."""
        return [t.name for t in self.terms if t.needs_teacher and t.targets is None]

    def __call__(self, inputs: TermInputs, key: jax.Array,
                 weights: Mapping[str, jax.Array] | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Returns ``(total scalar loss, {"loss/<name>": unweighted batch mean})``.

        ``weights``: ``{term name: float32 scalar}`` for every term, in place of the terms'
        own weights (traced arrays, so that one compiled step serves any weights, as the
        lockstep step's per-member weights do); None uses ``Term.weight``.
        """
        if weights is not None and set(weights) != {t.name for t in self.terms}:
            raise ValueError(f"weights must name every term of {self!r} once: expected "
                             f"{sorted(t.name for t in self.terms)}, got {sorted(weights)}.")
        if (self.needs_teacher and inputs.teacher_fn is None
                and inputs.teacher_targets is None):
            raise ValueError("this objective has teacher terms "
                             f"{[t.name for t in self.terms if t.needs_teacher]} "
                             "but no teacher (nor teacher targets) was given.")
        if inputs.teacher_fn is None and inputs.teacher_targets is not None:
            self.check_targets(inputs.teacher_targets)
        total = jnp.zeros((), jnp.float32)
        values = {}
        for i, term in enumerate(self.terms):
            per_example = term.fn(inputs, jax.random.fold_in(key, i))
            if per_example.shape != inputs.labels.shape:
                raise ValueError(f"term {term.name!r} returned shape {per_example.shape}; "
                                 f"expected per-example values {inputs.labels.shape}.")
            value = jnp.mean(per_example.astype(jnp.float32))
            values[f"loss/{term.name}"] = value
            weight = (jnp.float32(term.weight) if weights is None
                      else jnp.asarray(weights[term.name], jnp.float32))
            total = total + weight * value
        return total, values

    def __repr__(self) -> str:
        return "Objective(" + ", ".join(f"{t.name}*{t.weight:g}" for t in self.terms) + ")"


# ----------------------------------------------------------------------------------------
# Term constructors: one per loss of jaxkd.losses (plus the labels' cross-entropy).


def cross_entropy(weight: float = 1.0, *, name: str = "ce") -> Term:
    """Softmax cross-entropy of the student's train-mode logits with the labels.

    A label outside ``[0, K)`` gives ``NaN`` for its example (optax would read -1 as class
    K-1), so that the non-finite guard of the training loop reports it.
    """
    def fn(inputs: TermInputs, key: jax.Array) -> jax.Array:
        del key
        logits, labels = inputs.student_logits, inputs.labels
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return jnp.where((labels >= 0) & (labels < logits.shape[-1]), ce, jnp.nan)
    return Term(name, weight, fn, needs_teacher=False)


def distillation(weight: float = 1.0, *, temperature: float = 1.0,
                 name: str = "kd") -> Term:
    """Hinton KD ``tau^2 KL(softmax(t/tau) || softmax(s/tau))`` (:func:`distillation_loss`)."""
    def fn(inputs: TermInputs, key: jax.Array) -> jax.Array:
        del key
        return losses.distillation_loss(inputs.student_logits,
                                        _teacher_field(inputs.teacher_logits, "teacher_logits"),
                                        temperature=temperature)
    return Term(name, weight, fn, targets={})


def logit_matching(weight: float = 1.0, *, name: str = "logits") -> Term:
    """Squared error between logits, "match activations" (:func:`logit_matching_loss`)."""
    def fn(inputs: TermInputs, key: jax.Array) -> jax.Array:
        del key
        return losses.logit_matching_loss(
            inputs.student_logits, _teacher_field(inputs.teacher_logits, "teacher_logits"))
    return Term(name, weight, fn, targets={})


def jacobian_matching(weight: float = 1.0, *, outputs: OutputMode = "teacher_top1", k: int = 1,
                      normalize: bool = True, remat_chunks: int | None = None,
                      name: str = "jacobian") -> Term:
    """Exact Jacobian matching of the selected outputs (:func:`jacobian_matching_loss`).

    ``outputs``: ``"teacher_top1"``, ``"label"`` (uses the batch labels), ``"top_k"``
    (with ``k``) or ``"all"``; ``normalize=False`` is Proposition 1's squared form;
    ``remat_chunks=n`` rematerialises the term in ``n`` slices of the batch (less memory,
    one more student forward and backward pass).
    """
    if outputs not in losses.OUTPUT_MODES:
        raise ValueError(f"outputs must be one of {losses.OUTPUT_MODES}, got {outputs!r}.")

    def fn(inputs: TermInputs, key: jax.Array) -> jax.Array:
        del key
        teacher = inputs.teacher
        if teacher is None:  # by hand: a type variable would widen this union to object
            raise _no_teacher("teacher_fn")
        return losses.jacobian_matching_loss(
            inputs.student_fn, teacher, inputs.x,
            labels=inputs.labels if outputs == "label" else None,
            outputs=outputs, k=k, normalize=normalize, remat_chunks=remat_chunks)
    return Term(name, weight, fn, targets={"outputs": outputs, "k": k})


def vjp_projection(weight: float = 1.0, *, num_probes: int = 1,
                   distribution: Distribution = "rademacher",
                   remat_chunks: int | None = None, name: str = "vjp") -> Term:
    """Output-space random projection of ``||J_T - J_S||_F^2`` (:func:`vjp_projection_loss`)."""
    return _projection_term(losses.vjp_projection_loss, "vjp", weight, num_probes,
                            distribution, remat_chunks, name)


def jvp_projection(weight: float = 1.0, *, num_probes: int = 1,
                   distribution: Distribution = "rademacher",
                   remat_chunks: int | None = None, name: str = "jvp") -> Term:
    """Input-space random projection of ``||J_T - J_S||_F^2`` (:func:`jvp_projection_loss`)."""
    return _projection_term(losses.jvp_projection_loss, "jvp", weight, num_probes,
                            distribution, remat_chunks, name)


def _projection_term(loss: Callable[..., jax.Array], projection: str, weight: float,
                     num_probes: int, distribution: Distribution, remat_chunks: int | None,
                     name: str) -> Term:
    """A projection term: probes drawn from the term's key, or read from the targets.

    Fed targets, the loss takes the probes the targets hold, given the term's key: targets
    drawn with another key (``make_targets_step`` given the wrong step key or term
    position) make the loss ``NaN`` (the loss's check of a traced key), which the
    training loop's non-finite guard reports, rather than a silently different probe.
    """
    def fn(inputs: TermInputs, key: jax.Array) -> jax.Array:
        options = dict(num_probes=num_probes, distribution=distribution,
                       remat_chunks=remat_chunks)
        # Fed targets, the loss reads their probes and checks they were drawn with `key`.
        return loss(inputs.student_fn, inputs.teacher, inputs.x, key=key, **options)
    return Term(name, weight, fn, targets={"projection": projection,
                                           "num_probes": num_probes,
                                           "distribution": distribution})


def finite_difference(weight: float = 1.0, *, num_probes: int = 1,
                      distribution: Distribution = "rademacher", step: float | None = None,
                      name: str = "fd") -> Term:
    """Forward-passes-only estimate of ``||J_T - J_S||_F^2`` (:func:`finite_difference_loss`).

    Its probes come from the term's key, like a projection term's; it can be fed targets
    computed with the default step (``step=None``): an explicit ``step`` needs the teacher.
    """
    def fn(inputs: TermInputs, key: jax.Array) -> jax.Array:
        teacher = inputs.teacher
        if teacher is None:
            raise _no_teacher("teacher_fn")
        return losses.finite_difference_loss(inputs.student_fn, teacher, inputs.x,
                                             key=key, num_probes=num_probes,
                                             distribution=distribution, step=step)
    targets = None if step is not None else {"projection": "fd", "num_probes": num_probes,
                                             "distribution": distribution}
    return Term(name, weight, fn, targets=targets)


def noisy_distillation(weight: float = 1.0, *, sigma: float, num_samples: int = 1,
                       kind: NoiseKind = "squared", temperature: float = 1.0,
                       name: str = "noisy_kd") -> Term:
    """Distillation on Gaussian-perturbed inputs (:func:`noisy_distillation_loss`)."""
    def fn(inputs: TermInputs, key: jax.Array) -> jax.Array:
        teacher_fn = _teacher_field(inputs.teacher_fn, "teacher_fn")
        return losses.noisy_distillation_loss(inputs.student_fn, teacher_fn, inputs.x,
                                              key=key, sigma=sigma, num_samples=num_samples,
                                              kind=kind, temperature=temperature)
    return Term(name, weight, fn)


def attention_transfer(weight: float = 1.0, *, layers: Sequence[str], p: float = 2.0,
                       name: str = "attention") -> Term:
    """Attention transfer summed over the named taps (:func:`attention_transfer_loss`).

    Uses the student's train-mode feature maps and the teacher's inference-mode maps;
    taps of the same name must have the same spatial size.
    """
    layers = tuple(layers)
    if not layers:
        raise ValueError("attention_transfer needs at least one layer name.")

    def fn(inputs: TermInputs, key: jax.Array) -> jax.Array:
        del key
        teacher_features = _teacher_field(inputs.teacher_features, "teacher_features")
        for layer in layers:
            for who, feats in (("student", inputs.student_features),
                               ("teacher", teacher_features)):
                if layer not in feats:
                    raise KeyError(f"attention_transfer: the {who} has no feature tap "
                                   f"{layer!r}; taps: {sorted(feats)}.")
        return losses.attention_transfer_loss([inputs.student_features[n] for n in layers],
                                              [teacher_features[n] for n in layers],
                                              p=p)
    return Term(name, weight, fn)


def attention_jacobian(weight: float = 1.0, *, layer: str, p: float = 2.0,
                       remat_chunks: int | None = None,
                       name: str = "attention_jacobian") -> Term:
    """Input-gradient matching of one tap's attention peak (:func:`attention_jacobian_loss`)."""
    def fn(inputs: TermInputs, key: jax.Array) -> jax.Array:
        del key
        teacher_feature_fn = _teacher_field(inputs.teacher_feature_fn, "teacher_feature_fn")
        return losses.attention_jacobian_loss(inputs.student_feature_fn(layer),
                                              teacher_feature_fn(layer), inputs.x, p=p,
                                              remat_chunks=remat_chunks)
    return Term(name, weight, fn)
