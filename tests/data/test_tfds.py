"""The tfds path on a real dataset written locally in tfds's array_record format.

The digits are written with a tfds ``GeneratorBasedBuilder`` (PNG-encoded by Pillow,
no TensorFlow) and read back through ``load("tfds:...")`` from the files alone: the
builder class is never registered, exactly like a dataset prepared elsewhere.
"""

import time

import numpy as np
import pytest

from jaxkd import data

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")
PIL_Image = pytest.importorskip("PIL.Image")

TRAIN, TEST = 1500, 297


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)

    with tfds.core.registered.skip_registration():

        class LocalDigits(tfds.core.GeneratorBasedBuilder):
            """sklearn's digits as a tfds image classification set."""

            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(
                    builder=self,
                    features=tfds.features.FeaturesDict({
                        "image": tfds.features.Image(shape=(8, 8, 1)),
                        "label": tfds.features.ClassLabel(num_classes=10),
                    }),
                    supervised_keys=("image", "label"))

            def _split_generators(self, dl_manager):
                del dl_manager
                return {"train": self._generate_examples(0, TRAIN),
                        "test": self._generate_examples(TRAIN, TRAIN + TEST)}

            def _generate_examples(self, start, stop):
                for i in range(start, stop):
                    yield i, {"image": PIL_Image.fromarray(pixels[i], mode="L"),
                              "label": int(digits.target[i])}

    root = tmp_path_factory.mktemp("tfds")
    LocalDigits(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root, pixels, digits.target


def test_tfds_path_reads_local_array_record(tfds_dir):
    root, pixels, target = tfds_dir
    splits = data.load("tfds:local_digits", data_dir=root, validation_fraction=0.1, seed=0)
    assert splits.num_classes == 10 and splits.train.class_names[3] == "3"
    assert len(splits.train) + len(splits.validation) == TRAIN
    assert len(splits.test) == TEST
    assert splits.train.images.dtype == np.float32 and splits.train.image_shape == (8, 8, 1)
    # tfds shuffles records on write: match examples by content, not position.
    written = {(pixels[i].tobytes(), int(target[i])) for i in range(TRAIN + TEST)}
    for split in (splits.train, splits.validation, splits.test):
        restored = np.round(split.images[..., 0] * 255).astype(np.uint8)
        assert {(img.tobytes(), int(lab)) for img, lab in zip(restored, split.labels)} \
            <= written
    assert set(splits.test.source_index) == set(range(TRAIN, TRAIN + TEST))
    assert not set(splits.train.source_index) & set(splits.validation.source_index)
    again = data.load("tfds:local_digits:1.*.*", data_dir=root)
    np.testing.assert_array_equal(again.train.images, splits.train.images)
    # The standard pipeline runs on it as on the embedded digits.
    batch = next(data.BatchIterator(data.few_shot_subset(splits.train, 10), 20))
    assert batch["image"].shape == (20, 8, 8, 1)


def test_missing_tfds_dataset_fails_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as info:
        data.load("mnist", data_dir=tmp_path)
    elapsed = time.monotonic() - start
    assert elapsed < 10.0, f"offline failure took {elapsed:.1f} s"
    message = str(info.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert f"tfds build mnist --data_dir={tmp_path} --file_format=array_record" in message
    with pytest.raises(FileNotFoundError, match="'cifar100' is not prepared"):
        data.load("tfds:cifar100", data_dir=tmp_path)


def test_a_label_outside_the_classes_is_refused_naming_split_and_index(
        tfds_dir, monkeypatch):
    from jaxkd.data import _tfds
    root, _, _ = tfds_dir
    read = _tfds._read_split

    def damaged(builder, split, *keys):
        images, labels = read(builder, split, *keys)
        if split == "test":
            labels = labels.copy()
            labels[5] = 10
        return images, labels

    monkeypatch.setattr(_tfds, "_read_split", damaged)
    with pytest.raises(ValueError, match=r"tfds dataset 'local_digits' \(.*\), split 'test': "
                                         r"label 10 at index 5 \(1 such\) is outside its 10 "
                                         r"classes \[0, 10\)"):
        data.load("tfds:local_digits", data_dir=root)
