"""Students in lockstep: M students of one architecture and one objective in one program.

A study trains many small students that differ only in their seed, their data (each seed
its own subset and order) and a few hyperparameters (the terms' weights, the learning
rate). On an accelerator one such step is launch-bound, so the students are trained
together: their states are stacked along a leading member axis ``[M, ...]`` and the
single-student step of :func:`jaxkd.training.make_train_step` runs under ``jax.vmap``,
one compiled program for the whole group.

* :class:`LockstepState`: the stacked :class:`TrainState` of the members (parameters,
  BatchNorm statistics as a separate stacked ``nnx.State``, optimizer state, step
  counters and one PRNG key per member), each member's term weights as ``[M]`` arrays,
  and ``failed_step``, the step at which each member first went non-finite;
* :func:`init_lockstep_state` builds one; :func:`make_lockstep_step` the jitted step;
  :func:`group_size_for_memory` bounds a group's size by XLA's compiled memory analysis.

**Per-member hyperparameters.** The term weights are arguments of the compiled step
(arrays, not Python floats), so a weight search compiles once. Learning rates: build the
optimizer with ``optax.inject_hyperparams`` (e.g.
``optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)``) and pass
``learning_rates=[...]``; they become the ``[M]`` leaf ``opt_state.hyperparams
["learning_rate"]``.

**Non-finite members are frozen.** After each step a member whose loss, term values or
gradient, update or parameter norm is not finite keeps its state of before that step
(its update is discarded, its step counter stays), ``failed_step`` records the 1-based
step it failed at (0 while it is finite), and it stays frozen from then on: the frozen
state is what the sequential run, which stops at that step with
:class:`NonFiniteLossError`, last saved. No quantity is reduced across members, so a
failed member cannot change another's numbers; the step's ``finite`` metric ``[M]``
says which members updated.

**BatchNorm.** The members' modules are never vmapped (flax's ``nnx.vmap`` over modules
with BatchNorm mixes up the statistics' axes); each member is split by
:func:`jaxkd.models.split` into ``params`` and ``rest`` (the running statistics), the
pure step is vmapped over the stacked states, and the train-mode batch statistics of a
member are those of its own batch.

**Same maths, and what reproduces bit for bit.** Member ``i``'s step is the very function
the sequential step runs, given member ``i``'s state, batch, weights and key, so its
trajectory is the sequential run's with the same seed, data and weights. What can differ
is float round-off: ``vmap`` turns each matmul into a batched matmul and each convolution
into a grouped convolution, which XLA may sum in another order than the unbatched
operation (it is free to on any backend; whether it does depends on the backend and the
shapes). Two orders of a length-``n`` float32 sum differ by at most
``2 n u sum_j |x_j y_j|``, ``u = 2**-24``; a few steps of a stable optimiser carry such
relative differences of order ``n u`` into the parameters, losses and statistics, not
more (``tests/training/test_lockstep.py`` checks ``2 n u T`` after ``T`` steps, ``n``
the largest fan-in). Exact by construction: the PRNG (member ``i``'s keys are the
sequential run's, ``fold_in(key_i, step)``), each member's data, the non-finite flags,
and everything of one member whatever the other members do (the members share no
reduction, so a frozen or diverging member leaves the others bit for bit as they are).

The batch is ``{"image": [M, B, ...], "label": [M, B]}`` (optionally
``"teacher_targets"`` with a leading ``[M]`` on every leaf), sharded ``P(None, "data")``:
each member's batch is split over the mesh as in the single-student step; the states are
replicated and donated. The teacher is shared by all members, a separate non-donated
argument as in :func:`make_train_step`. The resumable loop is
:func:`jaxkd.training.train_lockstep`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxkd import models
from jaxkd.sharding import DATA_AXIS, data_mesh, replicate, replicated
from jaxkd.training._objective import Objective
from jaxkd.training._step import (TrainState, _teacher_parts, _train_step, init_train_state)

Batch = Mapping[str, Any]
Metrics = dict[str, jax.Array]
# The per-member metrics whose non-finiteness freezes a member (besides "loss/<term>").
_CHECKED = ("loss", "grad_norm", "update_norm", "param_norm")


@struct.dataclass
class LockstepState:
    """The stacked state of M students trained in lockstep.

    Attributes:
      members: a :class:`TrainState` whose every leaf has a leading member axis ``[M]``
        (``step`` ``[M]`` int32, ``key`` ``[M]`` typed keys, ``params`` / ``rest`` /
        ``opt_state`` stacked); one shared ``graphdef``.
      weights: ``{term name: [M] float32}``, each member's term weights.
      failed_step: ``[M]`` int32, the 1-based step at which the member first went
        non-finite (its state is frozen since), 0 while it is finite.
    """
    members: TrainState
    weights: dict[str, jax.Array]
    failed_step: jax.Array

    @property
    def num_members(self) -> int:
        """``M``, the number of members."""
        return int(self.failed_step.shape[0])

    def member(self, i: int) -> TrainState:
        """Member ``i``'s :class:`TrainState` (``.model()`` is its student)."""
        return jax.tree.map(lambda leaf: leaf[i], self.members)


