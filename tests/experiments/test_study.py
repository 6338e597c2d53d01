"""experiments._study, the driver of studies 1 and 3: each run records its run config (an
allow-list of the keys that change it); a changed config is refused before anything
trains, naming the keys that differ and how to go on; presentation keys change freely;
on_change=retrain trains the changed runs again; a damaged result.json is computed
again, never a crash."""

import json
import os
import shutil
from pathlib import Path

import pytest

from experiments import _data, _runs, _study, _workdir, limited_data, transfer
from jaxkd import training
from tests.experiments.conftest import Trained

METHOD = "logits+ce"
SMALL, ALL = _runs.Cell(METHOD, 5, 0), _runs.Cell(METHOD, "all", 0)


def _config(smoke, **values):
    return smoke("limited_data_digits", methods=(METHOD,), examples_per_class=(5, "all"),
                 **values)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished smoke sweep (teacher + 2 cells), copied by each test that changes it."""
    from tests.experiments.conftest import smoke_config
    workdir = str(tmp_path_factory.mktemp("finished"))
    summary = limited_data.run(_config(smoke_config), workdir)
    return workdir, summary


@pytest.fixture
def workdir(finished, tmp_path):
    path = str(tmp_path / "work")
    shutil.copytree(finished[0], path)
    return path


@pytest.fixture
def no_training(nothing_trains):
    def refuse(*args, **kwargs):
        raise Trained
    nothing_trains.setattr(_data, "load_data", refuse)


def _result(workdir, cell):
    return json.loads(Path(_runs.result_path(_runs.cell_dir(workdir, cell))).read_text())


@pytest.mark.slow
def test_each_run_records_its_config(finished):
    workdir, _ = finished
    teacher = json.loads(Path(workdir, "teacher", "result.json").read_text())["run_config"]
    assert teacher["teacher_train"]["num_steps"] == 10 and teacher["dataset"] == "digits"
    assert "student" not in teacher and "train" not in teacher and "loss" not in teacher
    cell = _result(workdir, SMALL)["run_config"]
    assert cell["method"] == METHOD and cell["examples_per_class"] == 5 and cell["seed"] == 0
    assert cell["train"]["learning_rate"] == 0.003 and cell["student"]["name"] == "mlp"
    assert cell["teacher_run"] == teacher  # the teacher's identity: its own run config
    assert set(cell["loss"]) == {"logits", "ce"}  # its method's terms only
    assert cell["loss"]["logits"] == {"weight": 0.1}
    assert cell["validation_per_seed"] == 0.5 and "validation_per_seed" not in teacher
    for key in ("run_progress", "tensorboard", "compilation_cache", "num_devices",
                "num_cpu_devices", "on_change", "num_seeds", "methods", "teacher"):
        assert key not in cell
    # A started run has it on file before its first checkpoint: config.json.
    started = json.loads(Path(_runs.cell_dir(workdir, ALL), "config.json").read_text())
    assert started["run_config"] == _result(workdir, ALL)["run_config"]


@pytest.mark.slow
def test_a_changed_config_is_refused_before_anything_trains(smoke, workdir, no_training):
    # The "all" cell half done: a checkpoint, no result.json (killed before it).
    os.remove(_runs.result_path(_runs.cell_dir(workdir, ALL)))
    results_before = Path(workdir, "results.json").read_text()

    with pytest.raises(_runs.ConfigChanged) as e:
        limited_data.run(_config(smoke, **{"train.learning_rate": 1.0}), workdir)
    message = str(e.value)
    assert "cells/logits-ce/n5/seed0 (and 1 more): train.learning_rate: 0.003 -> 1.0" \
        in message
    assert "another config: cells/" in message  # the teacher's config did not change
    assert "Give a new --workdir, or add --config.on_change=retrain" in message
    assert "\n" not in message

    changes = _runs.changed(workdir, {
        _runs.cell_dir(workdir, c): _study.cell_config(
            limited_data.STUDY, _config(smoke, **{"train.num_steps": 24}), c,
            _runs.recorded(os.path.join(workdir, "teacher"))) for c in (SMALL, ALL)})
    assert changes[_runs.cell_dir(workdir, ALL)] == ["train.num_steps: 12 -> 24"]

    with pytest.raises(_runs.ConfigChanged,
                       match=r"teacher: teacher_train.num_steps: 10 -> 20 \| cells/logits-ce/"
                             r"n5/seed0 \(and 1 more\): teacher_run.teacher_train.num_steps: "
                             r"10 -> 20"):
        limited_data.run(_config(smoke, **{"teacher_train.num_steps": 20}), workdir)
    with pytest.raises(_runs.ConfigChanged, match=r"student.hidden: \[64\] -> \[32\]"):
        limited_data.run(_config(smoke, **{"student.hidden": (32,)}), workdir)
    with pytest.raises(_runs.ConfigChanged, match=r"teacher: validation_fraction: "
                                                  r"0.1 -> 0.2"):
        limited_data.run(_config(smoke, validation_fraction=0.2), workdir)
    # Runs that chose on the shared split (before validation_per_seed) are not reused.
    with pytest.raises(_runs.ConfigChanged, match=r"seed0 \(and 1 more\): "
                                                  r"validation_per_seed: 0.5 -> "):
        limited_data.run(_config(smoke, validation_per_seed=1.0), workdir)
    with pytest.raises(_runs.ConfigChanged, match=r"teacher_run.teacher_seed: 0 -> 1"):
        limited_data.run(_config(smoke, teacher_seed=1), workdir)
    # The report was not touched: it still shows the config of its numbers.
    assert Path(workdir, "results.json").read_text() == results_before


@pytest.mark.slow
def test_presentation_keys_change_freely(smoke, workdir, monkeypatch):
    def refuse(*args, **kwargs):
        raise Trained
    monkeypatch.setattr(training, "train", refuse)  # every run is finished
    config = _config(smoke, run_progress=True, num_cpu_devices=2, share_teacher_targets=False)
    summary = limited_data.run(config, workdir)
    assert summary["config"]["run_progress"] is True


@pytest.mark.slow
def test_a_run_without_a_recorded_config_is_refused(smoke, workdir, no_training):
    run_dir = _runs.cell_dir(workdir, SMALL)
    for path in (_runs.result_path(run_dir), os.path.join(run_dir, "config.json")):
        record = json.loads(Path(path).read_text())
        del record["run_config"]  # as an older version wrote them
        Path(path).write_text(json.dumps(record))
    with pytest.raises(_runs.ConfigChanged, match=r"cells/logits-ce/n5/seed0: \(not "
                                                  r"recorded"):
        limited_data.run(_config(smoke), workdir)


@pytest.mark.slow
def test_on_change_retrain_trains_the_changed_runs_again(smoke, workdir, finished):
    teacher_result = Path(workdir, "teacher", "result.json")
    before = teacher_result.stat().st_mtime_ns
    config = _config(smoke, on_change="retrain", **{"train.learning_rate": 0.01})
    summary = limited_data.run(config, workdir)
    assert teacher_result.stat().st_mtime_ns == before  # its config did not change
    for cell in (SMALL, ALL):
        assert _result(workdir, cell)["run_config"]["train"]["learning_rate"] == 0.01
    assert summary["config"]["train"]["learning_rate"] == 0.01
    report = json.loads(Path(workdir, "results.json").read_text())["limited_data"]
    assert report["config"]["train"]["learning_rate"] == 0.01
    assert [r["mean"] for r in report["rows"]] == [r["mean"] for r in summary["rows"]]
    # Now recorded: the same config again is accepted as it is.
    again = limited_data.run(_config(smoke, **{"train.learning_rate": 0.01}), workdir)
    assert [r["mean"] for r in again["rows"]] == [r["mean"] for r in summary["rows"]]


@pytest.mark.slow
def test_a_damaged_result_json_is_computed_again(smoke, workdir, monkeypatch):
    """A finished (pruned) cell whose result.json was cut short trains again from the
    start, to the same numbers (equal seeds, equal steps); nothing else trains."""
    run_dir = _runs.cell_dir(workdir, SMALL)
    path = Path(_runs.result_path(run_dir))
    original = json.loads(path.read_text())
    path.write_text(path.read_text()[:40])  # truncated
    trained = []
    real_train = training.train

    def counting_train(*args, **kwargs):
        trained.append(kwargs["workdir"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", counting_train)
    limited_data.run(_config(smoke), workdir)
    again = json.loads(path.read_text())
    assert again["last"] == original["last"] and again["best"] == original["best"]
    assert again["validation_curve"] == original["validation_curve"]
    assert again["run_config"] == original["run_config"]
    assert trained == [run_dir]  # only the damaged cell
    assert Path(str(path) + ".damaged").exists()


def test_the_teachers_identity_is_the_keys_that_change_it(smoke):
    """An allow-list: a key the study does not name (a student's, the search's, one it
    has never heard of) leaves the teacher's run config as it is."""
    config = smoke("limited_data_digits")
    teacher = _study.teacher_config(limited_data.STUDY, config)
    assert set(teacher) == set(limited_data.TEACHER_KEYS)
    config.unlock()
    config.train.learning_rate = 0.5
    config.search.jacobian.weight = (3.0,)
    config.loss.kd.temperature = 1.0
    config.some_new_key = 1
    assert _study.teacher_config(limited_data.STUDY, config) == teacher
    config.teacher_seed = 1
    assert _study.teacher_config(limited_data.STUDY, config) != teacher
    transfer_config = smoke("transfer_digits")
    assert set(_study.teacher_config(transfer.STUDY, transfer_config)) == set(
        transfer.TEACHER_KEYS)  # no target keys: the teacher never sees the target


