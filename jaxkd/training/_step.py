"""The train state and the sharded, jitted train and evaluation steps.

One ``jax.jit`` per step with explicit shardings: batch ``P("data")``, everything else
replicated ``P()``, the train state donated. The teacher is not part of the state: its
``(params, rest)`` are a separate, non-donated argument that the differentiated function
never receives, so it is frozen by structure and never checkpointed.

A batch may carry the teacher's precomputed targets (``batch["teacher_targets"]``, a
:class:`jaxkd.losses.TeacherTargets` of the batch, e.g. from :func:`make_targets_step`):
the step then feeds them to the objective's terms and does not run the teacher.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from jaxkd import losses, models
from jaxkd.losses._jacobian import OutputMode
from jaxkd.losses._projection import Distribution
from jaxkd.sharding import data_mesh, data_sharding, replicate, replicated
from jaxkd.training._objective import Objective, TermInputs

Batch = Mapping[str, Any]
Metrics = dict[str, jax.Array]
# The batch entry that carries the teacher's precomputed targets.
TARGETS_KEY = "teacher_targets"


@struct.dataclass
class TrainState:
    """Everything a student's training needs and a checkpoint holds.

    Attributes:
      step: int32 scalar, number of updates applied.
      params: the student's ``nnx.Param`` state (differentiated).
      rest: the student's other state (BatchNorm running statistics).
      opt_state: the optax state.
      key: the base PRNG key; step ``t`` uses ``jax.random.fold_in(key, t)``.
      graphdef: the student's static structure (not a pytree leaf).
    """
    step: jax.Array
    params: nnx.State
    rest: nnx.State
    opt_state: optax.OptState
    key: jax.Array
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)

    if TYPE_CHECKING:
        # struct.dataclass adds ``replace`` at run time (``dataclasses.replace``); flax
        # declares it on PyTreeNode only, so it is declared here for type checkers.
        def replace(self, **changes: Any) -> TrainState: ...

    def model(self, *, train: bool = False) -> nnx.Module:
        """The student as an NNX module (inference mode unless ``train``)."""
        return models.merge(self.graphdef, self.params, self.rest, train=train)


def init_train_state(student: nnx.Module, optimizer: optax.GradientTransformation, *,
                     key: jax.Array) -> TrainState:
    """A step-0 state for ``student`` (its current parameters) and ``optimizer``.

    ``key`` is a typed PRNG key (``jax.random.key(seed)``). The state owns copies of the
    student's arrays: the train step donates its state, and donating arrays shared with
    ``student`` (or with a teacher it was copied from) would delete them under the caller.
    """
    graphdef, params, rest = models.split(student)
    params, rest = jax.tree.map(jnp.copy, (params, rest))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                      opt_state=optimizer.init(params), key=key, graphdef=graphdef)


def _teacher_parts(teacher: nnx.Module | models.Split | None):
    if teacher is None:
        return None, None
    parts = models.split(teacher) if isinstance(teacher, nnx.Module) else teacher
    return parts.graphdef, (parts.params, parts.rest)


def _train_step(objective: Objective, optimizer: optax.GradientTransformation,
                teacher_graphdef: nnx.GraphDef | None, state: TrainState, batch: Batch,
                teacher_vars: Any, weights: Mapping[str, jax.Array] | None = None
                ) -> tuple[TrainState, Metrics]:
    # ``weights``: the objective's term weights as arrays (see Objective.__call__); the
    # lockstep step passes each member's, this module's step passes None.
    key = jax.random.fold_in(state.key, state.step)
    x, labels = batch["image"], batch["label"]

    teacher = {}
    targets = batch.get(TARGETS_KEY)
    if targets is not None:
        objective.check_targets(targets)
        # The targets stand for the teacher: no teacher pass in this step.
        teacher = dict(teacher_logits=targets.logits, teacher_targets=targets)
    elif teacher_graphdef is not None:
        t_params, t_rest = jax.lax.stop_gradient(teacher_vars)
        t_logits, t_features, _ = models.apply(teacher_graphdef, t_params, t_rest, x)
        teacher = dict(
            teacher_logits=t_logits, teacher_features=t_features,
            teacher_fn=models.logits_fn(teacher_graphdef, t_params, t_rest),
            teacher_feature_fn=functools.partial(models.feature_fn, teacher_graphdef,
                                                 t_params, t_rest))

    def loss_fn(params):
        logits, features, new_rest = models.apply(state.graphdef, params, state.rest, x,
                                                  train=True)
        inputs = TermInputs(
            x=x, labels=labels, student_logits=logits, student_features=features,
            student_fn=models.logits_fn(state.graphdef, params, state.rest),
            student_feature_fn=functools.partial(models.feature_fn, state.graphdef, params,
                                                 state.rest),
            **teacher)
        loss, terms = objective(inputs, key, weights)
        return loss, (terms, new_rest, logits)

    (loss, (terms, new_rest, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss, **terms,
        "accuracy": jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32)),
        "grad_norm": optax.tree.norm(grads),
        "update_norm": optax.tree.norm(updates),
        "param_norm": optax.tree.norm(params),
    }
    new_state = state.replace(step=state.step + 1, params=params, rest=new_rest,
                              opt_state=opt_state)
    return new_state, metrics


@functools.lru_cache(maxsize=16)
def _jitted_train_step(objective, optimizer, teacher_graphdef, mesh):
    # Cached so that the same objective, optimizer, teacher structure and mesh share one
    # jitted function, hence one compilation (e.g. a resumed run in the same process).
    return jax.jit(functools.partial(_train_step, objective, optimizer, teacher_graphdef),
                   in_shardings=(replicated(mesh), data_sharding(mesh), replicated(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)),
                   donate_argnums=0)


@dataclasses.dataclass(frozen=True, eq=False)
class TrainStep:
    """A built train step: call it as ``step(state, batch) -> (state, metrics)``.

    Built by :func:`make_train_step`; pass one to :func:`jaxkd.training.train` (``step=``)
    to train several students with one compiled program.

    Attributes:
      jitted: the ``jax.jit`` function ``(state, batch, teacher_vars) -> (state, metrics)``
        (for ``.lower(...)`` / cost analysis).
      teacher_vars: the teacher's ``(params, rest)`` placed replicated on ``mesh``, or
        None without a teacher.
      objective: the objective the step optimises.
      optimizer: the optax transformation it applies.
      mesh: the ``("data",)`` mesh its shardings live on.
    """
    jitted: Callable[..., tuple[TrainState, Metrics]]
    teacher_vars: Any
    objective: Objective
    optimizer: optax.GradientTransformation
    mesh: Mesh

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        return self.jitted(state, batch, self.teacher_vars)


def make_train_step(objective: Objective, optimizer: optax.GradientTransformation,
                    mesh: Mesh | None = None, *,
                    teacher: nnx.Module | models.Split | None = None) -> TrainStep:
    """Builds the jitted train step ``step(state, batch) -> (state, metrics)``.

    ``batch`` is ``{"image": [B, H, W, C], "label": [B]}`` (``B`` divisible by the mesh
    size), sharded ``P("data")`` over ``mesh`` (default: all devices,
    :func:`jaxkd.training.data_mesh`; place batches with :func:`jaxkd.data.shard_batch`),
    optionally with ``"teacher_targets"``: the teacher's :class:`jaxkd.losses.TeacherTargets`
    on the batch (options ``objective.targets_options()``, e.g. from
    :func:`make_targets_step`), sharded alike; a step fed them does not run the teacher,
    and gives the loss and update of the step that runs it up to float round-off. Such
    an objective may then be built without ``teacher`` (every batch must carry targets);
    the state is replicated and donated (do not reuse the state you pass in). The step
    RNG is ``fold_in(state.key, state.step)``; terms get ``fold_in(that, term_index)``.

    The teacher (a module or a :class:`jaxkd.models.Split`) is captured once: its
    variables are placed replicated on the mesh (``TrainStep.teacher_vars``) and passed
    to the compiled step as a separate, non-donated argument; only the student's
    parameters are differentiated. A change to the teacher after this call is not seen
    (make a new step).

    Metrics (replicated scalars): ``loss``, ``loss/<term>`` for each term, ``accuracy``
    (train-mode logits), ``grad_norm``, ``update_norm``, ``param_norm``.

    Returns:
      A :class:`TrainStep`.
    """
    mesh = data_mesh() if mesh is None else mesh
    teacher_graphdef, teacher_vars = _teacher_parts(teacher)
    if (objective.needs_teacher and teacher_graphdef is None
            and objective.targets_options() is None):
        raise ValueError(f"{objective!r} has teacher terms but teacher is None (only an "
                         f"objective whose terms can all be fed teacher targets, with "
                         f"batches that carry them, trains without the teacher).")
    if teacher_vars is not None:
        teacher_vars = replicate(teacher_vars, mesh)
    return TrainStep(jitted=_jitted_train_step(objective, optimizer, teacher_graphdef, mesh),
                     teacher_vars=teacher_vars, objective=objective, optimizer=optimizer,
                     mesh=mesh)


def make_targets_step(teacher: nnx.Module | models.Split, mesh: Mesh | None = None, *,
                      outputs: str | None = None, k: int = 1,
                      projections: tuple[str, ...] = (), num_probes: int = 1,
                      distribution: str = "rademacher", projection_term: int = 0
                      ) -> Callable[..., losses.TeacherTargets]:
    """Builds the jitted ``targets_step(batch, key=None) -> TeacherTargets`` of ``teacher``.

    ``jaxkd.losses.teacher_targets`` of the teacher (inference mode) on ``batch["image"]``
    (with ``batch["label"]`` for ``outputs="label"``), computed with the shardings of the
    train step (batch ``P("data")``, teacher replicated): its result is what
    ``batch["teacher_targets"]`` of :func:`make_train_step` takes. Pass the objective's
    options: ``make_targets_step(teacher, mesh, **objective.targets_options())``.
    Computing the targets of a batch once and feeding them to several students saves
    every student step its teacher passes.

    With ``projections``, ``key`` is required: the train step's key of the step the
    batch is for, ``fold_in(state.key, state.step)`` (``fold_in(jax.random.key(seed),
    step)`` under :func:`train` with ``seed``). The probes are drawn from
    ``fold_in(key, projection_term)``, the key the objective gives its projection term,
    so a step fed these targets uses the probes it would have drawn; a step fed probes of
    another key gives ``NaN`` (reported by the training loop's non-finite guard).
    """
    mesh = data_mesh() if mesh is None else mesh
    graphdef, teacher_vars = _teacher_parts(teacher)
    if graphdef is None:
        raise ValueError("make_targets_step needs a teacher (a module or a models.Split).")
    teacher_vars = replicate(teacher_vars, mesh)
    projections = tuple(projections)
    jitted = _jitted_targets_step(graphdef, mesh, outputs, k, projections, num_probes,
                                  distribution, projection_term)

    def targets_step(batch: Batch, key: jax.Array | None = None) -> losses.TeacherTargets:
        if bool(projections) != (key is not None):
            raise ValueError(
                f"targets_step: `key` is required with projections {projections} (the "
                f"train step's key of the batch's step) and refused without them; got "
                f"{'no key' if key is None else 'a key'}.")
        return jitted(teacher_vars, batch["image"], batch["label"], key)
    return targets_step


@functools.lru_cache(maxsize=16)
def _jitted_targets_step(graphdef: nnx.GraphDef, mesh: Mesh, outputs: OutputMode | None,
                         k: int, projections: tuple[str, ...], num_probes: int,
                         distribution: Distribution, projection_term: int
                         ) -> Callable[..., losses.TeacherTargets]:
    def targets(teacher_vars: Any, x: jax.Array, labels: jax.Array,
                key: jax.Array) -> losses.TeacherTargets:
        t_params, t_rest = jax.lax.stop_gradient(teacher_vars)
        probes: dict[str, Any] = {}
        if projections:
            probes = dict(projections=projections, num_probes=num_probes,
                          distribution=distribution,
                          key=jax.random.fold_in(key, projection_term))
        return losses.teacher_targets(models.logits_fn(graphdef, t_params, t_rest), x,
                                      labels=labels if outputs == "label" else None,
                                      outputs=outputs, k=k, **probes)
    return jax.jit(targets, in_shardings=(replicated(mesh), data_sharding(mesh),
                                          data_sharding(mesh), replicated(mesh)),
                   out_shardings=data_sharding(mesh))


def _eval_step(state: TrainState, batch: Batch) -> Metrics:
    logits = models.logits_fn(state.graphdef, state.params, state.rest)(batch["image"])
    labels = batch["label"]
    mask = batch.get("mask", jnp.ones(labels.shape, jnp.float32))
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {"correct": jnp.sum(correct * mask), "loss_sum": jnp.sum(ce * mask),
            "count": jnp.sum(mask)}


def make_eval_step(mesh: Mesh | None = None) -> Callable[[TrainState, Batch], Metrics]:
    """Returns the jitted ``eval_step(state, batch) -> {"correct", "loss_sum", "count"}``.

    Inference mode (running statistics), batch sharded ``P("data")`` as in training,
    sums over the batch so that batches add up; an optional ``batch["mask"]`` ``[B]``
    float (1 real, 0 padding) excludes padded rows. :func:`evaluate` does the padding.
    ``mesh`` defaults to all devices, as in :func:`make_train_step` and ``train``.
    """
    return _jitted_eval_step(data_mesh() if mesh is None else mesh)


@functools.lru_cache(maxsize=16)
def _jitted_eval_step(mesh: Mesh):
    return jax.jit(_eval_step, in_shardings=(replicated(mesh), data_sharding(mesh)),
                   out_shardings=replicated(mesh))
