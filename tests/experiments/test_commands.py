"""Every `python -m experiments...` command of the README, the docs and the experiments'
docstrings runs, in its config's smoke mode, in a scratch directory."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import _cli, limited_data, noise_robustness, transfer
from experiments.configs import _base
from tests.experiments.conftest import write_fashion

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
           *sorted((ROOT / "experiments").rglob("*.py"))]
STUDIES = {"limited_data": limited_data, "noise_robustness": noise_robustness,
           "transfer": transfer}
# Keys the smoke mode owns: data this machine may not have (smoke reads the offline
# digits) and the sweep's sizes (smoke shrinks them, with the sizes that depend on them).
DATA_KEYS = {"data_dir", "dataset", "source_dataset", "target_dataset", "examples_per_class"}
README_COMMAND = "python -m experiments.limited_data --workdir runs/limited_data"


def documented_commands() -> list[str]:
    """The commands in source order, continuation lines joined, duplicates dropped (a
    command that differs from an earlier one only in its ``--workdir`` too: it would run
    the same smoke study again, in another directory)."""
    commands, seen = [], set()
    for path in SOURCES:
        text = path.read_text().replace("\\\n", " ")
        for match in re.finditer(r"python -m experiments\.\w+[^`\n#()]*", text):
            command = " ".join(match.group(0).split())
            same = re.sub(r"--workdir[ =]\S+", "--workdir", command)
            if same not in seen:
                commands.append(command)
                seen.add(same)
    return commands


def smoke_argv(command: str, fashion_dir: str = "") -> tuple[str, list[str]]:
    """The study and its arguments with the config in smoke mode and no data paths (but
    ``fashion_dir``, a small Fashion-MNIST, for a config that reads Fashion-MNIST)."""
    words = shlex.split(command)
    study = words[2].removeprefix("experiments.")
    args = words[3:]
    module = STUDIES[study]
    spec = module.DEFAULT_CONFIG
    out = []
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            spec = arg.partition("=")[2]
        elif arg.startswith("--config."):
            key = arg[len("--config."):].partition("=")[0]
            assert key in _base.flat_keys(_cli.load_config(spec)), (command, key)
            if key not in DATA_KEYS:
                out.append(arg)
        else:
            out.append(arg)
    config = _cli.load_config(f"{spec}:smoke")
    datasets = {config.get(k) for k in ("dataset", "source_dataset", "target_dataset")}
    if fashion_dir and "fashion_mnist" in datasets:
        out.append(f"--config.data_dir={fashion_dir}")
    return study, [f"--config={spec}:smoke", *out]


def directories(command: str) -> set[str]:
    """The work directories ``command`` reads or writes: its ``--workdir`` (or its study's
    default) and the one holding a ``teacher_dir`` it reuses."""
    words = shlex.split(command)
    study = STUDIES[words[2].removeprefix("experiments.")]
    found = {study.DEFAULT_WORKDIR}
    for word in words[3:]:
        if word.startswith("--workdir="):
            found = {word.partition("=")[2]}
    for i, word in enumerate(words):
        if word == "--workdir" and i + 1 < len(words):
            found = {words[i + 1]}
    for word in words:
        if word.startswith("--config.teacher_dir="):
            found.add(os.path.dirname(word.partition("=")[2].rstrip("/")))
    return {os.path.normpath(d) for d in found}


def command_groups() -> dict[str, list[str]]:
    """The documented commands in groups that share no work directory, each group in
    source order (a command may read what an earlier one of its group wrote), named by
    its first command's work directory. The groups run as separate tests, so that the
    suite's workers share them out."""
    groups: list[tuple[set[str], list[str]]] = []
    for command in documented_commands():
        dirs = directories(command)
        joined = [g for g in groups if g[0] & dirs]
        merged = (set(dirs).union(*(g[0] for g in joined)),
                  [c for g in joined for c in g[1]] + [command])
        groups = [g for g in groups if g not in joined] + [merged]
    order = documented_commands()
    return {sorted(dirs)[0]: sorted(commands, key=order.index) for dirs, commands in groups}


def test_the_commands_are_found():
    commands = documented_commands()
    assert README_COMMAND in commands
    assert any("--config=transfer_folder" in c and "teacher_dir" in c for c in commands)
    assert all(shlex.split(c)[2].removeprefix("experiments.") in STUDIES for c in commands)
    groups = command_groups()
    assert sorted(c for g in groups.values() for c in g) == sorted(commands)
    # A reader of a teacher runs after, and with, the command that trains it.
    together = next(g for g in groups.values() if README_COMMAND in g)
    assert "python -m experiments.noise_robustness --workdir runs/limited_data" in together
    folder = next(g for g in groups.values() if any("runs/mit_indoor_2" in c for c in g))
    assert any("teacher_only" in c for c in folder)
    # The groups another test runs (CHECKED_ELSEWHERE) exist, and that test calls run_group.
    here = Path(__file__).parent
    for group, test in CHECKED_ELSEWHERE.items():
        assert group in groups, group
        module, name = test.split("::")
        source = (here / module).read_text()
        body = source[source.index(f"def {name}("):]
        body = body[:body.find("\ndef ", 1)]
        assert f'run_group("{group}"' in body, test


# Groups whose smoke work directory another test checks in depth: that test runs the
# group with run_group, so each of these studies trains once in the suite.
CHECKED_ELSEWHERE = {
    "runs/limited_data_fashion":
        "test_limited_data.py::test_limited_data_fashion_search_budget_and_noise",
    "runs/transfer_fashion": "test_transfer.py::test_transfer_fashion_smoke",
}


def run_group(group: str, tmp_path: Path, capsys) -> str:
    """Runs the documented commands of ``group`` in smoke mode in ``tmp_path`` (the
    current directory: relative work directories land there); returns the small
    Fashion-MNIST's ``data_dir`` they read."""
    assert Path.cwd() == tmp_path
    fashion_dir = write_fashion(tmp_path / "data")  # the suite needs no system dataset
    for command in command_groups()[group]:
        study, argv = smoke_argv(command, fashion_dir)
        STUDIES[study].main(argv)
        out = capsys.readouterr().out.strip().splitlines()
        assert out and out[-1].startswith("results: ") or "teacher_only" in command, command
        if not any("teacher_only" in a for a in argv):
            assert Path(out[-1].removeprefix("results: ")).is_file(), command
    return fashion_dir


@pytest.mark.parametrize("group", sorted(set(command_groups()) - set(CHECKED_ELSEWHERE)))
def test_every_documented_command_runs_in_smoke_mode(group, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative work directories land in the scratch directory
    run_group(group, tmp_path, capsys)


def test_the_readme_command_as_a_new_process_uses_every_core(tmp_path):
    """A fresh process (JAX not yet started) gets one host device per core, here forced
    to 2 by the environment variable; its teacher trains data parallel on both (the
    students' runs are the in-process tests' above: a teacher shows the devices)."""
    study, argv = smoke_argv(README_COMMAND)
    env = {**os.environ, "JAXKD_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", f"experiments.{study}", *argv,
                    "--config.num_devices=0", "--config.teacher_only=true"], cwd=tmp_path,
                   env=env, check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "runs" / "limited_data" / "teacher" /
                         "result.json").read_text())
    assert result["devices"] == 2
