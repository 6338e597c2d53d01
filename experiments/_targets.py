"""The teacher's targets of a data stream, computed once for all the students that read it.

Every cell of one size and seed trains on the same stream of batches: the subset, the
shuffling and the augmentation draws all come from ``(examples_per_class, seed)``. A
distillation student's step spends most of its work on the teacher (its logits and the
input gradients of its top-1 output), which is the same for every method on that stream.
:class:`SharedTargets` computes the teacher's targets of a batch once
(:func:`jaxkd.training.make_targets_step`), keeps them by the batch's position in the
stream, and attaches them to the batch (``batch["teacher_targets"]``) for every method
whose objective can be fed them; the train step then does not run the teacher.

The targets of a position are a deterministic function of the teacher and the batch, so
a resumed cell, which recomputes the ones it no longer holds, gets the same numbers.
Only the current stream's targets are kept (the sweep runs one size and seed at a time),
and at most ``max_bytes`` of them; beyond, they are computed per method as they are
needed.
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
    ``loss.<term>`` config, so they agree), else the logits alone; None when no objective
    can be fed targets."""
    options = [o.targets_options() for o in objectives]
    options = [o for o in options if o is not None]
    if not options:
        return None
    return next((o for o in options if o["outputs"] is not None), options[0])


def serves(stream: Mapping[str, Any] | None, objective: training.Objective) -> bool:
    """Whether targets computed with the ``stream`` options serve ``objective``."""
    wanted = objective.targets_options()
    if stream is None or wanted is None:
        return False
    return wanted["outputs"] is None or wanted == dict(stream)


class SharedTargets:
    """The teacher's targets of the current stream's batches, by position."""

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

    def feed(self, stream: Hashable, batches: Iterator[Mapping[str, Any]]) -> "WithTargets":
        """``batches`` (restorable, of the stream named ``stream``) with their targets."""
        if stream != self._stream:
            self._stream, self._held, self._bytes = stream, {}, 0
        return WithTargets(batches, self._targets)

    def _targets(self, position: str, batch: Mapping[str, Any]) -> losses.TeacherTargets:
        if position in self._held:
            return self._held[position]
        placed = data.shard_batch({"image": batch["image"], "label": batch["label"]},
                                  self._sharding)
        targets = self._step(placed)
        self.computed += 1
        size = sum(leaf.nbytes for leaf in jax.tree.leaves(targets))
        if self._bytes + size <= self._max_bytes:
            self._held[position] = targets
            self._bytes += size
        return targets


class WithTargets:
    """A restorable batch iterator whose batches carry the teacher's targets."""

    def __init__(self, batches: Iterator[Mapping[str, Any]], targets):
        self._batches, self._targets = batches, targets

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        position = json.dumps(self._batches.get_state(), sort_keys=True)
        batch = next(self._batches)
        return {**batch, training.TARGETS_KEY: self._targets(position, batch)}

    def get_state(self) -> dict[str, Any]:
        return self._batches.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._batches.set_state(state)
