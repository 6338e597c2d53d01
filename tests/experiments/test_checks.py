"""experiments.configs._checks: every bad value fails in seconds, before any data loads
or anything trains, naming the key and what is valid (through the command line); the
values it accepts are the library's; old key spellings name the new ones."""

import time

import pytest
from ml_collections import ConfigDict

from experiments import _data, limited_data, transfer
from experiments.configs import _base, _checks
from experiments.configs._base import ConfigError
from tests.experiments.conftest import Trained
from jaxkd import losses, models


def _fails(main, tmp_path, *overrides, config):
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        main(["--workdir", str(tmp_path / "work"), f"--config={config}:smoke", *overrides])
    assert time.perf_counter() - t0 < 20, overrides  # seconds, not a teacher's training
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


LIMITED = [
    (["--config.examples_per_class=0"],
     "config key 'examples_per_class' = (0,): expected positive integers and/or 'all'."),
    (["--config.examples_per_class=5,5"],
     "config key 'examples_per_class' = (5, 5): expected each size once."),
    (["--config.loss.kd.temperature=-1"],
     "config key 'loss.kd.temperature' = -1.0: expected a positive finite temperature."),
    (["--config.loss.noisy.temperature=0"],
     "config key 'loss.noisy.temperature' = 0.0: expected a positive finite temperature."),
    (["--config.loss.kd.weight=-1"],
     "config key 'loss.kd.weight' = -1.0: expected a finite weight >= 0."),
    (["--config.loss.jacobian.weight=nan"],
     "config key 'loss.jacobian.weight' = nan: expected a finite weight >= 0."),
    (["--config.loss.noisy.sigma=-0.3"],
     "config key 'loss.noisy.sigma' = -0.3: expected a positive finite noise standard "
     "deviation."),
    (["--config.loss.vjp.num_probes=0"],
     "config key 'loss.vjp.num_probes' = 0: expected a positive integer."),
    (["--config.loss.jacobian.outputs=top1"],
     "config key 'loss.jacobian.outputs' = 'top1': expected one of ('teacher_top1', "
     "'label', 'top_k', 'all')."),
    (["--config.loss.jacobian.k=0"],
     "config key 'loss.jacobian.k' = 0: expected a positive integer."),
    (["--config.loss.attention.layers="],
     "config key 'loss.attention.layers' = (): expected one or more feature tap names."),
    (["--config.search.sizes=0"],
     "config key 'search.sizes' = (0,): expected () or positive integers and/or 'all'."),
    (["--config.search.sizes=5", "--config.search.jacobian.weight=1,-3"],
     "config key 'search.jacobian.weight' = (1, -3): expected candidates, each a positive "
     "finite weight."),
    (["--config.search.seeds=0"],
     "config key 'search.seeds' = 0: expected a positive integer."),
    # The spellings of earlier versions name their new key.
    (["--config.loss.jacobian_weight=3"],
     "config key 'loss.jacobian_weight' is now --config.loss.jacobian.weight (the loss "
     "terms and the weight search are sub-configs"),
    (["--config.jacobian_weights=1,3"],
     "config key 'jacobian_weights' is now --config.search.jacobian.weight"),
    (["--config.weight_search_sizes=10"],
     "config key 'weight_search_sizes' is now --config.search.sizes"),
    (["--config.projection_weights=0.1"],
     "config key 'projection_weights' is now --config.search.vjp.weight and "
     "search.jvp.weight"),
    (["--config.noise_sigmas=-0.5"],
     "config key 'noise_sigmas' = (-0.5,): expected one or more finite noise levels >= 0."),
    (["--config.first_seed=-1"],
     "config key 'first_seed' = -1: expected an integer from 0 to 2147482647."),
    (["--config.num_seeds=0"],
     "config key 'num_seeds' = 0: expected a positive integer at most 1000."),
    (["--config.num_seeds=-1"],
     "config key 'num_seeds' = -1: expected a positive integer at most 1000."),
    (["--config.num_seeds=1000000000"],
     "config key 'num_seeds' = 1000000000: expected a positive integer at most 1000."),
    (["--config.num_seeds=1000", "--config.examples_per_class=1,2,3,4,5,6,7,8,9,10,all"],
     "the sweep has 22000 cells (methods x examples_per_class x num_seeds = 2 x 11 x "
     "1000); at most 10000 per work directory."),
    (["--config.methods="],
     "config key 'methods' = (): expected at least one method name (the study's method "
     "table: docs/experiments.md)."),
    (["--config.methods=ce,ce"], "config key 'methods' = ('ce', 'ce'): expected each "
                                 "method once."),
    (["--config.methods=ce,kd+jacobain"],
     "method 'kd+jacobain': unknown loss term(s) ['jacobain']; a method is terms joined "
     "by '+' from"),
    (["--config.train.learning_rate=-0.1"],
     "config key 'train.learning_rate' = -0.1: expected a positive finite number."),
    (["--config.teacher_train.momentum=1.5"],
     "config key 'teacher_train.momentum' = 1.5: expected a number in [0, 1)."),
    (["--config.teacher_seed=-1"],
     "config key 'teacher_seed' = -1: expected a non-negative integer."),
    (["--config.student.hidden=0"],
     "config key 'student.hidden' = (0,): expected one or more positive integers."),
    (["--config.validation_fraction=1"],
     "config key 'validation_fraction' = 1.0: expected a fraction in (0, 1)."),
    (["--config.validation_per_seed=0"],
     "config key 'validation_per_seed' = 0.0: expected a fraction in (0, 1]."),
    (["--config.noise_examples_per_class=7"],
     "config key 'noise_examples_per_class' = (7,): expected () or sizes of "
     "examples_per_class (5, 'all')."),
    (["--config.on_change=overwrite"],
     "config key 'on_change' = 'overwrite': expected one of ('refuse', 'retrain')."),
]