def test_runs_that_augment_record_how_crops_pad(smoke):
    """Crops pad with the data's black: a run trained with the earlier padding (recorded
    without it) differs from the run the config asks for, so it is refused, not reused."""
    config = smoke("limited_data_digits", augment=True)
    teacher = _study.teacher_config(limited_data.STUDY, config)
    cell = _study.cell_config(limited_data.STUDY, config,
                              _runs.Cell(config.methods[0], 5, 0), teacher)
    for run in (teacher, cell):
        assert run["augment_padding"] == _study.AUGMENT_PADDING == "background"
        earlier = {k: v for k, v in run.items() if k != "augment_padding"}
        assert _runs.differences(earlier, run) == [
            """augment_padding: "-" -> 'background'"""]
    config.augment = False
    assert "augment_padding" not in _study.teacher_config(limited_data.STUDY, config)


def test_a_cell_depends_on_the_teacher_when_its_objective_or_its_start_does(smoke):
    config = smoke("transfer_digits")
    teacher = {"teacher": "T"}
    by_method = {m: _study.cell_config(transfer.STUDY, config, _runs.Cell(m, 5, 0), teacher)
                 for m in ("no_transfer", "finetune", "lwf")}
    assert "teacher_run" not in by_method["no_transfer"]  # cross-entropy alone
    assert by_method["finetune"]["teacher_run"] == teacher  # starts from the teacher
    assert by_method["lwf"]["teacher_run"] == teacher  # its objective reads it
    assert "finetune_train" in by_method["finetune"] and "train" not in by_method["finetune"]
    assert "train" in by_method["lwf"] and "finetune_train" not in by_method["lwf"]
    assert set(by_method["lwf"]["loss"]) == {"ce", "lwf"}
    # The search is part of a cell's identity only where it chooses the cell's weights.
    config.search.sizes = (5,)
    config.search.jacobian.weight = (1.0, 10.0)
    searched = _study.cell_config(transfer.STUDY, config, _runs.Cell("lwf+jacobian", 5, 0),
                                  teacher)
    assert searched["search"] == {"sizes": [5], "seeds": 1,
                                  "candidates": {"jacobian.weight": [1.0, 10.0]},
                                  "base": None}  # lwf is not among the methods run
    assert "search" not in _study.cell_config(transfer.STUDY, config,
                                              _runs.Cell("lwf", 5, 0), teacher)


