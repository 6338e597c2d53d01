"""One process of the two-process training test (tests/training/test_multihost.py).

Run as ``python -m tests.training._multihost_worker <coordinator> <num_processes>
<process_id> <workdir> <kill_at> [<kill_process> <heartbeat_s>]``: joins the job with
:func:`jaxkd.training.initialize_distributed` (gloo CPU collectives, one CPU device per
process, so the mesh spans the processes), trains the tiny model below through
:func:`jaxkd.training.train` on this process's half of every global batch, and, if
``kill_at >= 0``, SIGKILLs itself when it fetches the batch of that (0-based) call, i.e.
mid-run, after the checkpoints before it were started. ``kill_process`` (default -1:
every process) limits the kill to one process; ``heartbeat_s`` is the job's heartbeat
timeout.
At the end it writes its final parameters and metrics to ``workdir/result_<id>.npz``.

The test imports the same ``student``, ``global_data`` and ``OPTIMIZER`` for its
one-process reference run.
"""

import os
import signal
import sys

import jax
import numpy as np
import optax
from flax import nnx

from jaxkd import data, models, training
from tests.training import _helpers as h

NUM_STEPS = 6
CHECKPOINT_EVERY = 2
OPTIMIZER = optax.sgd(0.1, momentum=0.9)
OBJECTIVE = training.Objective(training.cross_entropy())


def student() -> nnx.Module:
    # tanh, not relu: smooth, so float round-off cannot flip a kink between runs.
    return models.MLP(64, h.NUM_CLASSES, hidden=(16,), activation=jax.nn.tanh,
                      rngs=nnx.Rngs(0))


def global_data() -> tuple[np.ndarray, np.ndarray]:
    return h.images(64, seed=3)


def eval_batches() -> list[dict]:
    x, y = global_data()
    return [{"image": x[:16], "label": y[:16]}, {"image": x[16:32], "label": y[16:32]}]


def local_rows(batch: dict, process_id: int, num_processes: int) -> dict:
    """This process's contiguous share of a global batch (process 0 the first rows)."""
    size = len(batch["label"]) // num_processes
    return {k: v[process_id * size:(process_id + 1) * size] for k, v in batch.items()}


class Feed:
    """The global batches of ``ArrayIterator``, cut to this process's rows and placed on
    the mesh with ``jaxkd.data.shard_batch`` (kept in this one class: the place to adapt if batch
    placement moves); ``get_state``/``set_state`` make the resume exact."""

    def __init__(self, mesh, process_id: int, num_processes: int, kill_at: int):
        self.it = h.ArrayIterator(*global_data())
        self.mesh, self.pid, self.n, self.kill_at = mesh, process_id, num_processes, kill_at
        self.calls = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.calls += 1
        return data.shard_batch(local_rows(next(self.it), self.pid, self.n),
                                data.data_sharding(self.mesh))

    def get_state(self) -> dict:
        return self.it.get_state()

    def set_state(self, state: dict) -> None:
        self.it.set_state(state)


def main(coordinator: str, num_processes: int, process_id: int, workdir: str,
         kill_at: int, kill_process: int = -1,
         heartbeat_s: int = training.HEARTBEAT_TIMEOUT_S) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 1)
    assert training.initialize_distributed(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
        initialization_timeout=60, heartbeat_timeout_seconds=heartbeat_s,
        # JAX's own timeout is the backstop that aborts with a C++ stack. The library's
        # default (twice the watchdog's: 60 s for 30) leaves 30 s of margin; for the
        # test's 3 s it would leave 3, which a loaded CI machine has eaten (JAX aborted
        # first, stop 33). The watchdog's bound is what the test measures.
        jax_heartbeat_timeout_seconds=heartbeat_s + 30)
    if kill_process not in (-1, process_id):
        kill_at = -1
    mesh = training.data_mesh()
    assert mesh.devices.size == num_processes == jax.process_count(), mesh
    local_eval = [local_rows(b, process_id, num_processes) for b in eval_batches()]
    result = training.train(student(), OBJECTIVE, OPTIMIZER,
                            Feed(mesh, process_id, num_processes, kill_at),
                            workdir=workdir, num_steps=NUM_STEPS, mesh=mesh,
                            eval_data=local_eval, checkpoint_every=CHECKPOINT_EVERY,
                            log_every=1, progress=False, tensorboard=False)
    params = {f"params{jax.tree_util.keystr(path)}": np.asarray(leaf.addressable_data(0))
              for path, leaf in jax.tree.leaves_with_path(result.state.params)}
    np.savez(os.path.join(workdir, f"result_{process_id}.npz"), **params,
             **{f"train/{k}": v for k, v in result.train_metrics.items()},
             **{f"eval/{k}": v for k, v in result.eval_metrics.items()},
             main=training.is_main_process())
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
         *(int(a) for a in sys.argv[5:]))
