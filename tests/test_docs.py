"""The documentation site builds offline with warnings as errors, and documents every
public name of the five packages with its signature."""

import html
import importlib
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = ("jaxkd.losses", "jaxkd.training", "jaxkd.data", "jaxkd.models", "jaxkd.sharding")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site: ``python -m sphinx -W -b html docs OUT`` (a fresh environment,
    so every page is read and every warning seen)."""
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q",
                          "-b", "html", "docs", str(out)], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    return out


def test_the_generator_documents_the_five_packages():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import _apigen
    finally:
        sys.path.remove(str(ROOT / "docs"))
    assert _apigen.MODULES == MODULES
    api = (ROOT / "docs" / "api.md").read_text()
    assert all(f"api/{m}\n" in api for m in MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_every_name_in_all_has_its_page_and_object(site, module):
    ids = {}
    for name in importlib.import_module(module).__all__:
        page = site / "api" / f"{module}.{name}.html"
        assert page.exists(), f"{module}.{name} has no page"
        ids[name] = set(re.findall(r'\bid="([^"]+)"', page.read_text()))
        # Described in full here, or re-exported with a link to its home.
        assert f"{module}.{name}" in ids[name], f"{module}.{name} is not described"
    index = (site / "api" / f"{module}.html").read_text()
    for name in ids:
        assert f"{module}.{name}.html" in index, f"{module}'s page does not list {name}"


def _signature(page: pathlib.Path, name: str) -> str:
    text = page.read_text()
    start = text.index(f'id="{name}"')
    return html.unescape(re.sub(r"<[^>]+>", "", text[start:text.index("</dt>", start)]))


def test_the_jacobian_losses_show_signatures_and_maths(site):
    jm = site / "api" / "jaxkd.losses.jacobian_matching_loss.html"
    signature = _signature(jm, "jaxkd.losses.jacobian_matching_loss")
    for argument in ("student_fn", "teacher_fn", "x", "labels", "outputs", "normalize",
                     "remat_chunks"):
        assert argument in signature, (argument, signature)
    assert '<div class="math' in jm.read_text()  # the docstring's .. math:: block
    targets = _signature(site / "api" / "jaxkd.losses.teacher_targets.html",
                         "jaxkd.losses.teacher_targets")
    assert "projections" in targets and "num_probes" in targets


def test_maths_is_served_from_the_site_not_a_cdn(site):
    page = (site / "api" / "jaxkd.losses.jacobian_matching_loss.html").read_text()
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', page)
    assert any(s.split("?")[0].endswith("/tex-svg-full.js") for s in scripts), scripts
    assert not any("://" in s for s in scripts), scripts
    assert (site / "_static" / "tex-svg-full.js").stat().st_size > 1_000_000


def test_the_targets_guide_explains_staleness_under_augmentation(site):
    text = (site / "guides" / "teacher_targets.html").read_text()
    assert "When targets go stale" in text and "augmentation" in text