def test_the_config_is_validated_and_the_workdir_locked_once(smoke, tmp_path, monkeypatch,
                                                             nothing_trains):
    """The command line parses; the driver validates and locks, once each."""
    from experiments.configs import _checks
    calls = {"validate": 0, "acquire": 0}
    real_validate, real_acquire = _checks.validate, _workdir.acquire

    def counting(name, real):
        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(_checks, "validate", counting("validate", real_validate))
    monkeypatch.setattr(_workdir, "acquire", counting("acquire", real_acquire))
    with pytest.raises(Trained):  # the teacher is the first thing that trains (--debug: raised)
        limited_data.main(["--workdir", str(tmp_path), "--config=limited_data_digits:smoke",
                           "--debug"])
    assert calls == {"validate": 1, "acquire": 1}
    assert os.path.realpath(str(tmp_path)) not in _workdir._HELD  # released after the run


@pytest.mark.parametrize("overrides,message", [
    (["--config.examples_per_class=5,500"],
     "error: config key 'examples_per_class': 500 examples per class exceeds the "),
    (["--config.methods=kd+jacobian+ce", "--config.loss.jacobian.outputs=top_k",
      "--config.loss.jacobian.k=11"],
     "error: config key 'loss.jacobian.k' = 11: expected at most the teacher's 10 outputs"),
], ids=["examples_per_class", "top_k"])
def test_a_refusal_that_needs_the_datas_size_comes_before_the_teacher(
        tmp_path, nothing_trains, overrides, message):
    """The data loads, then every check of its size, then the teacher: no run starts."""
    with pytest.raises(SystemExit) as e:
        limited_data.main(["--workdir", str(tmp_path), "--config=limited_data_digits:smoke",
                           *overrides])
    assert str(e.value.code).startswith(message), e.value.code
    assert "\n" not in str(e.value.code)
    assert not list(tmp_path.rglob("result.json")) and not (tmp_path / "teacher").exists()
