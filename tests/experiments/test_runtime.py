"""One host device per CPU core by default, as many as divide every batch size."""

import pytest

from experiments import _cli, _runtime
from experiments.configs._base import ConfigError


@pytest.fixture
def config():
    return _cli.load_config("limited_data_digits")  # batch sizes 40 (students), 64 (teacher)


@pytest.mark.parametrize("cores,expected", [(1, 1), (2, 2), (3, 2), (6, 4), (8, 8), (64, 8)])
def test_one_device_per_core_that_divides_the_batches(config, monkeypatch, cores, expected):
    monkeypatch.delenv(_runtime.CPU_DEVICES_ENV, raising=False)
    assert _runtime.batch_sizes(config) == [40, 64]
    assert _runtime.cpu_device_count(config, cores=cores) == expected


def test_config_key_and_environment_override(config, monkeypatch):
    monkeypatch.delenv(_runtime.CPU_DEVICES_ENV, raising=False)
    config.num_cpu_devices = 4
    assert _runtime.cpu_device_count(config, cores=2) == 4
    monkeypatch.setenv(_runtime.CPU_DEVICES_ENV, "1")
    assert _runtime.cpu_device_count(config, cores=16) == 1
    monkeypatch.setenv(_runtime.CPU_DEVICES_ENV, "3")
    with pytest.raises(ConfigError, match=r"\$JAXKD_CPU_DEVICES = 3 does not divide the "
                                          r"batch sizes \[40, 64\]"):
        _runtime.cpu_device_count(config)
    monkeypatch.setenv(_runtime.CPU_DEVICES_ENV, "many")
    with pytest.raises(ConfigError, match="expected a non-negative integer"):
        _runtime.cpu_device_count(config)


def test_a_process_that_chose_its_devices_is_left_alone(config, monkeypatch):
    """The test session set 8 host devices (tests/conftest.py), started or not: kept."""
    import jax
    monkeypatch.delenv(_runtime.CPU_DEVICES_ENV, raising=False)
    assert jax.config.jax_num_cpu_devices == 8
    assert _runtime.start_devices(config) is None
    assert jax.config.jax_num_cpu_devices == 8 and jax.device_count() == 8
