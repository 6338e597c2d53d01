"""The docstring examples are run, so the documentation cannot drift from the code."""

import ast
import doctest
import inspect
import pathlib
import re

import pytest

from jaxkd import losses
from jaxkd.losses import (_attention, _common, _distillation, _finite_difference, _jacobian,
                          _noise, _projection, _targets)


MODULES = [_attention, _common, _distillation, _finite_difference, _jacobian, _noise,
           _projection, _targets]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result


# The losses table lives on the docs site's losses page (the README links to it).
TABLE_PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "losses.md"


def _table_signatures():
    """``(name, {keyword: default source or None})`` for each call in the losses table."""
    text = TABLE_PAGE.read_text()
    table = text[text.index("| function | what it computes, per example |"):]
    table = table[:table.index("\n\n")]
    calls = []
    for row in table.splitlines()[2:]:
        for call in re.findall(r"`(\w+)\(([^`]*)\)`", row.split(" | ")[0]):
            name, args = call
            keywords = args.split("*", 1)[1] if "*" in args else ""
            parsed = {}
            items = re.split(r",\s*(?=\w+[=,]|\w+$)", keywords.strip(", "))
            for item in filter(None, (a.strip() for a in items)):
                key, _, default = item.partition("=")
                parsed[key.strip()] = default.strip() or None
            calls.append((name, parsed))
    return calls


def test_readme_table_lists_every_loss():
    named = {name for name, _ in _table_signatures()}
    public = {n for n in losses.__all__ if n.endswith("_loss") or n == "attention_map"}
    assert public - {"squared_noise_expansion", "cross_entropy_noise_expansion"} <= named


@pytest.mark.parametrize("name,keywords", _table_signatures(), ids=lambda v: str(v)[:30])
def test_readme_table_signature_agrees_with_the_function(name, keywords):
    """A keyword shown as ``k=v`` defaults to ``v``; one shown bare is required; every
    required keyword-only argument is shown (a table once showed ``temperature`` as
    required while it defaulted to 1.0)."""
    params = inspect.signature(getattr(losses, name)).parameters
    for key, default in keywords.items():
        assert key in params, f"{name}: the losses table shows `{key}`, not a parameter"
        actual = params[key].default
        if default is None:
            assert actual is inspect.Parameter.empty, \
                f"{name}: the losses table shows `{key}` as required, it defaults to {actual!r}"
        else:
            assert actual is not inspect.Parameter.empty and actual == ast.literal_eval(
                default), f"{name}: the table shows `{key}={default}`, the default is {actual!r}"
    required = {k for k, p in params.items()
                if p.kind is p.KEYWORD_ONLY and p.default is inspect.Parameter.empty}
    assert required <= set(keywords), f"{name}: required {required - set(keywords)} not shown"


def _library_section_blocks():
    text = TABLE_PAGE.read_text()
    section = text[:text.index("\n## What the tests prove")]  # the page's programs
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_library_examples_need_only_the_core_install():
    """The section's examples import nothing beyond jaxkd's core dependencies (no
    scikit-learn: ``pip install -e .`` must run them)."""
    import tomllib
    project = tomllib.loads((TABLE_PAGE.parents[1] / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in project["dependencies"]}
    blocks = _library_section_blocks()
    assert len(blocks) >= 2  # the step with the teacher, and with its targets
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top in core | {"jaxkd", "functools"}, f"example imports {name}"
