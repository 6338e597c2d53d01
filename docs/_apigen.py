"""The API reference's pages, written from each package's ``__all__`` at build time.

One page per module (its docstring and a table of its names by kind) and one page per
public name (autodoc: the signature and the rendered docstring). A name that a module
re-exports from another documented module (``jaxkd.training.data_mesh`` is
``jaxkd.sharding.data_mesh``) gets a short page that says so and links to its home.
A constant, which has no docstring of its own, is shown with its value and the comment
above its definition. Pages are rewritten only when their text changes.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re
import typing

import mathjax

MODULES = ("jaxkd.losses", "jaxkd.training", "jaxkd.data", "jaxkd.models", "jaxkd.sharding")
ROOT = pathlib.Path(__file__).resolve().parents[1]
KINDS = (("function", "Functions"), ("class", "Classes"), ("exception", "Exceptions"),
         ("alias", "Type aliases"), ("data", "Constants"))


def local_mathjax() -> pathlib.Path:
    """MathJax 3's single-file TeX-to-SVG build, from the installed ``mathjax`` package.

    ``tex-svg-full`` carries every TeX extension and draws glyphs as SVG paths, so the
    page needs no other MathJax file and no web font.
    """
    return pathlib.Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg-full.js"


def kind(obj) -> str:
    """The Python domain's object type for ``obj`` (``alias``: a type alias, shown as
    data with its value)."""
    if typing.get_origin(obj) is not None:
        return "alias"
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if callable(obj):
        return "function"
    return "data"


def defining_module(module: str, name: str, obj) -> str:
    """The module that defines ``name``: ``__module__``, or for a constant the file whose
    top level assigns it."""
    defined = getattr(obj, "__module__", None) if kind(obj) not in ("data", "alias") else None
    if defined:
        return defined
    pattern = re.compile(rf"^{re.escape(name)}\s*(:[^=\n]*)?=", re.M)
    for path in sorted((ROOT / "jaxkd").rglob("*.py")):
        if pattern.search(path.read_text()):
            return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(
                ".__init__")
    return module


def home(module: str, name: str, obj) -> str:
    """The documented module where ``name`` is described in full: the longest documented
    module that contains its definition and lists it."""
    defined = defining_module(module, name, obj)
    homes = [m for m in MODULES if (defined == m or defined.startswith(m + "."))
             and name in importlib.import_module(m).__all__]
    return max(homes, key=len) if homes else module


def comment_above(module: str, name: str) -> str:
    """The ``#`` comment lines just above ``name``'s assignment in ``module``'s file."""
    path = ROOT / pathlib.Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    lines = path.read_text().splitlines()
    pattern = re.compile(rf"^{re.escape(name)}\s*(:[^=\n]*)?=")
    for i, line in enumerate(lines):
        if pattern.match(line):
            above = []
            while i > 0 and lines[i - 1].startswith("#"):
                i -= 1
                above.insert(0, lines[i].lstrip("# "))
            return " ".join(above)
    return ""


def heading(text: str, mark: str = "=") -> str:
    return f"{text}\n{mark * len(text)}\n"


def name_page(module: str, name: str) -> str:
    """The rST of one public name's page."""
    obj = getattr(importlib.import_module(module), name)
    where = home(module, name, obj)
    # The short name as the title (the signature below carries the module): full names
    # break mid-word in the sidebar.
    lines = [heading(name), f".. currentmodule:: {module}", ""]
    if where != module:
        what = kind(obj)
        signature = ""
        if what in ("function", "class"):
            try:
                signature = str(inspect.signature(obj))
            except (TypeError, ValueError):
                signature = ""
        directive = "data" if what == "alias" else what
        lines += [f".. py:{directive}:: {name}{signature}", "",
                  f"   Re-exported from :mod:`{where}`: the same object as "
                  f":py:obj:`{where}.{name}`, documented there.", ""]
    elif kind(obj) in ("data", "alias"):
        note = comment_above(defining_module(module, name, obj), name)
        lines += [f".. py:data:: {name}", f"   :value: {shown(obj)}", ""]
        lines += [f"   {note}" if note else "   A constant of this module.", ""]
    elif kind(obj) == "function":
        lines += [f".. autofunction:: {name}", ""]
    else:
        lines += [f".. auto{kind(obj)}:: {name}", "   :members:", ""]
    return "\n".join(lines)


def shown(obj) -> str:
    """``repr(obj)``, with jax's array type under its public name."""
    return repr(obj).replace("jax.jaxlib._jax.Array", "jax.Array")


def summary(obj) -> str:
    """The first line of ``obj``'s docstring (or a constant's value), for the tables."""
    if kind(obj) in ("data", "alias"):
        return f"``{shown(obj)}``"
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def module_page(module: str) -> str:
    """The rST of one module's page: its docstring, then its names by kind."""
    mod = importlib.import_module(module)
    lines = [heading(module), f".. automodule:: {module}", "   :no-members:", "",
             f".. currentmodule:: {module}", ""]
    toctree = []
    for what, title in KINDS:
        names = sorted((n for n in mod.__all__ if kind(getattr(mod, n)) == what),
                       key=str.lower)
        if not names:
            continue
        lines += [heading(title, "-"), ".. list-table::", "   :widths: 35 65", ""]
        for name in names:
            obj = getattr(mod, name)
            where = home(module, name, obj)
            text = summary(obj) if where == module else f"Re-exported from :mod:`{where}`."
            lines += [f"   * - :py:obj:`{name} <{module}.{name}>`", f"     - {text}"]
            toctree.append(f"   {module}.{name}")
        lines.append("")
    lines += [".. toctree::", "   :hidden:", ""] + toctree + [""]
    return "\n".join(lines)


def write(path: pathlib.Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write_api_pages(directory: pathlib.Path) -> None:
    """Writes ``directory/<module>.rst`` and ``directory/<module>.<name>.rst`` for every
    documented module and name, and removes pages of names that left ``__all__``."""
    directory.mkdir(exist_ok=True)
    wanted = set()
    for module in MODULES:
        pages = {f"{module}.rst": module_page(module)}
        for name in importlib.import_module(module).__all__:
            pages[f"{module}.{name}.rst"] = name_page(module, name)
        for filename, text in pages.items():
            write(directory / filename, text)
        wanted.update(pages)
    for stale in directory.glob("jaxkd.*.rst"):
        if stale.name not in wanted:
            stale.unlink()
