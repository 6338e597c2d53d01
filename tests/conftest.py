"""Test-wide settings: strict numerics, 8 fake CPU devices, deterministic hypothesis."""

import os
import shutil
import tempfile

# Eight fake CPU devices for the sharding tests; must precede the first backend use.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One XLA compilation cache for the run, shared by its pytest-xdist workers and the
# processes the tests start (they inherit the environment): a program that several tests
# build (the smoke teacher, a study cell, a loss at the shared shapes) compiles once.
# XLA's compiles dominate the suite. The directory is new for each run and removed after
# it, so the suite's time is a cold run's; a cache the user set is left alone.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="jaxkd-test-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# As in equinox's tests: no silent rank promotion anywhere in the library. Strict *dtype*
# promotion is on for the loss tests only (tests/losses/conftest.py): optax's optimisers
# themselves mix Python floats with int32 step counts and fail under it.
jax.config.update("jax_numpy_rank_promotion", "raise")

# Deterministic property tests: the same examples every run, no deadline (XLA compiles
# make the first example slow), few examples because each distinct shape compiles.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=15,
                          print_blob=True)
settings.load_profile("ci")


@pytest.fixture
def x64():
    """Runs the test with 64-bit types enabled (for round-off-limited tolerances)."""
    with jax.enable_x64(True):
        yield


def pytest_unconfigure(config):
    """The process that made the run's compilation cache removes it."""
    del config
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The modules with end-to-end runs (marked ``slow``) first, each module kept whole.

    Under pytest-xdist the longest tests then start at once on their own workers while
    the others take the rest, instead of finishing the run alone; whole modules keep
    their module-scoped fixtures set up once.
    """
    del config
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)
