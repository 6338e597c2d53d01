"""A sharded iterator that keeps an epoch's last batch must be able to split it."""

import jax
import numpy as np
import pytest

from jaxkd import data


def _dataset(n):
    return data.Dataset(images=np.zeros((n, 2, 2, 1), np.float32),
                        labels=(np.arange(n) % 2).astype(np.int32), num_classes=2,
                        name="tiny", class_names=("a", "b"),
                        source_index=np.arange(n, dtype=np.int64))


def test_unsplittable_last_batch_is_refused_at_construction():
    sharding = data.data_sharding(jax.make_mesh((4,), ("data",)))
    # 10 = 2 x 4 + 2: the last batch of 2 cannot go to 4 devices.
    with pytest.raises(ValueError, match="drop_remainder=False with a sharding"):
        data.BatchIterator(_dataset(10), 4, drop_remainder=False, sharding=sharding)


def test_splittable_last_batch_is_kept():
    sharding = data.data_sharding(jax.make_mesh((4,), ("data",)))
    it = data.BatchIterator(_dataset(12), 8, drop_remainder=False, shuffle=False,
                            num_epochs=1, sharding=sharding)
    assert [b["label"].shape[0] for b in it] == [8, 4]
