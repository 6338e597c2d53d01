"""A real two-process job: ``jax.distributed`` over gloo CPU collectives, one CPU device
per process, trained through ``train()``, SIGKILLed mid-run, resumed, and compared with
a one-process run on the same global batches; one process of a job lost while the
other waits for it."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxkd import training
from tests.training import _helpers as h
from tests.training import _multihost_worker as w

NUM_PROCESSES = 2
TIMEOUT_S = 180  # per phase; a hung collective must fail the test, not block it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_job(workdir, kill_at: int, *, kill_process: int = -1,
             heartbeat_s: int = training.HEARTBEAT_TIMEOUT_S,
             ended: list | None = None) -> list[subprocess.CompletedProcess]:
    """Starts the processes of one job and waits for all of them (killing the ones still
    running after TIMEOUT_S); ``ended`` receives each process's end time."""
    coordinator = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.training._multihost_worker", coordinator,
         str(NUM_PROCESSES), str(i), str(workdir), str(kill_at), str(kill_process),
         str(heartbeat_s)],
        cwd=os.getcwd(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for i in range(NUM_PROCESSES)]
    done, times = [], [None] * len(procs)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while None in times and time.monotonic() < deadline:
            for i, p in enumerate(procs):
                if times[i] is None and p.poll() is not None:
                    times[i] = time.monotonic()
            time.sleep(0.05)
        for p in procs:
            out, _ = p.communicate(timeout=1)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if ended is not None:
        ended[:] = times
    return done


def _reference(workdir):
    """One process, one device, the same global batches."""
    x, y = w.global_data()
    return training.train(w.student(), w.OBJECTIVE, w.OPTIMIZER, h.ArrayIterator(x, y),
                          workdir=workdir, num_steps=w.NUM_STEPS,
                          mesh=training.data_mesh(1), eval_data=w.eval_batches(),
                          checkpoint_every=w.CHECKPOINT_EVERY, log_every=1, progress=False,
                          tensorboard=False)


def _params(state) -> dict[str, np.ndarray]:
    return {f"params{jax.tree_util.keystr(path)}": np.asarray(leaf)
            for path, leaf in jax.tree.leaves_with_path(state.params)}


