"""The library's own needs only: importing it pulls in no experiment-only module."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_ONLY = ("matplotlib", "tensorboardX", "ml_collections", "absl", "sklearn", "tqdm")


def _imported(statement: str) -> list[str]:
    code = (f"import sys\n{statement}\n"
            f"print(' '.join(m for m in {EXPERIMENT_ONLY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout
    return out.split()


def test_losses_import_no_experiment_module():
    assert _imported("import jaxkd.losses") == []


def test_models_data_and_training_import_none_beyond_their_dependencies():
    """flax itself imports absl: only what jaxkd adds on top of jax, flax, optax and orbax
    counts."""
    stack = set(_imported("import jax, flax.nnx, optax, orbax.checkpoint"))
    ours = set(_imported("import jaxkd.models, jaxkd.data, jaxkd.training"))
    assert ours - stack == set()


def test_core_dependencies_leave_the_experiments_out():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for name in ("matplotlib", "tensorboardx", "ml_collections", "absl", "scikit-learn",
                 "chex", "pytest"):
        assert name not in core, name
    extras = project["optional-dependencies"]
    assert "jaxkd[experiments]" in extras["test"] and any(
        d.startswith("chex") for d in extras["test"])
    assert project["dynamic"] == ["version"] and "version" not in project
