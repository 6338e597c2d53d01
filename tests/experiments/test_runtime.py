"""experiments._runtime: one host device per CPU core by default, as many as divide
every batch size; the compilation cache is the user's own, never the work directory's."""

import os

import pytest

from experiments import _cli, _runtime
from experiments.configs._base import ConfigError


@pytest.fixture
def no_cache_set():
    """JAX's compilation-cache settings as a user who set none has them (the suite sets
    its own cache, tests/conftest.py), restored after the test."""
    import jax
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    saved = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    for key, value in saved.items():
        jax.config.update(key, value)


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


def test_the_cache_lives_in_the_users_private_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = str(tmp_path / "xdg" / "jaxkd" / "jax_cache")
    assert _runtime.cache_dir() == expected
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the spec says
    assert _runtime.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "jaxkd",
                                                "jax_cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    directory, why = _runtime.private_cache_dir()
    assert (directory, why) == (expected, None)
    assert os.stat(expected).st_mode & 0o777 == 0o700


def test_a_cache_dir_open_to_others_is_not_used(no_cache_set, tmp_path, monkeypatch, capsys):
    import jax
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # group- and world-writable, not sticky: anyone could swap entries
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    directory, why = _runtime.private_cache_dir()
    assert directory is None and "is writable by other users (mode 777)" in why
    assert jax.config.jax_compilation_cache_dir is None
    assert _runtime.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None
    assert capsys.readouterr().err.startswith("note: compilation cache off: ")
    # The cache directory itself opened up.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "mine"))
    path, _ = _runtime.private_cache_dir()
    os.chmod(path, 0o770)
    assert _runtime.private_cache_dir()[0] is None


def test_start_never_puts_a_cache_in_the_work_directory(no_cache_set, smoke, tmp_path,
                                                        monkeypatch):
    import jax
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = smoke("limited_data_digits", compilation_cache=True)
    _runtime.start(config)
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "jaxkd" /
                                                       "jax_cache")
    assert not os.path.exists(tmp_path / "work" / "jax_cache")


def test_a_cache_the_user_set_is_left_alone(no_cache_set, tmp_path, monkeypatch):
    import jax
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    assert _runtime.enable_compilation_cache() == str(tmp_path / "mine")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    assert not os.path.exists(tmp_path / "xdg" / "jaxkd")
