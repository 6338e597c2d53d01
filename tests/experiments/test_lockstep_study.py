"""experiments._lockstep, the studies' lockstep groups: the config key, which runs share
a group, and the digits smoke study with lockstep on against off (and a killed group)."""

import json
import os
from pathlib import Path

import pytest

from experiments import _data, _lockstep, _plan, _runs, limited_data
from experiments.configs import _base
from jaxkd import training
from tests.experiments.conftest import Trained, smoke_config

JAC = "logits+jacobian+ce"


def test_a_bad_lockstep_value_is_refused(nothing_trains, tmp_path):
    nothing_trains.setattr(_data, "load_data", lambda *a, **k: (_ for _ in ()).throw(
        Trained()))
    with pytest.raises(SystemExit) as e:
        limited_data.main(["--workdir", str(tmp_path / "work"),
                           "--config=limited_data_digits:smoke", "--config.lockstep=always"])
    assert str(e.value.code) == ("error: config key 'lockstep' = 'always': expected one of "
                                 "('auto', 'on', 'off').")
    assert _base.describe("lockstep")


@pytest.mark.parametrize("mode,backend,on", [
    ("auto", "cpu", False), ("auto", "gpu", True), ("auto", "tpu", True),
    ("on", "cpu", True), ("off", "gpu", False)])
def test_auto_is_on_for_accelerators_only(mode, backend, on):
    assert _lockstep.enabled(smoke_config("limited_data_digits", lockstep=mode), backend) is on


def test_groups_share_a_program_and_separate_what_differs(nothing_trains):
    config = smoke_config("limited_data_digits", **{
        "num_seeds": 2, "search.sizes": (5,), "search.seeds": 2,
        "search.jacobian.weight": (1.0, 10.0)})
    study = limited_data.STUDY
    search = [_lockstep.Member(f"s{i}", m, c.examples_per_class, c.seed, w) for i, (c, (m, w))
              in enumerate(_plan.search_plan(study, config, [JAC], {"methods": {}}).items())]
    assert [m.weights["jacobian.weight"] for m in search] == [1.0, 10.0, 1.0, 10.0]
    cells = [_lockstep.Member(c.name, c.method, c.examples_per_class, c.seed)
             for c in _runs.cells(config)]

    def key(train_cfg=lambda m: config.train):
        return lambda m: _lockstep.program(study, config, m, train_cfg)

    got = _lockstep.groups(search + cells, key())
    # The weights are per member: the search's candidates x seeds and the method's cells,
    # every size and seed, are one program; another method is another.
    assert [[m.run_dir for m in g] for g in got] == [
        ["s0", "s1", "s2", "s3"] + [c.name for c in _runs.cells(config) if c.method == JAC],
        [c.name for c in _runs.cells(config) if c.method == "logits+ce"]]
    assert _lockstep.member_weights(study, config, got[0]) == {
        "logits": [0.1] * 8, "jacobian": [1.0, 10.0, 1.0, 10.0] + [1.0] * 4, "ce": [1.0] * 8}
    # Another budget (here by size), another argument than a weight: other programs.
    steps = {5: 12, "all": 24}
    by_size = _lockstep.groups(cells, key(lambda m: _base.train_config(
        num_steps=steps[m.examples_per_class])))
    assert sorted(len(g) for g in by_size) == [2, 2, 2, 2]
    assert all(len({m.examples_per_class for m in g}) == 1 for g in by_size)
    other = _lockstep.Member("o", JAC, 5, 0, {"jacobian.outputs": "all"})
    assert len(_lockstep.groups([search[0], other], key())) == 2
    # At most ``limit`` members a group (MAX_MEMBERS by default).
    assert [len(g) for g in _lockstep.groups(search + cells, key(), limit=3)] == [3, 3, 2, 3, 1]
    assert _lockstep.MAX_MEMBERS == 64


def _results(workdir):
    return {c: _runs.read_result(_runs.cell_dir(workdir, c))
            for c in _runs.cells(smoke_config("limited_data_digits"))}


def _metrics(run_dir):
    return [json.loads(line) for line in Path(run_dir, training.METRICS_FILE).read_text()
            .splitlines()]


