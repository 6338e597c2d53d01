"""experiments._targets: the teacher's targets of a stream, computed once for its students;
a study fed them gives the numbers of a study whose students run the teacher."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import _data, _runs, _targets, limited_data
from jaxkd import data, models, training
from tests.training import _helpers as h


N = 48  # examples of the stream: 3 batches of 16 an epoch


def _stream(seed=0):
    x, y = h.images(N, seed=3)
    dataset = data.Dataset(images=x, labels=y, num_classes=h.NUM_CLASSES, name="tiny",
                           class_names=tuple(map(str, range(h.NUM_CLASSES))),
                           source_index=np.arange(len(y)))
    return _data.train_batches(dataset, batch_size=h.BATCH, seed=seed, augment=True)


SHAPE = dict(seed=0, batch_size=h.BATCH, num_examples=N)


def test_a_stream_s_targets_are_computed_once_and_again_alike_after_a_resume():
    teacher = models.split(h.teacher())
    shared = _targets.SharedTargets(teacher, training.data_mesh(1),
                                    {"outputs": "teacher_top1", "k": 1})
    first = [next(it) for it in [shared.feed("a", _stream(), **SHAPE)] for _ in range(4)]
    assert shared.computed == 4
    second = shared.feed("a", _stream(), **SHAPE)
    again = [next(second) for _ in range(4)]
    assert shared.computed == 4  # the second student of the stream runs no teacher
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["teacher_targets"] is b["teacher_targets"]
    # A new process (nothing held) resuming at position 2 computes the same targets.
    fresh = _targets.SharedTargets(teacher, training.data_mesh(1), shared.options)
    resumed = fresh.feed("a", _stream(), **SHAPE)
    resumed.set_state(json.loads(json.dumps(_positions(_stream())[2])))  # as checkpointed
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], first[2]["image"])
    for a, b in zip(jax.tree.leaves(got["teacher_targets"]),
                    jax.tree.leaves(first[2]["teacher_targets"])):
        np.testing.assert_array_equal(a, b)
    # Another stream (size or seed) drops the first one's targets.
    next(shared.feed("b", _stream(seed=1), **dict(SHAPE, seed=1)))
    next(shared.feed("a", _stream(), **SHAPE))
    assert shared.computed == 6


def _positions(stream, n=3):
    out = []
    for _ in range(n):
        out.append(stream.get_state())
        next(stream)
    return out


def test_a_stream_position_names_the_step_its_batch_is_for():
    stream = _stream()
    for step in range(7):  # over two epochs' ends
        assert _targets.step_of(stream.get_state(), batch_size=h.BATCH, num_examples=N) == step
        next(stream)
    x, y = h.images(40)  # 2 whole batches an epoch, 8 examples dropped at its end
    dataset = data.Dataset(images=x, labels=y, num_classes=h.NUM_CLASSES, name="tiny",
                           class_names=tuple(map(str, range(h.NUM_CLASSES))),
                           source_index=np.arange(len(y)))
    stream = data.BatchIterator(dataset, h.BATCH, seed=0)
    for step in range(5):
        assert _targets.step_of(stream.get_state(), batch_size=h.BATCH, num_examples=40) == step
        next(stream)


def test_held_targets_stop_at_the_memory_cap_and_are_then_computed_per_student():
    shared = _targets.SharedTargets(models.split(h.teacher()), training.data_mesh(1),
                                    {"outputs": None, "k": 1}, max_bytes=1)
    for _ in range(2):
        it = shared.feed("a", _stream(), **SHAPE)
        next(it), next(it)
    assert shared.computed == 4


def test_which_methods_a_stream_s_targets_serve():
    def objective(method):
        return limited_data.build_objective(method, _config().loss)
    methods = ["ce", "kd+ce", "logits+jacobian+ce", "kd+vjp+ce", "kd+jvp+ce", "vjp+ce",
               "noisy+ce"]
    options = _targets.stream_options([objective(m) for m in methods])
    # The projections at kd+vjp+ce's term position (1) serve kd+jvp+ce too; vjp+ce draws
    # its probes at position 0, from another key.
    assert options == {"outputs": "teacher_top1", "k": 1, "projections": ("jvp", "vjp"),
                       "num_probes": 1, "distribution": "rademacher", "projection_term": 1}
    served = [m for m in methods if _targets.serves(options, objective(m))]
    assert served == ["kd+ce", "logits+jacobian+ce", "kd+vjp+ce", "kd+jvp+ce"]
    assert _targets.stream_options([objective("ce"), objective("noisy+ce")]) is None
    assert _targets.stream_options([objective("kd+ce")]) == {"outputs": None, "k": 1}


def _config(**values):
    from tests.experiments.conftest import smoke_config
    return smoke_config("limited_data_digits", **values)


@pytest.mark.slow
def test_a_study_fed_shared_targets_gives_the_numbers_of_students_running_the_teacher(
        tmp_path, monkeypatch):
    config = _config(methods=("kd+ce", "logits+jacobian+ce", "kd+vjp+ce", "kd+jvp+ce"),
                     examples_per_class=(5,))
    made = []
    real = _targets.SharedTargets.__init__

    def record(self, *args, **kwargs):
        made.append(self)
        real(self, *args, **kwargs)
    monkeypatch.setattr(_targets.SharedTargets, "__init__", record)
    limited_data.run(config, str(tmp_path / "shared"))
    (shared,) = made
    assert shared.computed == config.train.num_steps  # once per batch, for four methods
    config.share_teacher_targets = False  # not part of any run's identity: same numbers
    limited_data.run(config, str(tmp_path / "teacher"))
    assert len(made) == 1
    for method in config.methods:
        cell = _runs.Cell(method, 5, 0)
        rows = [[json.loads(line) for line in Path(
            _runs.cell_dir(str(tmp_path / w), cell), "metrics.jsonl").read_text().split("\n")
            if line] for w in ("shared", "teacher")]
        assert len(rows[0]) == len(rows[1]) > 0
        for a, b in zip(*rows):
            for key in a:
                if key.startswith("loss") or key.endswith("norm") or key == "accuracy":
                    np.testing.assert_allclose(a[key], b[key], rtol=1e-5,
                                               err_msg=f"{method} {key}")