def stack_states(states: Sequence[TrainState]) -> TrainState:
    """Stacks single-student states of one architecture along a new leading axis.

    Raises:
      ValueError: no states, or students of different structure.
    """
    if not states:
        raise ValueError("stack_states needs at least one TrainState.")
    graphdef = states[0].graphdef
    structure: Any = jax.tree.structure(states[0])  # a PyTreeDef, compared with ==
    for i, s in enumerate(states[1:], 1):
        if s.graphdef != graphdef or not structure == jax.tree.structure(s):
            raise ValueError(f"state {i} is of another architecture or optimizer than "
                             f"state 0; lockstep members must share both.")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def init_lockstep_state(students: Sequence[nnx.Module], objective: Objective,
                        optimizer: optax.GradientTransformation, *,
                        keys: Sequence[jax.Array],
                        weights: Mapping[str, Sequence[float]] | None = None,
                        learning_rates: Sequence[float] | None = None) -> LockstepState:
    """A step-0 :class:`LockstepState` of ``students`` (their current parameters).

    Args:
      students: M NNX models of one architecture (e.g. one per seed).
      objective: the objective all members train on; its terms name the weights.
      optimizer: the optax transformation (one for all; ``optax.inject_hyperparams``
        for per-member learning rates).
      keys: M typed PRNG keys (``jax.random.key(seed_i)``): member ``i``'s step ``t``
        uses ``fold_in(keys[i], t)``, as a sequential run with that key does.
      weights: ``{term name: M weights}`` for some of the terms; the others keep
        ``Term.weight`` for every member.
      learning_rates: M learning rates; needs an ``optax.inject_hyperparams`` optimizer
        with a ``learning_rate`` hyperparameter.

    Returns:
      The stacked state; each member's arrays are copies (the step donates them).

    Raises:
      ValueError: lengths that are not M, a weight of no term, students of different
        architectures, or ``learning_rates`` without an injected learning rate.
    """
    m = len(students)
    if m == 0:
        raise ValueError("students is empty; lockstep needs at least one member.")
    if len(keys) != m:
        raise ValueError(f"keys has {len(keys)} entries for {m} students; pass one key "
                         f"per member.")
    names = [t.name for t in objective.terms]
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"weights names {unknown}, which are not terms of {objective!r} "
                         f"(terms: {names}).")
    stacked = {}
    for term in objective.terms:
        values = weights.get(term.name, [term.weight] * m)
        if len(values) != m:
            raise ValueError(f"weights[{term.name!r}] has {len(values)} entries for {m} "
                             f"students; pass one weight per member.")
        stacked[term.name] = jnp.asarray(values, jnp.float32)
    states = [init_train_state(s, optimizer, key=k) for s, k in zip(students, keys)]
    members = stack_states(states)
    if learning_rates is not None:
        members = _with_learning_rates(members, learning_rates, m)
    return LockstepState(members=members, weights=stacked,
                         failed_step=jnp.zeros((m,), jnp.int32))


