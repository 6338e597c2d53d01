"""Scale-out has one home, :mod:`jaxkd.sharding`; ``jaxkd.data`` and ``jaxkd.training``
re-export its names (the same objects), so callers of either keep working."""

import importlib

import pytest

from jaxkd import data, sharding, training


@pytest.mark.parametrize("package,name", [
    (data, "data_sharding"), (data, "shard_batch"),
    *((training, n) for n in ("DATA_AXIS", "auto_mesh", "data_mesh", "initialize_distributed",
                              "is_main_process", "multi_process_env", "replicate",
                              "replicated")),
])
def test_reexported_names_are_the_sharding_modules_own(package, name):
    assert getattr(package, name) is getattr(sharding, name)
    assert name in sharding.__all__


@pytest.mark.parametrize("old", ["jaxkd.data._sharding", "jaxkd.training._sharding"])
def test_the_split_private_modules_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_a_mesh_and_a_sharded_batch_from_the_one_module():
    mesh = sharding.data_mesh()
    batch = sharding.shard_batch({"x": [[0.0]] * 8}, sharding.data_sharding(mesh))
    assert batch["x"].shape == (8, 1)
    assert sharding.num_batch_shards(batch["x"].sharding) == len(mesh.devices.flat)
