"""The command line: config by name or path, typed overrides, errors that list the keys."""

import pytest

from experiments import _common
from experiments._common import ConfigError, parse_args

KW = dict(study="limited_data", default_config="limited_data_digits",
          default_workdir="runs/limited_data")


def test_defaults():
    config, workdir = parse_args([], **KW)
    assert workdir == "runs/limited_data"
    assert config.dataset == "digits"
    assert config.num_seeds >= 5
    assert tuple(config.examples_per_class) == (5, 10, 50, "all")


def test_overrides_take_the_type_of_the_default(tmp_path):
    config, workdir = parse_args(
        ["--workdir", str(tmp_path), "--config.dataset=cifar100", "--config.num_seeds", "3",
         "--config.train.learning_rate=0.1", "--config.examples_per_class=10,all",
         "--config.loss.jacobian_normalize=false", "--config.methods=ce,kd+jacobian+ce",
         "--config.image_size=32,32"], **KW)
    assert workdir == str(tmp_path)
    assert config.dataset == "cifar100" and config.num_seeds == 3
    assert config.train.learning_rate == 0.1
    assert tuple(config.examples_per_class) == (10, "all")
    assert config.loss.jacobian_normalize is False
    assert tuple(config.methods) == ("ce", "kd+jacobian+ce")
    assert tuple(config.image_size) == (32, 32)


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ConfigError, match="unknown config key 'train.num_step'") as e:
        parse_args(["--config.train.num_step=5"], **KW)
    assert "train.num_steps" in str(e.value) and "loss.jacobian_weight" in str(e.value)


def test_unknown_flag_and_bad_value():
    with pytest.raises(ConfigError, match="unknown argument"):
        parse_args(["--workdirr=x"], **KW)
    with pytest.raises(ConfigError, match="bad value"):
        parse_args(["--config.num_seeds=many"], **KW)
    with pytest.raises(ConfigError, match="no config file"):
        parse_args(["--config=nope"], **KW)


def test_config_by_path_and_name_agree():
    by_name, _ = parse_args(["--config=transfer_digits"], **KW)
    by_path, _ = parse_args([f"--config={_common.CONFIG_DIR / 'transfer_digits.py'}"], **KW)
    assert by_name.to_dict() == by_path.to_dict()


def test_every_config_docstring_holds_its_command():
    import importlib.util
    for path in sorted(_common.CONFIG_DIR.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert "python -m experiments." in module.__doc__, path
        module.get_config()


def test_bad_method_fails_before_training():
    with pytest.raises(ConfigError, match="unknown loss term"):
        _common.build_objective("kd+jacobain", _common.loss_config())
