"""Where a study runs: host devices per CPU core, the data mesh, the compilation cache.

The compilation cache is the user's own: ``$XDG_CACHE_HOME/jaxkd/jax_cache`` (default
``~/.cache/jaxkd/jax_cache``), mode 0700, never inside a work directory, and used only
when it and every directory above it are owned by this user or root and writable by no
one else (:func:`private_cache_dir`; docs/experiments.md, "Trust"); a cache directory
the user set is left as it is. On a CPU, :func:`start_devices` gives XLA one host
device per core before JAX's backend starts, so the studies train data-parallel over
every core; only a study's entry point calls it, never the library.
"""

from __future__ import annotations

import math
import os
import platform
import stat
import sys

import jax
from ml_collections import ConfigDict

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
    """Sets ``jax_num_cpu_devices`` (:func:`cpu_device_count`) before JAX starts and
    returns it; None when the process already chose or JAX's backend is running."""
    count = cpu_device_count(config)
    if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or jax.config.jax_num_cpu_devices != -1):
        return None
    from jax._src import xla_bridge  # no public query for "has the backend started"
    if xla_bridge.backends_are_initialized():
        return None
    jax.config.update("jax_num_cpu_devices", count)
    return count


def start(config: ConfigDict) -> jax.sharding.Mesh:
    """Enables the compilation cache if configured; returns the data mesh."""
    if config.compilation_cache:
        enable_compilation_cache()
    return make_mesh(config)


def make_mesh(config: ConfigDict) -> jax.sharding.Mesh:
    """The data mesh over ``config.num_devices`` devices (0: all)."""
    return training.data_mesh(config.num_devices or None)


def cache_dir() -> str:
    """``$XDG_CACHE_HOME/jaxkd/jax_cache`` (default ``~/.cache/jaxkd/jax_cache``)."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not base or not os.path.isabs(base):  # the XDG spec ignores relative paths
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxkd", "jax_cache")


def _unsafe(path: str) -> str | None:
    """Why ``path`` (a directory) is not private to this user, or None."""
    uid = os.getuid()
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid not in (uid, 0):
        return f"{path} belongs to another user (uid {st.st_uid})"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def private_cache_dir(path: str | None = None) -> tuple[str | None, str | None]:
    """``(directory, None)`` if the cache directory is private, else ``(None, why)``.

    Creates missing directories with mode 0700. The cache directory and its
    ``jaxkd`` parent must be this user's and writable by nobody else; every directory
    above must be this user's or root's and not writable by others unless sticky.
    """
    path = os.path.abspath(path or cache_dir())
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        for own in (path, os.path.dirname(path)):
            st = os.stat(own)
            if st.st_uid != os.getuid():
                return None, f"{own} belongs to another user (uid {st.st_uid})"
            if stat.S_IMODE(st.st_mode) & 0o077 and own == path:
                return None, (f"{own} is open to other users (mode "
                              f"{stat.S_IMODE(st.st_mode):o}; expected 700)")
        parent = os.path.dirname(path)
        while True:
            why = _unsafe(parent)
            if why:
                return None, why
            if os.path.dirname(parent) == parent:
                return path, None
            parent = os.path.dirname(parent)
    except OSError as e:
        return None, f"{path}: {e.strerror or e}"


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Keeps compiled XLA programs in the user's private cache (:func:`cache_dir`) for
    the next invocation; returns its directory, or None when it is not private (one line
    on stderr says why). A cache the user set is left alone."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    directory, why = private_cache_dir(path)
    if directory is None:
        print(f"note: compilation cache off: {why}.", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def environment(mesh: jax.sharding.Mesh) -> dict[str, str]:
    """Versions and devices, for the results' header."""
    import flax
    import optax
    devices = list(mesh.devices.flat)
    return {"python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__,
            "backend": jax.default_backend(), "devices": str(len(devices)),
            "device_kind": devices[0].device_kind, "cpu_cores": str(os.cpu_count())}
