"""The studies' configs in their ``smoke`` mode: the full pipeline in seconds on a CPU, and
a tiny Fashion-MNIST for the configs that read it.

The suite must not need Debian's ``dataset-fashion-mnist``: :func:`write_fashion` writes
a small Fashion-MNIST (10 classes, 12x12 grey images) under ``<root>/fashion_mnist/``,
which ``jaxkd.data.load("fashion_mnist", data_dir=<root>)`` reads before the system copy.
"""

import gzip
from pathlib import Path

import numpy as np
import pytest

from experiments import _cli
from jaxkd import training


class Trained(Exception):
    """Something started to train (or loaded data) where nothing may."""


def smoke_config(name: str, **values):
    """``get_config("smoke")`` of config ``name``, with ``values`` set (dotted keys)."""
    config = _cli.load_config(f"{name}:smoke")
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


@pytest.fixture
def smoke():
    return smoke_config


@pytest.fixture
def nothing_trains(monkeypatch):
    """``jaxkd.training.train`` and ``make_train_step`` raise :class:`Trained`; returns
    ``monkeypatch`` to refuse more (e.g. the data loader)."""
    def refuse(*args, **kwargs):
        raise Trained
    monkeypatch.setattr(training, "train", refuse)
    monkeypatch.setattr(training, "make_train_step", refuse)
    return monkeypatch


def _idx(array: np.ndarray) -> bytes:
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_fashion(root: Path, *, train_per_class: int = 20, test_per_class: int = 4,
                  size: int = 12) -> str:
    """A learnable 10-class IDX set: each class a brighter square at its own place."""
    directory = root / "fashion_mnist"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 80, (len(labels), size, size), dtype=np.uint8)
        for i, y in enumerate(labels):
            r, c = divmod(int(y), 4)
            images[i, 3 * r:3 * r + 3, 3 * c:3 * c + 3] = 250
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            (directory / f"{stem}-{kind}-ubyte.gz").write_bytes(gzip.compress(_idx(array)))
    return str(root)
