"""experiments._cli: names and paths, typed overrides, the nearest key for a typo and the
new spelling of an old key, --help with words for every key, light config files, one-line
failures."""

import errno
import os
import subprocess
import sys

import pytest

from experiments import _cli, _workdir, limited_data
from experiments.configs import _base, _checks
from experiments.configs._base import ConfigError
from jaxkd import training

KW = dict(study="limited_data", default_config="limited_data_digits",
          default_workdir="runs/limited_data")
MODES = [(name, mode) for name in _cli.config_names() for mode in ("", "smoke")]


def test_defaults():
    config, workdir = _cli.parse([], **KW)
    assert workdir == "runs/limited_data"
    assert config.dataset == "digits"
    assert config.num_seeds >= 5
    assert tuple(config.examples_per_class) == (5, 10, 50, "all")
    assert config.num_cpu_devices == 0 and config.num_devices == 0


def test_overrides_take_the_type_of_the_default(tmp_path):
    config, workdir = _cli.parse(
        ["--workdir", str(tmp_path), "--config.dataset=cifar100", "--config.num_seeds", "3",
         "--config.train.learning_rate=0.1", "--config.examples_per_class=10,all",
         "--config.loss.jacobian.normalize=false", "--config.methods=ce,kd+jacobian+ce",
         "--config.image_size=32,32", "--config.noise_sigmas=0,0.5,1",
         "--config.noise_examples_per_class=5"], **KW)
    assert workdir == str(tmp_path)
    assert config.dataset == "cifar100" and config.num_seeds == 3
    assert config.train.learning_rate == 0.1
    assert config.examples_per_class == (10, "all")
    assert config.loss.jacobian.normalize is False
    assert config.methods == ("ce", "kd+jacobian+ce")
    assert config.image_size == (32, 32)
    assert config.noise_sigmas == (0.0, 0.5, 1.0)
    assert all(isinstance(s, float) for s in config.noise_sigmas)
    assert config.noise_examples_per_class == (5,)


def test_unknown_key_names_the_nearest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.num_step'; did you "
                                          r"mean --config.train.num_steps\?"):
        _cli.parse(["--config.train.num_step=5"], **KW)
    with pytest.raises(ConfigError, match="did you mean --config.num_seeds"):
        _cli.parse(["--config.num_seed=5"], **KW)


def test_unknown_flag_bad_value_missing_config():
    with pytest.raises(ConfigError, match="Unknown command line flag 'workdirr'"):
        _cli.parse(["--workdirr=x"], **KW)
    with pytest.raises(ConfigError, match="num_seeds=many"):
        _cli.parse(["--config.num_seeds=many"], **KW)
    with pytest.raises(ConfigError, match="Did you mean 'limited_data_cifar100'"):
        _cli.parse(["--config=limited_data_cifar10"], **KW)
    with pytest.raises(ConfigError, match="unknown config mode 'smok'"):
        _cli.parse(["--config=limited_data_digits:smok"], **KW)


def test_config_by_name_and_path_agree_and_smoke_is_the_config_argument():
    by_name, _ = _cli.parse(["--config=transfer_digits"], **KW)
    by_path, _ = _cli.parse([f"--config={_cli.CONFIG_DIR / 'transfer_digits.py'}"], **KW)
    assert by_name.to_dict() == by_path.to_dict()
    smoke, _ = _cli.parse(["--config", "transfer_digits:smoke", "--config.num_seeds=2"], **KW)
    assert smoke.train.num_steps < by_name.train.num_steps and smoke.num_seeds == 2


@pytest.mark.parametrize("name,mode", MODES)
def test_every_key_of_every_config_has_words_and_passes_validation(name, mode):
    config = _cli.load_config(f"{name}:{mode}" if mode else name)
    missing = [k for k in _base.flat_keys(config) if not _base.describe(k)]
    assert not missing, f"{name}:{mode} keys without a description: {missing}"
    _checks.validate(config)


def test_help_prints_every_key_with_its_meaning(capsys):
    with pytest.raises(SystemExit) as e:
        _cli.parse(["--config=transfer_digits", "--help"], **KW)
    assert e.value.code == 0
    out = capsys.readouterr().out
    config = _cli.load_config("transfer_digits")
    for key in _base.flat_keys(config):
        line = next(i for i, text in enumerate(out.splitlines())
                    if text.strip().startswith(f"--config.{key}="))
        assert out.splitlines()[line + 1].strip() == _base.describe(key)


