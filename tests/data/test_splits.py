"""Digits splits and few-shot subsets: deterministic, disjoint, stratified, nested."""

import numpy as np
import pytest

from jaxkd import data


@pytest.fixture(scope="module")
def splits():
    return data.load("digits", validation_fraction=0.1, seed=0)


def test_digits_layout(splits):
    for split in (splits.train, splits.validation, splits.test):
        assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
        assert split.image_shape == (8, 8, 1)
        assert 0.0 <= split.images.min() and split.images.max() <= 1.0
    assert splits.num_classes == 10
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 1797


def test_splits_disjoint_and_cover(splits):
    parts = [set(s.source_index.tolist())
             for s in (splits.train, splits.validation, splits.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert parts[0] | parts[1] | parts[2] == set(range(1797))


def test_validation_from_train_and_test_fixed(splits):
    other = data.load("digits", validation_fraction=0.2, seed=7)
    np.testing.assert_array_equal(other.test.source_index, splits.test.source_index)
    train_pool = set(splits.train.source_index) | set(splits.validation.source_index)
    assert set(other.validation.source_index) <= train_pool
    # Stratified: every class sends about the same share to validation.
    counts = other.validation.class_counts() / (other.validation.class_counts()
                                                + other.train.class_counts())
    np.testing.assert_allclose(counts, 0.2, atol=0.01)


def test_same_seed_same_splits(splits):
    again = data.load("digits", validation_fraction=0.1, seed=0)
    for a, b in ((splits.train, again.train), (splits.validation, again.validation)):
        np.testing.assert_array_equal(a.source_index, b.source_index)
        np.testing.assert_array_equal(a.images, b.images)
    moved = data.load("digits", validation_fraction=0.1, seed=1)
    assert not np.array_equal(moved.validation.source_index, splits.validation.source_index)


def test_few_shot_stratified_nested_seeded(splits):
    small = data.few_shot_subset(splits.train, 10, seed=3)
    large = data.few_shot_subset(splits.train, 50, seed=3)
    np.testing.assert_array_equal(small.class_counts(), np.full(10, 10))
    np.testing.assert_array_equal(large.class_counts(), np.full(10, 50))
    assert set(small.source_index) <= set(large.source_index)
    np.testing.assert_array_equal(
        data.few_shot_subset(splits.train, 10, seed=3).source_index, small.source_index)
    other = data.few_shot_subset(splits.train, 10, seed=4)
    assert set(other.source_index) != set(small.source_index)
    assert set(small.source_index) <= set(splits.train.source_index)


def test_few_shot_too_many(splits):
    most = int(splits.train.class_counts().min())
    data.few_shot_subset(splits.train, most)
    with pytest.raises(ValueError, match=f"examples_per_class={most + 1} exceeds"):
        data.few_shot_subset(splits.train, most + 1)
    with pytest.raises(ValueError, match="examples_per_class must be a positive integer"):
        data.few_shot_subset(splits.train, 0)


def test_unknown_name_lists_valid_forms():
    for name in ("digts", "foo:bar", "", "tfds:"):
        with pytest.raises(ValueError, match=r"unknown dataset name .*valid forms: 'digits'"):
            data.load(name)


def test_bad_validation_fraction():
    with pytest.raises(ValueError, match="validation_fraction must be a number in"):
        data.load("digits", validation_fraction=1.0)


def test_resize_on_load():
    splits = data.load("digits", image_size=(16, 16))
    assert splits.train.image_shape == (16, 16, 1)
    assert splits.test.images.dtype == np.float32
    for bad in ((0, 8), (8,), (8, 8, 1), (8.0, 8), (-1, 4)):
        with pytest.raises(ValueError, match=r"image_size must be None or \(height, "
                                             r"width\), two positive integers"):
            data.load("digits", image_size=bad)


def test_dataset_validates_fields():
    with pytest.raises(TypeError, match="images must be float32"):
        data.Dataset(images=np.zeros((2, 8, 8, 1)), labels=np.zeros(2, np.int32),
                     num_classes=1, name="x", class_names=("a",), source_index=[0, 1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        data.Dataset(images=np.zeros((2, 8, 8, 1), np.float32),
                     labels=np.array([0, 1], np.int32), num_classes=1, name="x",
                     class_names=("a",), source_index=[0, 1])


def test_empty_splits_refused_naming_validation_fraction():
    # digits' train pool: 1,437 images, 142 to 146 per class.
    with pytest.raises(ValueError, match=r"validation_fraction=0.999 leaves class 0 "
                                         r"\('0', 142 training examples\) with no training "
                                         r"example \(the train split is empty\) for "
                                         r"'digits'.*values above 0.00342 and below 0.996"):
        data.load("digits", validation_fraction=0.999)
    with pytest.raises(ValueError, match=r"validation_fraction=0.0001 leaves the "
                                         r"validation split empty"):
        data.load("digits", validation_fraction=1e-4)
    for bad in (0, 0.0, 1, 1.5, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match=r"validation_fraction must be a number in "
                                             r"\(0, 1\)"):
            data.load("digits", validation_fraction=bad)
    # The bounds the message gives are the real ones.
    assert len(data.load("digits", validation_fraction=0.0035).validation) >= 1
    assert data.load("digits", validation_fraction=0.995).train.class_counts().min() >= 1