def _with_learning_rates(members: TrainState, learning_rates: Sequence[float],
                         m: int) -> TrainState:
    hyper = getattr(members.opt_state, "hyperparams", None)
    if not isinstance(hyper, Mapping) or "learning_rate" not in hyper:
        raise ValueError("learning_rates needs an optimizer built with "
                         "optax.inject_hyperparams(...)(learning_rate=...) (its state "
                         "holds the rate as an array); got a state without one.")
    if len(learning_rates) != m:
        raise ValueError(f"learning_rates has {len(learning_rates)} entries for {m} "
                         f"students; pass one rate per member.")
    rate = hyper["learning_rate"]
    hyper = {**hyper, "learning_rate": jnp.asarray(learning_rates, rate.dtype)}
    return members.replace(opt_state=members.opt_state._replace(hyperparams=hyper))


def _finite(metrics: Metrics) -> jax.Array:
    checked = [v for k, v in metrics.items() if k in _CHECKED or k.startswith("loss/")]
    return jnp.all(jnp.stack([jnp.isfinite(v) for v in checked]))


def _lockstep_step(objective: Objective, optimizer: optax.GradientTransformation,
                   teacher_graphdef: nnx.GraphDef | None, state: LockstepState,
                   batch: Batch, teacher_vars: Any) -> tuple[LockstepState, Metrics]:
    def member(s: TrainState, b: Batch, w: dict[str, jax.Array], failed: jax.Array):
        new, metrics = _train_step(objective, optimizer, teacher_graphdef, s, b,
                                   teacher_vars, weights=w)
        finite = _finite(metrics)
        update = finite & (failed == 0)
        # A failed member keeps its last finite state: nothing non-finite is written.
        new = jax.tree.map(lambda a, b: jnp.where(update, a, b), new, s)
        failed = jnp.where((failed == 0) & ~finite, s.step + 1, failed)
        return new, failed, {**metrics, "finite": finite}

    members, failed, metrics = jax.vmap(member)(state.members, batch, state.weights,
                                                state.failed_step)
    return dataclasses.replace(state, members=members, failed_step=failed), metrics