@pytest.mark.slow
def test_two_processes_killed_and_resumed_match_one_process(tmp_path):
    workdir = tmp_path / "job"
    # Phase 1: both processes SIGKILL themselves when fetching the batch of step 5, after
    # train() started the step-4 checkpoint (whose save waited for step 2's to finish).
    killed = _run_job(workdir, kill_at=4)
    assert killed[0].returncode == -signal.SIGKILL, killed[0].stdout[-3000:]
    assert all(p.returncode != 0 for p in killed), [p.stdout[-3000:] for p in killed]
    with training.Checkpointer(workdir / "checkpoints") as ckpt:
        killed_at = ckpt.latest_step()
    assert killed_at in (2, 4)  # a mid-run state to resume from, not step 0
    assert not (workdir / "result_0.npz").exists()

    # Phase 2: a new job (new coordinator) on the same work directory resumes.
    resumed = _run_job(workdir, kill_at=-1)
    assert all(p.returncode == 0 for p in resumed), [p.stdout[-3000:] for p in resumed]
    results = [dict(np.load(workdir / f"result_{i}.npz")) for i in range(NUM_PROCESSES)]
    assert [bool(r.pop("main")) for r in results] == [True, False]
    # Parameters are replicated: both processes hold the same bits.
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)

    # Only process 0 wrote metrics: every step once (two writers would double them).
    records = training.read_metrics(workdir)
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 7))
    assert [r["step"] for r in records if r["split"] == "eval"] == [w.NUM_STEPS]

    ref = _reference(tmp_path / "reference")
    expected = _params(ref.state)
    # Tolerance from float32 round-off (u = 2**-24). Two devices sum each gradient over
    # 8 rows per device, then across devices; one device sums the B = 16 rows in its own
    # order (and its matmuls block differently). Two orders of a sum of B terms differ by
    # at most 2 (B - 1) u sum|g_i|, so the mean gradient by 2 (B - 1) u G, with G a bound
    # on per-example gradient entries: cross-entropy's dL/dlogit is in [-1, 1] and tanh
    # units in [-1, 1], so G <= max|x| * 2 * max|W_head| <= 5 * 2 * 1 = 10 here (inputs
    # unit normal, |x| < 5; head weights ~N(0, 1/16), below 1). SGD with momentum 0.9
    # moves a parameter at step t by lr * sum_{k<t} 0.9^k times each gradient error, so
    # after T = 6 steps by lr * S * 2 (B - 1) u G with S = sum_t sum_{k<t} 0.9^k = 17.8;
    # a factor 2 covers the smooth (tanh) dynamics carrying earlier differences forward,
    # and each update rounds once more (u |param|, |param| < 2): atol = 6.4e-5.
    u, lr, batch, grad_bound = 2.0 ** -24, 0.1, 16, 10.0
    steps = sum(sum(0.9 ** k for k in range(t)) for t in range(1, w.NUM_STEPS + 1))
    atol = 2 * lr * steps * 2 * (batch - 1) * u * grad_bound + w.NUM_STEPS * u * 2
    x, _ = w.global_data()
    assert float(np.abs(x).max()) < 5
    assert expected.keys() == {k for k in results[0] if k.startswith("params")}
    assert all(float(np.abs(v).max()) < 2 for v in expected.values())
    assert float(np.abs(expected["params['head']['kernel'].value"]).max()) < 1, expected.keys()
    worst = max(float(np.abs(results[0][k] - v).max()) for k, v in expected.items())
    print(f"two processes vs one: max |param difference| {worst:.3g}, atol {atol:.3g}")
    for key, value in expected.items():
        np.testing.assert_allclose(results[0][key], value, rtol=0, atol=atol, err_msg=key)
    # The parameters are the tight comparison; the metrics follow from them. Accuracy
    # counts argmaxes over 32 fixed examples: equal unless two logits were within
    # round-off of each other, which these data do not have.
    assert results[0]["eval/accuracy"] == ref.eval_metrics["accuracy"]

    # The two-process checkpoint (orbax, written by both processes together) is a normal
    # checkpoint: one process restores it to the same parameters.
    with training.Checkpointer(workdir / "checkpoints") as ckpt:
        assert ckpt.latest_step() == w.NUM_STEPS
        template = training.init_train_state(w.student(), w.OPTIMIZER, key=jax.random.key(0))
        state, data_state = ckpt.restore(template)
    assert data_state == {"epoch": 1, "index": 32}
    for key, value in _params(state).items():
        np.testing.assert_array_equal(value, results[0][key], err_msg=key)


@pytest.mark.slow
def test_a_lost_process_stops_the_others_within_the_heartbeat_timeout(tmp_path):
    # Process 1 is SIGKILLed mid-run; process 0 waits for it in the step's collectives.
    heartbeat = 3
    ended = []
    job = _run_job(tmp_path / "job", kill_at=4, kill_process=1, heartbeat_s=heartbeat,
                   ended=ended)
    assert job[1].returncode == -signal.SIGKILL, job[1].stdout[-3000:]
    survivor = job[0]
    assert survivor.returncode == training.LOST_PROCESS_EXIT_CODE, survivor.stdout[-3000:]
    lines = [line for line in survivor.stdout.splitlines() if line.startswith("error:")]
    assert lines == [f"error: process 1 of this multi-process job sent no heartbeat for "
                     f"{heartbeat} s (killed, out of memory, or its host lost); process 0 "
                     f"stops too. Start the job again on every host: training resumes "
                     f"from the last complete checkpoint."], survivor.stdout[-3000:]
    assert "Check failure stack trace" not in survivor.stdout  # not JAX's abort
    # The bound: the timeout, one heartbeat interval (1 s at most) for the last beat
    # before the kill, one for the check after the timeout, and a second of scheduling.
    waited = ended[0] - ended[1]
    print(f"survivor stopped {waited:.1f} s after the lost process")
    assert waited < heartbeat + 3, waited
