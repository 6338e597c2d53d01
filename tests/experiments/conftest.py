"""Tiny configs of the studies: the full pipeline in seconds on a CPU."""

import pytest

from experiments import _common

# One device (the test session fakes eight; a tiny step on eight CPU "devices" is slower),
# no persistent compilation cache (it is process-global state), tiny networks and steps.
TINY = {
    "num_devices": "1",
    "compilation_cache": "false",
    "num_seeds": "1",
    "train.num_steps": "12",
    "train.batch_size": "10",
    "train.num_evals": "2",
    "teacher_train.num_steps": "10",
    "teacher_train.batch_size": "32",
    "teacher_train.num_evals": "1",
}


def tiny_config(name: str, **overrides: str):
    config = _common.load_config(name)
    for key, value in {**TINY, **overrides}.items():
        _common.apply_override(config, key, value)
    return config


@pytest.fixture
def tiny():
    return tiny_config
