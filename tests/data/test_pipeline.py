"""Batching, restore, sharding, normalisation, augmentation and noise."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import data


@pytest.fixture(scope="module")
def train():
    return data.load("digits").train


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _labels(batches):
    return np.concatenate([np.asarray(b["label"]) for b in batches])


def test_same_seed_same_batches(train):
    a = _take(data.BatchIterator(train, 64, seed=5), 30)
    b = _take(data.BatchIterator(train, 64, seed=5), 30)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert a[0]["image"].shape == (64, 8, 8, 1) and a[0]["image"].dtype == np.float32
    assert a[0]["label"].dtype == np.int32
    c = _take(data.BatchIterator(train, 64, seed=6), 1)
    assert not np.array_equal(a[0]["label"], c[0]["label"])


def test_epochs_are_permutations_and_reshuffled(train):
    it = data.BatchIterator(train, 100, seed=0, drop_remainder=False, num_epochs=2)
    batches = list(it)
    per_epoch = it.steps_per_epoch
    assert len(batches) == 2 * per_epoch
    assert batches[per_epoch - 1]["label"].shape[0] == len(train) % 100
    first = np.concatenate([b["image"] for b in batches[:per_epoch]])
    np.testing.assert_array_equal(np.sort(first.reshape(len(train), -1), axis=0),
                                  np.sort(train.images.reshape(len(train), -1), axis=0))
    assert not np.array_equal(_labels(batches[:per_epoch]), _labels(batches[per_epoch:]))


def test_drop_remainder(train):
    it = data.BatchIterator(train, 100, num_epochs=1)
    batches = list(it)
    assert len(batches) == len(train) // 100
    assert all(b["label"].shape == (100,) for b in batches)


def test_restore_continues_sequence(train):
    reference = _take(data.BatchIterator(train, 128, seed=1), 25)
    it = data.BatchIterator(train, 128, seed=1)
    _take(it, 17)  # crosses an epoch boundary (10 batches per epoch)
    state = json.loads(json.dumps(it.get_state()))
    assert state == {"seed": 1, "epoch": 1, "index": 7 * 128}
    resumed = data.BatchIterator(train, 128, seed=99)
    resumed.set_state(state)
    for x, y in zip(_take(resumed, 8), reference[17:]):
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["image"], y["image"])


def test_set_state_rejects_bad_state(train):
    it = data.BatchIterator(train, 8)
    with pytest.raises(ValueError, match=r"state lacks \['index'\]"):
        it.set_state({"seed": 0, "epoch": 0})


def test_sharded_prefetch_restores_from_yielded_position(train):
    mesh = jax.make_mesh((8,), ("data",))
    sharding = data.data_sharding(mesh)
    it = data.BatchIterator(train, 64, seed=2, sharding=sharding, prefetch=2)
    batches = _take(it, 3)
    assert batches[0]["image"].sharding == sharding
    assert len(batches[0]["image"].addressable_shards) == 8
    state = it.get_state()
    assert state == {"seed": 2, "epoch": 0, "index": 3 * 64}
    plain = data.BatchIterator(train, 64)
    plain.set_state(state)
    np.testing.assert_array_equal(np.asarray(next(it)["label"]), next(plain)["label"])


def test_batch_not_divisible_by_devices(train):
    sharding = data.data_sharding(jax.make_mesh((8,), ("data",)))
    with pytest.raises(ValueError, match="batch_size=12 is not divisible by the 8 devices"):
        data.BatchIterator(train, 12, sharding=sharding)
    with pytest.raises(ValueError, match="batch size 12, which is not divisible by the 8"):
        data.shard_batch({"image": np.zeros((12, 8, 8, 1), np.float32)}, sharding)


def test_iterator_bad_arguments(train):
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        data.BatchIterator(train, 0)
    with pytest.raises(ValueError, match="batch_size=5000 exceeds the"):
        data.BatchIterator(train, 5000)


def test_normalization(train):
    mean, std = data.normalization_stats(train.images)
    assert mean.shape == std.shape == (1,) and mean.dtype == np.float32
    out = jax.jit(data.normalize)(train.images, mean, std)
    np.testing.assert_allclose(float(jnp.mean(out)), 0.0, atol=1e-4)
    np.testing.assert_allclose(float(jnp.std(out)), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match=r"mean and std must have shape \(1,\)"):
        data.normalize(train.images, np.zeros(3, np.float32), np.ones(3, np.float32))


def test_augment_jit():
    # 64 distinct images and a fixed key: a no-op (or crop-only, or flip-only) augment fails.
    n, size = 64, 4
    images = jnp.arange(n * size * size * 3, dtype=jnp.float32).reshape(n, size, size, 3) + 1.0
    key = jax.random.key(0)
    fn = jax.jit(lambda k, x: data.augment(k, x, crop_padding=1, flip=True))
    out = np.asarray(fn(key, images))
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(out, fn(key, images))
    # Every output is a crop of the zero-padded input (offset (i, j), (1, 1) = unshifted),
    # possibly flipped left-right; pixel values are distinct and nonzero, so the match is unique.
    shifted = flipped = 0
    for result, image in zip(out, np.asarray(images)):
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
        matches = [(i, j, f) for i in range(3) for j in range(3) for f in (False, True)
                   if np.array_equal(result, padded[i:i + size, j:j + size][:, ::-1] if f
                                     else padded[i:i + size, j:j + size])]
        assert len(matches) == 1, matches
        i, j, f = matches[0]
        shifted += (i, j) != (1, 1)
        flipped += f
    assert 0 < shifted < n and 0 < flipped < n, (shifted, flipped)
    # The parts alone: a crop is a shifted window, a flip mirrors or keeps each image.
    crops = np.asarray(data.random_crop(key, images, padding=1))
    crop_shifted = 0
    for crop, image in zip(crops, np.asarray(images)):
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
        offsets = [(i, j) for i in range(3) for j in range(3)
                   if np.array_equal(crop, padded[i:i + size, j:j + size])]
        assert len(offsets) == 1
        crop_shifted += offsets[0] != (1, 1)
    assert 0 < crop_shifted < n
    flips = np.asarray(data.random_flip(key, images))
    mirrored = 0
    for result, image in zip(flips, np.asarray(images)):
        assert np.array_equal(result, image) or np.array_equal(result, image[:, ::-1])
        mirrored += np.array_equal(result, image[:, ::-1])
    assert 0 < mirrored < n
    np.testing.assert_array_equal(data.augment(key, images), images)


def test_gaussian_noise():
    images = jnp.zeros((64, 8, 8, 1), jnp.float32)
    noisy = jax.jit(data.add_gaussian_noise)(jax.random.key(1), images, 0.5)
    assert noisy.dtype == jnp.float32 and noisy.shape == images.shape
    np.testing.assert_allclose(float(jnp.std(noisy)), 0.5, rtol=0.05)
    np.testing.assert_array_equal(data.add_gaussian_noise(jax.random.key(1), images, 0.0),
                                  images)
    with pytest.raises(ValueError, match="sigma must be >= 0; got -1.0"):
        data.add_gaussian_noise(jax.random.key(1), images, -1.0)


def test_check_image_shape_and_resize(train):
    data.check_image_shape(train.images, (8, 8, 1))
    data.check_image_shape(train.images, (None, None, 1))
    with pytest.raises(ValueError, match=r"per-example shape \(8, 8, 1\).*expects \(32, 32, 3\)"):
        data.check_image_shape(train.images, (32, 32, 3))
    big = data.resize_images(train.images[:4], (16, 16), method="nearest")
    assert big.shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(big[:, ::2, ::2], train.images[:4])


def test_crop_pads_with_pad_value():
    # A shifted crop's new border holds pad_value (per channel), never 0, so normalised
    # images keep their black background instead of gaining a mean-grey frame.
    n, size = 64, 4
    images = jnp.full((n, size, size, 2), 5.0, jnp.float32)
    fill = np.array([-0.8, -1.5], np.float32)
    key = jax.random.key(0)
    out = np.asarray(jax.jit(lambda k, x: data.augment(k, x, crop_padding=1, flip=True,
                                                       pad_value=fill))(key, images))
    border = out != 5.0
    assert 0 < border[..., 0].sum() < border[..., 0].size
    np.testing.assert_array_equal(out[..., 0][border[..., 0]], fill[0])
    np.testing.assert_array_equal(out[..., 1][border[..., 1]], fill[1])
    scalar = np.asarray(data.random_crop(key, images, padding=1, pad_value=-2.0))
    assert set(np.unique(scalar)) == {-2.0, 5.0}
    with pytest.raises(ValueError, match=r"pad_value must be a scalar or have shape \(2,\)"):
        data.random_crop(key, images, padding=1, pad_value=np.zeros(3, np.float32))


def test_background_value_is_normalised_black(train):
    mean, std = data.normalization_stats(train.images)
    background = data.background_value(mean, std)
    black = data.normalize(np.zeros((1, 1, 1, 1), np.float32), mean, std)
    np.testing.assert_allclose(background, np.asarray(black).reshape(-1), rtol=1e-6)
    # The digits' corners are black: the normalised set's minimum is the background.
    np.testing.assert_allclose(background, np.asarray(
        data.normalize(train.images, mean, std)).min(axis=(0, 1, 2)), rtol=1e-6)
    with pytest.raises(ValueError, match=r"mean and std must both have shape \[C\]"):
        data.background_value(mean, std[:0])