@pytest.fixture(scope="module")
def off_and_on(tmp_path_factory):
    """The digits smoke study (2 methods x {5, all} x 1 seed, 12 steps) one cell after
    another, and in lockstep groups with that teacher."""
    off, on = (str(tmp_path_factory.mktemp(name)) for name in ("off", "on"))
    limited_data.run(smoke_config("limited_data_digits", lockstep="off"), off)
    limited_data.run(smoke_config("limited_data_digits", lockstep="on",
                                  teacher_dir=os.path.join(off, "teacher")), on)
    return off, on


@pytest.mark.slow
def test_lockstep_cells_agree_with_sequential_ones(off_and_on):
    off, on = off_and_on
    test_size = len(_data.load_data("digits").splits.test)
    for cell, seq in _results(off).items():
        got = _results(on)[cell]
        assert got["lockstep"]["members"] == 2 and "lockstep" not in seq
        assert got["run_config"] == seq["run_config"]  # the driver cannot tell them apart
        # The same maths in another reduction order: float32 round-off, of order n u per
        # step (u = 2**-24, n the largest fan-in, 64), grows to ~2 n u T after T = 12
        # steps; a test image whose two top logits are that close can flip. Measured:
        # every accuracy equal, logged values within 2.2e-7 (relative).
        for which in ("last", "best"):
            assert abs(got[which]["test"] - seq[which]["test"]) * test_size <= 2 + 1e-9
        assert sorted(got["validation_curve"]) == sorted(seq["validation_curve"])
        tol = 2 * 64 * 2.0 ** -24 * 12
        mine, theirs = (_metrics(_runs.cell_dir(w, cell)) for w in (on, off))
        assert len(mine) == len(theirs) == 4  # a train record and an evaluation, twice
        for a, b in zip(mine, theirs):
            assert (a["step"], a["split"]) == (b["step"], b["split"])
            for k in ("loss", "accuracy"):
                assert a[k] == pytest.approx(b[k], rel=tol, abs=1e-6), (cell, a["step"], k)
        assert _runs.checkpoint_steps(_runs.cell_dir(on, cell)) == [12]  # as a pruned run's
    for group in Path(on, _lockstep.GROUPS_DIR).iterdir():
        assert not (group / _runs.CHECKPOINTS).exists()
        assert json.loads((group / "members.json").read_text())["failed_step"] == [0, 0]


@pytest.mark.slow
def test_a_killed_group_resumes_where_it_was(off_and_on, tmp_path, monkeypatch):
    off, on = off_and_on
    config = smoke_config("limited_data_digits", lockstep="on", methods=("logits+ce",),
                          teacher_dir=os.path.join(off, "teacher"))  # one group, 2 cells
    cells = _runs.cells(config)
    real, calls = training.train_lockstep, []

    def dies_on_the_second_evaluation(*args, **kwargs):
        calls.append(kwargs["num_steps"])
        if len(calls) == 2:
            raise Trained  # stands for the process dying at step 6 of 12
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_lockstep", dies_on_the_second_evaluation)
    with pytest.raises(Trained):
        limited_data.run(config, str(tmp_path))
    (group,) = Path(tmp_path, _lockstep.GROUPS_DIR).iterdir()
    assert os.listdir(group / _runs.CHECKPOINTS) == ["6"]
    assert not any(_runs.started(_runs.cell_dir(str(tmp_path), c)) for c in cells)
    monkeypatch.setattr(training, "train_lockstep", real)
    limited_data.run(config, str(tmp_path))
    assert calls == [6, 12] and os.listdir(group.parent) == [group.name]  # formed again
    for cell in cells:  # as the uninterrupted group's, bit for bit (XLA:CPU is deterministic)
        got, result = (_runs.read_result(_runs.cell_dir(w, cell)) for w in (str(tmp_path), on))
        assert (got["last"], got["best"]) == (result["last"], result["best"])
        assert _metrics(_runs.cell_dir(str(tmp_path), cell)) == \
            _metrics(_runs.cell_dir(on, cell))
