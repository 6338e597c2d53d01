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

**A lost process ends the job.** When one process stops (killed, out of memory, its
host gone), the others cannot go on: they would wait in the step's collectives until
JAX's heartbeat timeout (100 s by default) aborts them with a C++ stack. After
:func:`initialize_distributed`, each process publishes a heartbeat counter every second
in the coordinator's key-value store and watches the others'; a counter that stops
for :data:`HEARTBEAT_TIMEOUT_S` seconds stops every survivor with one line that names
the lost process (exit status :data:`LOST_PROCESS_EXIT_CODE`). A lost coordinator
(process 0, which runs the key-value store) ends the others at once through JAX's own
error. Running the job again resumes from the last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS", "HEARTBEAT_TIMEOUT_S", "LOST_PROCESS_EXIT_CODE", "auto_mesh", "data_mesh",
    "data_sharding", "initialize_distributed", "is_main_process", "multi_process_env",
    "num_batch_shards", "replicate", "replicated", "shard_batch",
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


# Seconds without a heartbeat after which a process counts as lost. The heartbeats come
# from a background thread, so a long compilation or step does not miss them.
HEARTBEAT_TIMEOUT_S = 30
# The exit status of a process that stops because another process of the job was lost.
LOST_PROCESS_EXIT_CODE = 3
_ALIVE_KEY = "jaxkd/alive"


def lost_process_message(lost: list[int], *, process_id: int, timeout: float) -> str:
    """The line a surviving process prints when it stops for lost processes."""
    who = ("process " if len(lost) == 1 else "processes ") + ", ".join(map(str, lost))
    return (f"error: {who} of this multi-process job sent no heartbeat for {timeout:g} s "
            f"(killed, out of memory, or its host lost); process {process_id} stops too. "
            f"Start the job again on every host: training resumes from the last complete "
            f"checkpoint.")


class _Watchdog:
    """Every ``interval`` s: publishes this process's heartbeat counter in the
    coordinator's key-value store and stops the process (one line, exit status
    :data:`LOST_PROCESS_EXIT_CODE`) when another process's counter has not moved for
    ``timeout`` s.

    JAX's own heartbeat (set to twice ``timeout``) stays as the backstop; it aborts with
    a C++ stack. While this process shuts the runtime down the checks stop (a finished
    peer stops beating), the beats go on until the client is gone.
    """

    def __init__(self, client: Any, process_id: int, num_processes: int, timeout: float,
                 interval: float):
        self.client, self.me, self.n = client, process_id, num_processes
        self.timeout, self.interval = timeout, interval
        self.checking = True

    def start(self) -> None:
        threading.Thread(target=self._run, name="jaxkd-heartbeat", daemon=True).start()

    def _run(self) -> None:
        seen: dict[int, tuple[str | None, float]] = {}
        beat = 0
        while True:
            beat += 1
            try:
                self.client.key_value_set(f"{_ALIVE_KEY}/{self.me}", str(beat),
                                          allow_overwrite=True)
                values = dict(self.client.key_value_dir_get(f"{_ALIVE_KEY}/"))
            except Exception:  # pylint: disable=broad-except
                # The runtime is shutting down, or the coordinator is gone (then JAX's
                # own error handling ends the process at once).
                return
            now = time.monotonic()
            lost = []
            for other in range(self.n):
                if other == self.me:
                    continue
                value = values.get(f"{_ALIVE_KEY}/{other}")
                if other not in seen or seen[other][0] != value:
                    seen[other] = (value, now)
                elif now - seen[other][1] > self.timeout:
                    lost.append(other)
            if lost and self.checking:
                self._stop(lost)
            time.sleep(self.interval)

    def _stop(self, lost: list[int]) -> None:
        line = lost_process_message(lost, process_id=self.me, timeout=self.timeout)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        os._exit(LOST_PROCESS_EXIT_CODE)  # the main thread may wait in a collective forever


def _watch(timeout: float) -> None:
    """Starts the :class:`_Watchdog` of the distributed runtime just initialised."""
    from jax._src import distributed as jax_distributed  # the runtime's client
    # A private object whose fields vary across JAX releases, hence getattr below.
    state: Any = jax_distributed.global_state
    client = getattr(state, "client", None)
    # The state's own counts: jax.process_count() would start the backends here.
    num_processes = int(getattr(state, "num_processes", 1) or 1)
    if client is None or num_processes < 2:
        return
    watchdog = _Watchdog(client, int(state.process_id), num_processes, timeout,
                         interval=min(1.0, timeout / 4))
    shutdown = state.shutdown

    def shutdown_unwatched() -> None:
        watchdog.checking = False
        shutdown()

    state.shutdown = shutdown_unwatched  # jax.distributed.shutdown() and JAX's atexit
    watchdog.start()


def initialize_distributed(*, force: bool = False,
                           heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_S,
                           **kwargs: Any) -> bool:
    """Calls ``jax.distributed.initialize(**kwargs)`` when asked or when multi-host.

    Call it first thing in ``main``, before any other JAX call. It does nothing (and
    returns False) on a single host unless ``force=True``; it is a no-op when JAX's
    distributed runtime is already up. On Cloud TPU, SLURM and Open MPI,
    ``jax.distributed.initialize()`` finds the coordinator itself; elsewhere pass
    ``coordinator_address=..., num_processes=..., process_id=...``.

    When a process of the job is lost (killed, out of memory, its host gone), every other
    process prints one line that names it and says that running the job again resumes,
    and exits with status :data:`LOST_PROCESS_EXIT_CODE`, at most
    ``heartbeat_timeout_seconds`` + 2 s after the lost process's last heartbeat. (If the
    lost process is the coordinator, process 0, JAX's own error ends the others at once.)

    Args:
      force: initialise even when the environment looks single-process.
      heartbeat_timeout_seconds: how long a process may send no heartbeat before the
        others stop; JAX's own heartbeat timeout, the backstop, is set to twice this
        unless given in ``kwargs`` as ``jax_heartbeat_timeout_seconds``.
      **kwargs: passed to ``jax.distributed.initialize``.

    Returns:
      Whether the distributed runtime is initialised after the call.
    """
    if jax.distributed.is_initialized():
        return True
    backstop = kwargs.pop("jax_heartbeat_timeout_seconds", 2 * heartbeat_timeout_seconds)
    if not (force or kwargs or multi_process_env()):
        return False
    jax.distributed.initialize(heartbeat_timeout_seconds=backstop, **kwargs)
    _watch(heartbeat_timeout_seconds)
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
