"""The studies' configs in their ``smoke`` mode: the full pipeline in seconds on a CPU."""

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
