"""Every ``python -m benchmarks...`` command of the README and the docs names a module that
exists and, for ``step_cost``, flags its command line accepts (parsed, not run: a run takes
minutes)."""

import importlib
import os
import re
import shlex
import tempfile

import pytest

from benchmarks import _harness, step_cost

SOURCES = ["README.md", *sorted(os.path.join("docs", f)
                                for f in os.listdir(os.path.join(_harness.REPO, "docs"))
                                if f.endswith(".md"))]


def documented_commands() -> list[str]:
    commands = []
    for source in SOURCES:
        with open(os.path.join(_harness.REPO, source)) as f:
            text = f.read().replace("\\\n", " ")  # join continued shell lines
        for match in re.finditer(r"python -m benchmarks\.\w+[^`\n#()]*", text):
            command = match.group(0).strip()
            if "--worker" not in command:  # started by step_cost itself, not by a user
                commands.append(command)
    return sorted(set(commands))


def test_the_commands_are_found():
    commands = documented_commands()
    assert "python -m benchmarks.step_cost --quick" in commands
    assert "python -m benchmarks.user_model" in commands


@pytest.mark.parametrize("command", documented_commands())
def test_every_documented_command_names_a_module_and_valid_flags(command):
    argv = shlex.split(command)
    module = importlib.import_module(argv[2])
    assert callable(module.main), command
    if argv[2] == "benchmarks.step_cost":
        args = step_cost.parse_args(argv[3:])
        if args.quick and args.out.startswith(tempfile.gettempdir()) and "--out" not in argv:
            os.rmdir(args.out)  # --quick made a fresh, empty output folder
