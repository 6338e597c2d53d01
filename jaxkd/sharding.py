"""Scale-out: device meshes, batch placement, replicated state, the multi-host start.

Data parallelism only. A 1-D mesh with axis ``"data"`` (:func:`data_mesh`); batches are
split along their leading axis (``PartitionSpec("data")``, :func:`data_sharding`) and
placed by :func:`shard_batch`, the one path from host arrays to a batch on the devices;
parameters and optimizer state are replicated (``PartitionSpec()``, :func:`replicate`).
Every process passes *its own rows* of the global batch: :func:`shard_batch` assembles
the global array with ``jax.make_array_from_process_local_data``, so one host and many
hosts take the same call. Across hosts ``jax.distributed.initialize()`` must run first,
on every host, before anything touches a device: :func:`initialize_distributed` is that
call, made only when asked or when the environment says the job spans several processes.

:class:`jaxkd.data.BatchIterator` (``sharding=``), :func:`jaxkd.training.train` and
:func:`jaxkd.training.evaluate` place batches here; ``jaxkd.data`` and
``jaxkd.training`` re-export these names.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS", "auto_mesh", "data_mesh", "data_sharding", "initialize_distributed",
    "is_main_process", "multi_process_env", "num_batch_shards", "replicate", "replicated",
    "shard_batch",
]

DATA_AXIS = "data"


def auto_mesh(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis of type ``Auto`` (compiler-propagated shardings).

    ``jax.make_mesh`` now defaults to ``Explicit`` axes, under which every intermediate
    array carries its sharding in its type and the losses' ``jax.vjp`` / ``jax.jvp``
    calls would need sharded cotangents. The train and evaluation steps only fix the
    shardings of inputs and outputs and let XLA propagate the rest, so batches and
    states are placed on the ``Auto`` form of the mesh.
    """
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names,
                axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def data_sharding(mesh: Mesh, axis: str = DATA_AXIS) -> NamedSharding:
    """Splits the leading (batch) axis over ``axis`` of ``mesh``.

    Returns:
        ``NamedSharding(mesh, PartitionSpec(axis))`` on the ``Auto``-axes form of ``mesh``
        (:func:`auto_mesh`).

    Raises:
        ValueError: ``mesh`` has no axis ``axis``.
    """
    if axis not in mesh.axis_names:
        raise ValueError(f"the mesh needs a {axis!r} axis to split batches over; it has "
                         f"{mesh.axis_names}.")
    return NamedSharding(auto_mesh(mesh), PartitionSpec(axis))


def num_batch_shards(sharding: jax.sharding.Sharding) -> int:
    """Into how many pieces ``sharding`` splits the leading axis of a batch."""
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec)
        if not spec or spec[0] is None:
            return 1
        axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
        return math.prod(sharding.mesh.shape[a] for a in axes)
    return len(sharding.device_set)


def shard_batch(batch: Mapping[str, Any],
                sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Places this process's rows of a batch on the devices, split along the leading axis.

    On one host the rows are the whole batch; on several hosts each process passes its
    own slice and the global batch is their concatenation in process order
    (``jax.make_array_from_process_local_data``). Arrays already placed with an
    equivalent sharding pass through unchanged.

    Args:
        batch: e.g. ``{"image": [B_local, H, W, C], "label": [B_local]}``.
        sharding: usually :func:`data_sharding` of the mesh.

    Returns:
        The same dict of global device arrays, ``[B_local * process_count, ...]``.

    Raises:
        ValueError: the global batch size is not divisible by the number of batch shards.
    """
    shards = num_batch_shards(sharding)
    out = {}
    for key, value in batch.items():
        if isinstance(value, jax.Array) and value.sharding.is_equivalent_to(sharding,
                                                                            value.ndim):
            out[key] = value
            continue
        local = np.asarray(value)
        size = local.shape[0] * jax.process_count()
        if size % shards:
            raise ValueError(f"batch[{key!r}] has global batch size {size}, which is not "
                             f"divisible by the {shards} devices of the data axis; choose "
                             f"a batch size that is a multiple of {shards}.")
        out[key] = jax.make_array_from_process_local_data(sharding, local)
    return out


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
    """``NamedSharding(mesh, PartitionSpec())``: a full copy on every device."""
    return NamedSharding(auto_mesh(mesh), PartitionSpec())


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