def test_every_config_docstring_holds_its_command():
    import importlib.util
    for name in _cli.config_names():
        path = _cli.CONFIG_DIR / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert "python -m experiments." in module.__doc__, path
        assert "smoke" in module.__doc__, path


def test_reading_a_config_does_not_import_jax():
    code = ("import sys\nfrom experiments import _cli\n"
            "for name in _cli.config_names():\n"
            "    _cli.load_config(name); _cli.load_config(name + ':smoke')\n"
            "heavy = [m for m in ('jax', 'flax', 'optax', 'jaxkd', 'matplotlib') "
            "if m in sys.modules]\nassert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=_cli.CONFIG_DIR.parents[1])


def test_validation_names_the_bad_key():
    config = _cli.load_config("limited_data_digits")
    config.train.num_evals = 500
    with pytest.raises(ConfigError, match=r"'train.num_evals' = 500: expected at most "
                                          r"num_steps \(300\)"):
        _checks.validate(config)
    config = _cli.load_config("limited_data_digits")
    config.examples_per_class = (5, 0)
    with pytest.raises(ConfigError, match="'examples_per_class'"):
        _checks.validate(config)
    config = _cli.load_config("limited_data_digits")
    config.student.name = "vgg5"
    with pytest.raises(ConfigError, match="'student.name' = 'vgg5'"):
        _checks.validate(config)


def test_main_exits_with_the_message_not_a_traceback():
    with pytest.raises(SystemExit, match="error: unknown config key 'nume_seeds'"):
        limited_data.main(["--config.nume_seeds=2"])


def test_bad_method_fails_before_training():
    with pytest.raises(ConfigError, match="unknown loss term"):
        limited_data.build_objective("kd+jacobain", _base.loss_config())


def _main(run, argv):
    return _cli.main("limited_data", run, lambda s: "", default_config="limited_data_digits",
                     default_workdir="unused", argv=argv)


@pytest.mark.parametrize("kind", ["file", "empty"])
def test_a_workdir_that_is_a_file_or_empty_is_a_usage_error(tmp_path, capsys, kind):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    workdir = str(path) if kind == "file" else ""

    def run(config, workdir, command=None):
        raise AssertionError("must not run")

    with pytest.raises(SystemExit) as e:
        _main(run, ["--workdir", workdir, "--config=limited_data_digits:smoke"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err == ("error: --workdir '%s' is a file, not a directory; give a directory (it "
                   "will hold the runs and the results)." % path if kind == "file" else
                   "error: --workdir is empty; give the directory for the study's runs and "
                   "results (e.g. --workdir runs/limited_data).")
    assert path.read_text() == "not a directory"


def _fails_with(error):
    def run(config, workdir, command=None):
        raise error
    return run


def test_a_full_disk_anywhere_is_one_line(tmp_path):
    argv = ["--workdir", str(tmp_path), "--config=limited_data_digits:smoke"]
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "results.json"))
    with pytest.raises(SystemExit) as e:
        _main(_fails_with(full), argv)
    full_hint = ("; free disk space (or give another --workdir) and run again: finished runs "
                 "are kept and an unfinished one resumes from its last checkpoint.")
    assert e.value.code == (f"error: No space left on device: {tmp_path / 'results.json'}"
                            + full_hint)
    # Deep in another error's chain, as orbax's asyncio tasks report it.
    try:
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("Task exception was never retrieved\n" + "x\n" * 700) \
                from inner
    except RuntimeError as wrapped:
        deep = wrapped
    with pytest.raises(SystemExit) as e:
        _main(_fails_with(deep), argv)
    assert e.value.code == (f"error: No space left on device: {tmp_path / 'results.json'} "
                            f"(RuntimeError)" + full_hint)
    checkpoint = training.CheckpointError(f"cannot write a checkpoint to {tmp_path}: No space "
                                          "left on device")
    with pytest.raises(SystemExit) as e:
        _main(_fails_with(checkpoint), argv)
    assert e.value.code == f"error: cannot write a checkpoint to {tmp_path}: No space left " \
                           "on device"
    with pytest.raises(SystemExit, match="^error: bad value"):
        _main(_fails_with(ConfigError("bad value\nsecond line")), argv)


def test_an_unexpected_error_keeps_its_traceback_with_debug(tmp_path, monkeypatch):
    # Without --debug it is one line too (tests/experiments/test_reliability.py).
    monkeypatch.delenv(_cli.DEBUG_ENV, raising=False)
    with pytest.raises(ZeroDivisionError):
        _main(_fails_with(ZeroDivisionError("a bug")), ["--workdir", str(tmp_path), "--debug"])
    with pytest.raises(OSError, match="Connection refused"):  # not one of the known errnos
        _main(_fails_with(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
              ["--workdir", str(tmp_path), "--debug"])


def test_the_lock_is_released_after_a_failure(tmp_path):
    with pytest.raises(SystemExit):
        _main(_fails_with(ConfigError("x")), ["--workdir", str(tmp_path)])
    assert os.path.realpath(str(tmp_path)) not in _workdir._HELD


def test_the_known_os_error_is_found_behind_an_unknown_one():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/w/ckpt")
        except OSError as full:
            raise FileNotFoundError(errno.ENOENT, "gone", "/w/tmp") from full
    except OSError as e:
        chained = RuntimeError("save failed")
        chained.__cause__ = e
    found = _cli._os_error(chained)
    assert (found.errno, found.filename) == (errno.ENOSPC, "/w/ckpt")
    # tensorstore reports the code in its message, not as an OSError.
    found = _cli._os_error(ValueError("write failed [os_error_code='122']"))
    assert found.errno == errno.EDQUOT
    # Any other code is found too (its failure line names it, without a remedy).
    assert _cli._os_error(ValueError("write failed [os_error_code='2']")).errno == errno.ENOENT


def test_the_nearest_key_is_the_one_a_user_most_plausibly_meant():
    valid = _base.flat_keys(_cli.load_config("limited_data_fashion"))
    assert _cli.nearest_key("train.num_step", valid) == "train.num_steps"
    assert _cli.nearest_key("train.batchsize", valid) == "train.batch_size"
    assert _cli.nearest_key("search_sizes", valid) == "search.sizes"
    assert _cli.nearest_key("search.size", valid) == "search.sizes"
    assert _cli.nearest_key("loss.jacobian.weigth", valid) == "loss.jacobian.weight"
    assert _cli.nearest_key("teacher.widht", valid) == "teacher.width"
    # A key of an earlier version names its new spelling, not a look-alike.
    with pytest.raises(ConfigError, match=r"'weight_search_sizes' is now "
                                          r"--config.search.sizes"):
        _cli.parse(["--config.weight_search_sizes=10"], **KW)


@pytest.mark.parametrize("body,message", [
    ("def get_config(arg=None):\n    raise RuntimeError('no such dataset here')\n",
     " failed: RuntimeError: no such dataset here"),
    ("def get_config(arg=None):\n    return {'dataset': 'digits'}\n",
     ": get_config() returned a dict; expected an ml_collections.ConfigDict."),
], ids=["raises", "plain_dict"])
def test_a_broken_config_file_is_one_line_naming_it(tmp_path, monkeypatch, body, message):
    monkeypatch.delenv(_cli.DEBUG_ENV, raising=False)
    path = tmp_path / "mine.py"
    path.write_text(body)
    argv = ["--workdir", str(tmp_path / "work"), f"--config={path}"]
    with pytest.raises(SystemExit) as e:
        limited_data.main(argv)
    assert e.value.code == f"error: config file {str(path)!r}{message}"
    with pytest.raises(ConfigError):  # --debug: the exception itself, with its traceback
        limited_data.main([*argv, "--debug"])


def test_each_studys_help_opens_with_what_it_does_and_needs(capsys):
    from experiments import noise_robustness, transfer
    heads = []
    for number, study in enumerate((limited_data, noise_robustness, transfer), start=1):
        with pytest.raises(SystemExit):
            study.main(["--help"])
        head = capsys.readouterr().out.splitlines()[0]
        assert head == study.ABOUT and head.startswith(f"Study {number}"), head
        assert "needs" in head or "shares" in head, head
        heads.append(head)
    assert len(set(heads)) == 3
