"""The teacher's targets of a data stream, computed once for all the students that read it.

Every cell of one size and seed trains on the same stream of batches (subset, shuffling
and augmentation come from ``(examples_per_class, seed)``), and the teacher's part of a
distillation step (its logits, input gradients, probe products: the probes too are
drawn from the seed and step) is the same for every method on it. :class:`SharedTargets`
computes a batch's targets once (:func:`jaxkd.training.make_targets_step`), keyed by
the batch's position in the stream, and attaches them (``batch["teacher_targets"]``)
for every method whose objective can be fed them. They are a deterministic function of
the teacher, the batch and its step, so a resumed cell gets the same numbers. Only the
current stream's are kept, at most ``max_bytes``; beyond, each method computes its own.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import jax

from jaxkd import data, losses, models, training

# What the targets of one stream may hold in memory (device memory on an accelerator).
MAX_BYTES = 1 << 30


def stream_options(objectives: list[training.Objective]) -> dict[str, Any] | None:
    """The targets' options that serve the most of ``objectives``: the input gradients
    of the first objective that needs them (every method of a study shares one
    ``loss.<term>`` config, so they agree), the projections of every objective whose
    probes agree with the first one's (kinds, count, distribution and term position),
    else the logits alone; None when no objective can be fed targets."""
    options = [o.targets_options() for o in objectives]
    options = [o for o in options if o is not None]
    if not options:
        return None
    stream = {k: v for k, v in next((o for o in options if o["outputs"] is not None),
                                    options[0]).items() if k in ("outputs", "k")}
    probing = [o for o in options if o.get("projections")]
    if probing:
        probes = {k: probing[0][k] for k in PROBE_KEYS}
        kinds = {kind for o in probing if {k: o[k] for k in PROBE_KEYS} == probes
                 for kind in o["projections"]}
        stream.update(probes, projections=tuple(sorted(kinds)))
    return stream


# What projections' targets must agree on besides their kinds.
PROBE_KEYS = ("num_probes", "distribution", "projection_term")


def serves(stream: Mapping[str, Any] | None, objective: training.Objective) -> bool:
    """Whether targets computed with the ``stream`` options serve ``objective``."""
    wanted = objective.targets_options()
    if stream is None or wanted is None:
        return False
    if wanted["outputs"] is not None and (wanted["outputs"], wanted["k"]) != (
            stream["outputs"], stream["k"]):
        return False
    if wanted.get("projections"):
        return (set(wanted["projections"]) <= set(stream.get("projections", ()))
                and all(wanted[k] == stream[k] for k in PROBE_KEYS))
    return True


class SharedTargets:
    """The teacher's targets of the current stream's batches, by position.

    With projections in ``options``, the probes of the batch at step ``t`` are drawn
    from the train step's key of that step, ``fold_in(key(seed), t)`` (the students'
    ``training.train`` seed is the stream's), so a student fed them uses the very probes
    it would have drawn; ``t`` follows from the stream's position (:func:`step_of`).
    """

    def __init__(self, teacher: models.Split, mesh: Any, options: Mapping[str, Any], *,
                 max_bytes: int = MAX_BYTES):
        self.options = dict(options)
        self._step = training.make_targets_step(teacher, mesh, **self.options)
        self._sharding = data.data_sharding(mesh)
        self._max_bytes = max_bytes
        self._stream: Hashable | None = None
        self._held: dict[str, losses.TeacherTargets] = {}
        self._bytes = 0
        self.computed = 0  # targets computed (for the tests: once per batch of a stream)

    def feed(self, stream: Hashable, batches: Iterator[Mapping[str, Any]], *, seed: int,
             batch_size: int, num_examples: int) -> "WithTargets":
        """``batches`` (restorable, of the stream named ``stream``: batches of
        ``batch_size`` of ``num_examples`` examples, for students trained with ``seed``)
        with their targets."""
        if stream != self._stream:
            self._stream, self._held, self._bytes = stream, {}, 0
        self._seed, self._shape = seed, dict(batch_size=batch_size, num_examples=num_examples)
        return WithTargets(batches, self._targets)

    def _targets(self, position: Mapping[str, Any], batch: Mapping[str, Any]
                 ) -> losses.TeacherTargets:
        name = json.dumps(position, sort_keys=True)
        if name in self._held:
            return self._held[name]
        placed = data.shard_batch({"image": batch["image"], "label": batch["label"]},
                                  self._sharding)
        key = None
        if self.options.get("projections"):
            key = jax.random.fold_in(jax.random.key(self._seed),
                                     step_of(position, **self._shape))
        targets = self._step(placed, key)
        self.computed += 1
        size = sum(leaf.nbytes for leaf in jax.tree.leaves(targets))
        if self._bytes + size <= self._max_bytes:
            self._held[name] = targets
            self._bytes += size
        return targets


def step_of(position: Mapping[str, Any], *, batch_size: int, num_examples: int) -> int:
    """The batches a training :class:`jaxkd.data.BatchIterator` (``drop_remainder``) of
    ``num_examples`` has yielded at ``position`` (``{"epoch", "index"}``, ``index`` the
    examples of the epoch already yielded): the train step the next batch is for. At an
    epoch's end (fewer than ``batch_size`` examples left) the count is the next epoch's
    start, as it should be: the next batch is that epoch's first."""
    return (int(position["epoch"]) * (num_examples // batch_size)
            + int(position["index"]) // batch_size)


class WithTargets:
    """A restorable batch iterator whose batches carry the teacher's targets."""

    def __init__(self, batches: Iterator[Mapping[str, Any]], targets):
        self._batches, self._targets = batches, targets

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        position = self._batches.get_state()
        batch = next(self._batches)
        return {**batch, training.TARGETS_KEY: self._targets(position, batch)}

    def get_state(self) -> dict[str, Any]:
        return self._batches.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._batches.set_state(state)
