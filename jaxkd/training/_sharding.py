"""Device meshes, replicated placement and the guarded multi-host start.

Data parallelism only: a 1-D mesh with axis ``"data"``; batches are split along their
leading axis (``P("data")``, placed by :func:`jaxkd.data.shard_batch`), parameters and
optimizer state are replicated (``P()``).
Across hosts, every process runs the same program on its own slice of the global batch;
JAX's ``jax.distributed.initialize()`` must run first, on every host, before anything
touches a device. :func:`initialize_distributed` is that call, made only when asked or
when the environment says the job spans several processes.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxkd.data._sharding import DATA_AXIS, auto_mesh

# Variables that launchers set when a job spans several processes.
_MULTIPROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS",
                     "MEGASCALE_COORDINATOR_ADDRESS")
_WORLD_SIZE_ENV = ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                   "WORLD_SIZE")


def multi_process_env() -> bool:
    """Whether the environment describes a multi-process (multi-host) job.

    True when a coordinator address is set, a launcher reports more than one task
    (``SLURM_NTASKS``, ``OMPI_COMM_WORLD_SIZE``, ``WORLD_SIZE``, ``JAX_NUM_PROCESSES``),
    or a multi-host TPU slice lists several workers (``TPU_WORKER_HOSTNAMES``).
    """
    env = os.environ
    if any(env.get(name) for name in _MULTIPROCESS_ENV):
        return True
    for name in _WORLD_SIZE_ENV:
        try:
            if int(env.get(name, "1")) > 1:
                return True
        except ValueError:
            pass
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed(*, force: bool = False, **kwargs: Any) -> bool:
    """Calls ``jax.distributed.initialize(**kwargs)`` when asked or when multi-host.

    Call it first thing in ``main``, before any other JAX call. It does nothing (and
    returns False) on a single host unless ``force=True``; it is a no-op when JAX's
    distributed runtime is already up. On Cloud TPU, SLURM and Open MPI,
    ``jax.distributed.initialize()`` finds the coordinator itself; elsewhere pass
    ``coordinator_address=..., num_processes=..., process_id=...``.

    Returns:
      Whether the distributed runtime is initialised after the call.
    """
    if jax.distributed.is_initialized():
        return True
    if not (force or kwargs or multi_process_env()):
        return False
    jax.distributed.initialize(**kwargs)
    return True


def is_main_process() -> bool:
    """True on process 0, the only one that writes logs and metric files."""
    return jax.process_index() == 0


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D ``("data",)`` mesh over the first ``num_devices`` devices (default: all)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}.")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                         devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P())``: a full copy on every device."""
    return NamedSharding(auto_mesh(mesh), P())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` placed whole on every device of ``mesh`` (one process or several).

    ``jax.device_put`` refuses a sharding with other processes' devices, so across
    processes each array is assembled from the copy that every process holds (the
    student was built from the same seed everywhere) with ``make_array_from_callback``.
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                            impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)
