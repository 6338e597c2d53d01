"""The studies' configs in their ``smoke`` mode: the full pipeline in seconds on a CPU."""

import pytest

from experiments import _cli


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