@pytest.mark.parametrize("overrides,message", LIMITED, ids=[" ".join(o) for o, _ in LIMITED])
def test_limited_data_probes(nothing_trains, tmp_path, overrides, message):
    nothing_trains.setattr(_data, "load_data", lambda *a, **k: (_ for _ in ()).throw(
        Trained()))
    got = _fails(limited_data.main, tmp_path, *overrides, config="limited_data_digits")
    assert got.startswith("error: " + message), got


TRANSFER = [
    (["--config.target_classes=-1,5"],
     "config key 'target_classes' = (-1, 5): expected () for all classes, or two or more "
     "distinct class ids >= 0."),
    (["--config.target_classes=5,5"],
     "config key 'target_classes' = (5, 5): expected () for all classes, or two or more "
     "distinct class ids >= 0."),
    (["--config.target_classes=5"],
     "config key 'target_classes' = (5,): expected () for all classes, or two or more "
     "distinct class ids >= 0."),
    (["--config.target_classes=4,5,6"],
     "config keys 'source_classes' = (0, 1, 2, 3, 4) and 'target_classes' = (4, 5, 6) share "
     "classes [4] of the same dataset 'digits': expected disjoint class lists"),
    (["--config.source_classes="],
     "config keys 'source_classes' = () and 'target_classes' = (5, 6, 7, 8, 9) share "
     "classes [5, 6, 7, 8, 9] of the same dataset 'digits'"),
    # Needs the dataset's class count: checked when the data loads, before the teacher.
    (["--config.target_classes=5,12"],
     "classes (5, 12) of 'digits': expected two or more distinct class ids in 0..9 (it "
     "has 10 classes); not classes of it: [12]"),
    (["--config.methods=lwf+foo"], "transfer method 'lwf+foo': use 'no_transfer', "),
    (["--config.paper_table=mit"], "config key 'paper_table' = 'mit': expected '' or "
                                   "'mit_indoor'."),
]


@pytest.mark.parametrize("overrides,message", TRANSFER, ids=[" ".join(o) for o, _ in TRANSFER])
def test_transfer_probes(nothing_trains, tmp_path, overrides, message):
    got = _fails(transfer.main, tmp_path, *overrides, config="transfer_digits")
    assert got.startswith("error: " + message), got


def test_the_configs_choices_are_the_librarys():
    assert _checks.JACOBIAN_OUTPUTS == losses._jacobian.OUTPUT_MODES
    assert _checks.PROBE_DISTRIBUTIONS == losses._projection.DISTRIBUTIONS
    assert _checks.NOISE_KINDS == losses.NOISE_KINDS
    assert models.MODEL_NAMES


def test_a_config_file_with_an_old_key_is_refused_naming_the_new_one():
    config = _base.loss_config()
    outer = ConfigDict(dict(loss=config))
    outer.loss.jacobian_weight = 3.0
    with pytest.raises(ConfigError, match="'loss.jacobian_weight' is now "
                                          "--config.loss.jacobian.weight"):
        _checks.validate(outer)
    with pytest.raises(ConfigError, match=r"loss_config\(jacobain=...\): no such loss term"):
        _base.loss_config(jacobain=dict(weight=1.0))
