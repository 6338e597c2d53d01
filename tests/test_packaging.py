"""``python -m build`` gives a wheel and an sdist that install in a fresh environment,
import, and carry ``py.typed`` (offline: the build backend and jaxkd's dependencies come
from the environment running the tests)."""

import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist, and the wheel built from it (``python -m build``'s default route)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)
    (wheel,), (sdist,) = out.glob("jaxkd-*.whl"), out.glob("jaxkd-*.tar.gz")
    return wheel, sdist


def _version() -> str:
    import jaxkd
    return jaxkd.__version__


@pytest.mark.slow
def test_the_wheel_and_the_sdist_carry_the_package_and_py_typed(dist):
    wheel, sdist = dist
    assert wheel.name.startswith(f"jaxkd-{_version()}-") and "py3-none-any" in wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert "jaxkd/py.typed" in names and "jaxkd/losses/__init__.py" in names
    assert not any(n.startswith(("tests/", "experiments/", "benchmarks/", "docs/"))
                   for n in names), "the wheel ships the library only"
    members = tarfile.open(sdist).getnames()
    assert f"jaxkd-{_version()}/jaxkd/py.typed" in members


@pytest.mark.slow
@pytest.mark.parametrize("artifact", ["wheel", "sdist"])
def test_each_installs_in_a_fresh_environment_and_imports(dist, artifact, tmp_path):
    path = dist[0] if artifact == "wheel" else dist[1]
    env = tmp_path / "venv"
    # --system-site-packages: jax, flax, ... (and the build backend, for the sdist) come
    # from this environment; --no-deps --no-index: nothing is downloaded.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)],
                   check=True)
    python = env / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", str(path)], check=True, capture_output=True)
    check = ("import importlib.resources, pathlib, jaxkd, jaxkd.losses, jaxkd.training, "
             "jaxkd.data, jaxkd.models, jaxkd.sharding; "
             "print(jaxkd.__version__, pathlib.Path(jaxkd.__file__).resolve(), "
             "importlib.resources.files('jaxkd').joinpath('py.typed').is_file())")
    out = subprocess.run([str(python), "-c", check], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out[0] == _version()
    assert pathlib.Path(out[1]).is_relative_to(env.resolve()), out  # the installed copy
    assert out[2] == "True"
