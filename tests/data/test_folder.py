"""The class-per-subfolder image loader on temporary PNG folders."""

import numpy as np
import pytest

from jaxkd import data

PIL_Image = pytest.importorskip("PIL.Image")


def _write(folder, classes, per_class, size=(6, 5), mode="RGB"):
    rng = np.random.default_rng(0)
    pixels = {}
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            array = rng.integers(0, 256, shape, dtype=np.uint8)
            PIL_Image.fromarray(array, mode=mode).save(folder / c / f"{i}.png")
            pixels[(c, i)] = array
    return pixels


def test_flat_folder(tmp_path):
    pixels = _write(tmp_path, ["cat", "dog", "owl"], 10)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    splits = data.load(f"folder:{tmp_path}", validation_fraction=0.25, seed=0)
    assert splits.train.class_names == ("cat", "dog", "owl")
    assert splits.train.image_shape == (6, 5, 3)
    np.testing.assert_array_equal(splits.test.class_counts(), [2, 2, 2])
    np.testing.assert_array_equal(splits.validation.class_counts(), [2, 2, 2])
    parts = [set(s.source_index) for s in (splits.train, splits.validation, splits.test)]
    assert sum(map(len, parts)) == 30 and len(set.union(*parts)) == 30
    # Source index = position in sorted class, then sorted file order.
    first = splits.train.take([0])
    c = first.class_names[first.labels[0]]
    i = sorted(range(10), key=str)[first.source_index[0] % 10]
    np.testing.assert_allclose(first.images[0], pixels[(c, i)] / np.float32(255.0))


def test_train_test_folders_grey_and_resize(tmp_path):
    _write(tmp_path / "train", ["a", "b"], 4, mode="L")
    _write(tmp_path / "test", ["a", "b"], 2, size=(9, 9), mode="L")
    with pytest.raises(ValueError, match="images differ in size.*pass image_size"):
        data.load(f"folder:{tmp_path}")
    splits = data.load(f"folder:{tmp_path}", validation_fraction=0.25, image_size=(4, 4))
    assert splits.train.image_shape == (4, 4, 1)
    assert len(splits.train) == 6 and len(splits.test) == 4 and len(splits.validation) == 2
    assert set(splits.test.source_index) == set(range(8, 12))


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image folder '{tmp_path}' has no class"):
        data.load(f"folder:{tmp_path}")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="class folder .*empty_class.* holds no images"):
        data.load(f"folder:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(f"folder:{tmp_path / 'nope'}")
