"""Where a study runs: host devices per CPU core, the data mesh, the compilation cache.

On a CPU, XLA runs one program on one core unless it is given several host devices;
:func:`start_devices` gives it one per core (``num_cpu_devices = 0``) before JAX's
backend starts, so the experiments train data-parallel over every core, as they would
over the GPUs of a GPU host. Only the study's entry point calls it: the library never
changes JAX's devices.
"""

from __future__ import annotations

import math
import os
import platform

import jax
from ml_collections import ConfigDict

from experiments import _workdir
from experiments.configs._base import ConfigError
from jaxkd import training

CPU_DEVICES_ENV = "JAXKD_CPU_DEVICES"


def batch_sizes(config: ConfigDict) -> list[int]:
    """The training batch sizes of ``config`` (its ``*train.batch_size`` keys)."""
    return [config[name].batch_size for name in ("train", "teacher_train", "finetune_train")
            if name in config]


def cpu_device_count(config: ConfigDict, cores: int | None = None) -> int:
    """How many host devices a CPU run gets.

    ``$JAXKD_CPU_DEVICES`` if set, else ``config.num_cpu_devices``; 0 means one per core,
    lowered to the largest count that divides every training batch size (so the default
    runs on any machine). An explicit count must divide them.

    Raises:
      ConfigError: a count that is not a positive integer or does not divide a batch size.
    """
    env = os.environ.get(CPU_DEVICES_ENV, "").strip()
    source = f"${CPU_DEVICES_ENV}" if env else "config.num_cpu_devices"
    try:
        requested = int(env) if env else int(config.num_cpu_devices)
    except ValueError:
        raise ConfigError(f"{source} = {env!r}: expected a non-negative integer (0 = one "
                          f"per core).") from None
    if requested < 0:
        raise ConfigError(f"{source} = {requested}: expected a non-negative integer.")
    sizes = batch_sizes(config)
    common = math.gcd(*sizes) if sizes else 1
    if requested:
        if common % requested:
            raise ConfigError(f"{source} = {requested} does not divide the batch sizes "
                              f"{sizes}; choose a divisor of {common}.")
        return requested
    cores = cores or os.cpu_count() or 1
    return max(d for d in range(1, min(cores, common) + 1) if common % d == 0)


def start_devices(config: ConfigDict) -> int | None:
    """Sets ``jax_num_cpu_devices`` (:func:`cpu_device_count`) before JAX starts.

    Does nothing, and returns None, when the process already chose (``jax_num_cpu_devices``
    set, as a test session does, or a host device count in ``XLA_FLAGS``) or JAX's backend
    is already running (a notebook). Returns the count set otherwise. On a GPU or TPU
    host the setting only shapes the (unused) CPU backend.
    """
    count = cpu_device_count(config)
    if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or jax.config.jax_num_cpu_devices != -1):
        return None
    from jax._src import xla_bridge  # no public query for "has the backend started"
    if xla_bridge.backends_are_initialized():
        return None
    jax.config.update("jax_num_cpu_devices", count)
    return count


def start(config: ConfigDict, workdir: str) -> jax.sharding.Mesh:
    """Creates the work directory and (if configured) the compilation cache; the mesh."""
    _workdir.setup(workdir)
    if config.compilation_cache:
        enable_compilation_cache(workdir)
    return make_mesh(config)


def make_mesh(config: ConfigDict) -> jax.sharding.Mesh:
    """The data mesh over ``config.num_devices`` devices (0: all)."""
    return training.data_mesh(config.num_devices or None)


def enable_compilation_cache(workdir: str) -> None:
    """Keeps compiled XLA programs in ``workdir/jax_cache`` (unless a cache is set).

    Within one invocation each method's cells share one built step, so the step compiles
    once anyway; the cache saves the compilations of a second invocation (a resumed or
    extended sweep, study 2 after study 1).
    """
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir),
                                                               "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def environment(mesh: jax.sharding.Mesh) -> dict[str, str]:
    """Versions and devices, for the results' header."""
    import flax
    import optax
    devices = list(mesh.devices.flat)
    return {"python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__,
            "backend": jax.default_backend(), "devices": str(len(devices)),
            "device_kind": devices[0].device_kind, "cpu_cores": str(os.cpu_count())}