def member_sharding(mesh: Mesh) -> NamedSharding:
    """``P(None, "data")``: the member axis whole, each member's batch over the mesh
    (place a lockstep batch with it: ``jax.device_put(batch, member_sharding(mesh))``)."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


@functools.lru_cache(maxsize=16)
def _jitted_lockstep_step(objective, optimizer, teacher_graphdef, mesh):
    return jax.jit(functools.partial(_lockstep_step, objective, optimizer, teacher_graphdef),
                   in_shardings=(replicated(mesh), member_sharding(mesh), replicated(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


@dataclasses.dataclass(frozen=True, eq=False)
class LockstepStep:
    """A built lockstep step: ``step(state, batch) -> (state, metrics)``.

    Attributes:
      jitted: the ``jax.jit`` function ``(state, batch, teacher_vars) -> (state,
        metrics)`` (for ``.lower(...)`` and XLA's memory analysis).
      teacher_vars: the teacher's ``(params, rest)`` placed replicated, or None.
      objective: the objective every member optimises.
      optimizer: the optax transformation.
      mesh: the ``("data",)`` mesh.
    """
    jitted: jax.stages.Wrapped  # (state, batch, teacher_vars) -> (state, metrics)
    teacher_vars: Any
    objective: Objective
    optimizer: optax.GradientTransformation
    mesh: Mesh

    def __call__(self, state: LockstepState, batch: Batch) -> tuple[LockstepState, Metrics]:
        return self.jitted(state, batch, self.teacher_vars)


def make_lockstep_step(objective: Objective, optimizer: optax.GradientTransformation,
                       mesh: Mesh | None = None, *,
                       teacher: nnx.Module | models.Split | None = None) -> LockstepStep:
    """Builds the jitted lockstep step ``step(state, batch) -> (state, metrics)``.

    ``state``: a :class:`LockstepState` (replicated, donated: do not reuse it);
    ``batch``: ``{"image": [M, B, H, W, C], "label": [M, B]}``, member ``i``'s batch at
    ``[i]`` (``B`` divisible by the mesh size), optionally ``"teacher_targets"`` (each
    member's :class:`jaxkd.losses.TeacherTargets`, stacked). Member ``i`` takes the
    step of :func:`make_train_step` with its own state, batch, weights and key; the
    maths and its round-off are described in docs/training.md (Students in lockstep).

    Metrics, each ``[M]``: those of :func:`make_train_step` (``loss``, ``loss/<term>``,
    ``accuracy``, ``grad_norm``, ``update_norm``, ``param_norm``; a failed member's are
    those of the discarded step) and ``finite`` (bool: the member's step was finite).

    Example::

      state = init_lockstep_state([student(seed) for seed in seeds], objective, opt,
                                  keys=[jax.random.key(s) for s in seeds],
                                  weights={"jacobian": [0.1, 1.0, 10.0]})
      step = make_lockstep_step(objective, opt, teacher=teacher)
      state, metrics = step(state, {"image": images, "label": labels})

    Returns:
      A :class:`LockstepStep`.
    """
    mesh = data_mesh() if mesh is None else mesh
    teacher_graphdef, teacher_vars = _teacher_parts(teacher)
    if (objective.needs_teacher and teacher_graphdef is None
            and objective.targets_options() is None):
        raise ValueError(f"{objective!r} has teacher terms but teacher is None (only an "
                         f"objective whose terms can all be fed teacher targets trains "
                         f"without the teacher).")
    if teacher_vars is not None:
        teacher_vars = replicate(teacher_vars, mesh)
    jitted = _jitted_lockstep_step(objective, optimizer, teacher_graphdef, mesh)
    return LockstepStep(jitted=jitted, teacher_vars=teacher_vars, objective=objective,
                        optimizer=optimizer, mesh=mesh)


def _peak_bytes(step: LockstepStep, state: Any, batch: Any) -> int:
    mem = step.jitted.lower(state, batch, step.teacher_vars).compile().memory_analysis()
    if mem is None:
        raise RuntimeError(f"XLA gives no memory analysis on {jax.default_backend()}: pass "
                           f"the group size by hand.")
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes
               + mem.temp_size_in_bytes - mem.alias_size_in_bytes)


def group_size_for_memory(step: LockstepStep, state: LockstepState, batch: Batch, *,
                          memory_bytes: int, fraction: float = 0.5,
                          max_members: int = 1024) -> int:
    """The most members whose lockstep step fits ``fraction`` of ``memory_bytes``.

    Compiles (without running) the step for 1 and 2 members, shaped like member 0 of
    ``state`` and ``batch``, and reads XLA's static peak memory ``peak(M)`` (arguments,
    outputs and temporaries, donated buffers once). The cost of a group is affine in
    ``M``: ``peak(M) = shared + M * per_member`` (the teacher and the program are shared,
    every member has its own state, batch and activations), so the bound is
    ``floor((fraction * memory_bytes - shared) / per_member)``, at least 1 and at most
    ``max_members``.

    Args:
      step: the built lockstep step.
      state: a lockstep state of any member count (only member 0's shapes are used).
      batch: a lockstep batch of it (``[M, B, ...]``).
      memory_bytes: the device's memory (e.g. ``device.memory_stats()["bytes_limit"]``).
      fraction: the share of it a group may take (the rest: the allocator's slack,
        evaluation, prefetched batches).
      max_members: the cap.

    Returns:
      The group size ``M`` (an int >= 1).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")

    def members(tree: Any, m: int) -> Any:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct((m, *a.shape[1:]), a.dtype), tree)

    one, two = (_peak_bytes(step, members(state, m), members(batch, m)) for m in (1, 2))
    per_member = max(two - one, 1)
    shared = one - per_member
    return int(min(max((fraction * memory_bytes - shared) // per_member, 1), max_members))
