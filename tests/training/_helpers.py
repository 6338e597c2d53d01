"""Tiny teacher/student pair and a restorable in-memory batch iterator for the tests."""

import numpy as np
from flax import nnx

from jaxkd import models

NUM_CLASSES = 5
BATCH = 16


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
            rng.integers(0, NUM_CLASSES, n).astype(np.int32))


def teacher() -> nnx.Module:
    return models.vgg9(1, NUM_CLASSES, width=2, rngs=nnx.Rngs(1))


def student() -> nnx.Module:
    return models.vgg4(1, NUM_CLASSES, width=2, rngs=nnx.Rngs(2))


class ArrayIterator:
    """Cycles through fixed arrays in shuffled epochs; position = (epoch, index).

    ``fail_at``: raise RuntimeError on that (0-based) call of ``next``, to simulate a kill.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int = BATCH, *, seed: int = 0,
                 fail_at: int | None = None):
        self.x, self.y, self.batch, self.seed = x, y, batch, seed
        self.epoch, self.index, self.calls, self.fail_at = 0, 0, 0, fail_at

    def __iter__(self):
        return self

    def __next__(self):
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("simulated kill")
        self.calls += 1
        if self.index + self.batch > len(self.x):
            self.epoch, self.index = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x))
        take = order[self.index:self.index + self.batch]
        self.index += self.batch
        return {"image": self.x[take], "label": self.y[take]}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
