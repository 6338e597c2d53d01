"""Batch placement: the one path from host arrays to a batch split over a device mesh.

Data parallelism only: the leading (batch) axis is split over the mesh axis ``"data"``
(``PartitionSpec("data")``). Every process passes *its own rows* of the global batch;
:func:`shard_batch` assembles the global array with
``jax.make_array_from_process_local_data``, so one host and many hosts take the same
call. :class:`jaxkd.data.BatchIterator` (``sharding=``), :func:`jaxkd.training.train`
and :func:`jaxkd.training.evaluate` all place batches here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

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
