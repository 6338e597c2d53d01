"""Sphinx configuration of the jaxkd site: ``python -m sphinx -W -b html docs OUT``.

The Markdown pages are read by myst-parser; the API reference is generated at build time
from each package's ``__all__`` (``_apigen.py``), so a name added to ``__all__`` gets its
page and a removed or renamed one fails the build where a page links to it. The build is
offline: no intersphinx, and MathJax is served from the ``django-static-mathjax`` wheel (a
plain copy of MathJax 3, no Django needed) instead of a CDN.
"""

import pathlib
import re
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
# The repository's jaxkd, not an installed copy, and the generator beside this file.
sys.path[:0] = [str(ROOT), str(DOCS)]

import jaxkd  # noqa: E402

import _apigen  # noqa: E402

project = "jaxkd"
author = "The jaxkd authors"
copyright = "the jaxkd authors"
release = version = jaxkd.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]
templates_path = []

# Markdown: anchors for ``page.md#a-heading`` links, as GitHub makes them.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

# API reference. Signatures as written (type hints in the signature, not repeated in
# the text); members in source order; napoleon reads the Google-style sections.
autodoc_default_options = {"members": True, "member-order": "bysource",
                           "undoc-members": False, "show-inheritance": False}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
# jax.typing.ArrayLike, which autodoc expands into an eight-member union on every
# argument, is shown by its name (see short_array_like below).
ARRAY_LIKE = re.compile(r"~?[\w.]*Array \| ~?[\w.]*ndarray \| ~?[\w.]*bool \| "
                        r"~?[\w.]*number \| bool \| int \| float \| complex")
autosummary_generate = False  # _apigen writes the pages itself (constants included)
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
# Every cross-reference to a full jaxkd name must resolve (a renamed or removed name
# fails the build); other libraries' names have no page here (no intersphinx: the build
# is offline), and neither do names written relative to a module.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!jaxkd\.).*")]
# A type variable of a signature (a model type kept through a call) has no page.
nitpick_ignore = [("py:class", "jaxkd.models._pure.M")]

# Maths: MathJax 3 from a local copy, SVG output (one file, no web fonts).
# (A file in html_static_path is copied into _static/; mathjax_path is relative to it.)
html_static_path = [str(_apigen.local_mathjax()), "_static"]
html_css_files = ["custom.css"]
mathjax_path = _apigen.local_mathjax().name

html_theme = "furo"
html_title = f"jaxkd {release}"
html_theme_options = {"navigation_with_keys": True}
pygments_style = "sphinx"
html_show_sourcelink = False


# Repository files outside docs/ that the pages link to (so that the links work when
# GitHub shows the pages), and the site's page that includes each one.
REPO_PAGES = {
    "README.md": "index",
    "CHANGELOG.md": "changelog",
    "results/fashion_mnist/README.md": "fashion_mnist",
    "benchmarks/results/step_cost_h200.md": "step_cost_h200",
}
LINK = re.compile(r"\]\(((?:\.\./)+[^)#\s]+)(#[^)\s]*)?\)")


def repo_links_to_site_pages(app, docname, source):
    """Points Markdown links to the repository files of REPO_PAGES at their site pages;
    a link to any other file outside docs/ is left alone and fails the build."""
    here = (DOCS / docname).parent

    def replace(match):
        target = (here / match.group(1)).resolve()
        if target.is_relative_to(ROOT) and not target.is_relative_to(DOCS):
            page = REPO_PAGES.get(target.relative_to(ROOT).as_posix())
            if page:
                return f"](/{page}.md{match.group(2) or ''})"
        return match.group(0)

    if app.env.doc2path(docname).suffix == ".md":
        source[0] = LINK.sub(replace, source[0])


def short_array_like(app, what, name, obj, options, signature, return_annotation):
    """Writes ``ArrayLike`` for jax.typing.ArrayLike's expansion in a signature (None,
    autodoc's "unchanged", when there is none)."""
    if not signature or not ARRAY_LIKE.search(signature):
        return None
    return (ARRAY_LIKE.sub("~jax.typing.ArrayLike", signature),
            ARRAY_LIKE.sub("~jax.typing.ArrayLike", return_annotation or "") or None)


def setup(app):
    """Writes the API pages before the sources are read; mends the repository links."""
    app.connect("builder-inited", lambda app: _apigen.write_api_pages(DOCS / "api"))
    app.connect("source-read", repo_links_to_site_pages)
    app.connect("autodoc-process-signature", short_array_like)
