"""MNIST-format IDX files: written here (raw and gzip), read by ``load("idx:...")`` and
``load("fashion_mnist")``; bad files fail naming the file. Only the last test uses the
Debian package's files, and it skips when they are absent."""

import gzip
import pathlib
import time

import numpy as np
import pytest

from jaxkd import data
from jaxkd.data import _idx

DEBIAN = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")


def _idx_bytes(array, magic=None):
    array = np.asarray(array, np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _write(path, payload, gz):
    path = pathlib.Path(str(path) + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def _write_set(directory, *, n_train=40, n_test=12, shape=(5, 4), classes=4, gz=True,
               prefix="", seed=0):
    """Writes the four files; returns {split: (uint8 images, labels)}."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
        labels = (np.arange(n) % classes).astype(np.uint8)
        rng.shuffle(labels)
        _write(directory / f"{prefix}{stem}-images-idx3-ubyte", _idx_bytes(images), gz)
        _write(directory / f"{prefix}{stem}-labels-idx1-ubyte", _idx_bytes(labels), gz)
        out[split] = images, labels
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reads_images_labels_and_splits(tmp_path, gz):
    written = _write_set(tmp_path, gz=gz)
    splits = data.load(f"idx:{tmp_path}", validation_fraction=0.3, seed=0)
    assert splits.train.name == f"idx:{tmp_path}"
    assert splits.num_classes == 4 and splits.train.class_names == ("0", "1", "2", "3")
    assert splits.train.image_shape == (5, 4, 1)
    assert splits.train.images.dtype == np.float32 and splits.train.labels.dtype == np.int32
    assert len(splits.train) == 28 and len(splits.validation) == 12  # 3 of 10 per class
    # The test split is t10k, whole and in file order, after the 40 train examples.
    images, labels = written["test"]
    np.testing.assert_array_equal(splits.test.source_index, np.arange(40, 52))
    np.testing.assert_array_equal(splits.test.labels, labels)
    np.testing.assert_array_equal(splits.test.images[..., 0],
                                  images.astype(np.float32) / np.float32(255))
    # Train + validation are the train file's examples, each at its source_index.
    images, labels = written["train"]
    for split in (splits.train, splits.validation):
        np.testing.assert_array_equal(split.labels, labels[split.source_index])
        np.testing.assert_array_equal(
            split.images[..., 0],
            images[split.source_index].astype(np.float32) / np.float32(255))
    assert not set(splits.train.source_index) & set(splits.validation.source_index)


def test_idx_prefixed_files_and_raw_preferred(tmp_path):
    written = _write_set(tmp_path, prefix="emnist-balanced-", gz=True, classes=3)
    splits = data.load(f"idx:{tmp_path / 'emnist-balanced'}")
    np.testing.assert_array_equal(splits.test.labels, written["test"][1])
    # Dotted names ("train-images.idx3-ubyte") are found; a raw file wins over its .gz.
    other = tmp_path / "other"
    _write_set(other, gz=True, seed=1)
    raw = _write_set(other / "raw", gz=False, seed=2)
    for f in (other / "raw").iterdir():
        f.rename(other / f.name.replace("-idx", ".idx"))
    splits = data.load(f"idx:{other}")
    np.testing.assert_array_equal(splits.test.labels, raw["test"][1])


def _expect(tmp_path, match, error=ValueError):
    with pytest.raises(error, match=match):
        data.load(f"idx:{tmp_path}")


def test_idx_wrong_magic_names_file_and_expected(tmp_path):
    _write_set(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    payload = images.read_bytes()
    images.write_bytes(labels.read_bytes())  # a labels file where images belong
    _expect(tmp_path, f"'{images}' has magic number 0x00000801; expected 0x00000803 for "
                      r"images \(unsigned bytes, 3-D\)")
    images.write_bytes(b"\x00\x00\x0d\x03" + payload[4:])  # float elements
    _expect(tmp_path, "magic number 0x00000d03; expected 0x00000803")
    images.write_bytes(payload)
    labels.write_bytes(payload)
    _expect(tmp_path, f"'{labels}' has magic number 0x00000803; expected 0x00000801")
    labels.write_bytes(b"\x00\x00")
    _expect(tmp_path, f"'{labels}' has 2 bytes, fewer than its 4-byte magic number")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_files(tmp_path, gz):
    _write_set(tmp_path, gz=False)
    images = tmp_path / "t10k-images-idx3-ubyte"
    payload = images.read_bytes()
    short = payload[:-7]
    if gz:
        images.unlink()
        images = _write(images, short, gz=True)
    else:
        images.write_bytes(short)
    _expect(tmp_path, rf"'{images}' is truncated: its header gives shape \(12, 5, 4\), "
                      rf"which needs 240 bytes of data after the 16-byte header, but it "
                      rf"has 233")
    images.write_bytes(payload[:10] if not gz else gzip.compress(payload[:10]))
    _expect(tmp_path, "is truncated: 10 bytes, fewer than its 16-byte header")
    if gz:  # the compressed stream itself cut short
        images.write_bytes(gzip.compress(payload)[:-20])
        _expect(tmp_path, f"'{images}' cannot be decompressed .*expected a complete "
                          f"gzip-compressed IDX file")
    else:
        images.write_bytes(payload + b"\x00")
        _expect(tmp_path, f"'{images}' has trailing bytes")


def test_idx_counts_must_match(tmp_path):
    _write_set(tmp_path, gz=True)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx_bytes(np.zeros(39, np.uint8))))
    _expect(tmp_path, f"IDX train files disagree: '{tmp_path / 'train-images-idx3-ubyte.gz'}'"
                      f" holds 40 images but '{labels}' holds 39 labels")


def test_idx_missing_file_lists_names(tmp_path):
    _write_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    _expect(tmp_path, f"no IDX data set at '{tmp_path}': expected the files "
                      f"train-images-idx3-ubyte, .*t10k-labels-idx1-ubyte",
            FileNotFoundError)


def test_idx_one_class_and_empty_test_refused(tmp_path):
    _write_set(tmp_path, classes=1)
    _expect(tmp_path, rf"dataset 'idx:{tmp_path}' has 1 class\(es\) with training "
                      rf"examples \('0'\); classification needs at least two")
    other = tmp_path / "b"
    _write_set(other, n_test=0)
    with pytest.raises(ValueError, match=f"dataset 'idx:{other}' has an empty test split"):
        data.load(f"idx:{other}")


def test_fashion_mnist_from_data_dir(tmp_path):
    written = _write_set(tmp_path / "fashion-mnist", classes=10, n_train=60, n_test=20)
    splits = data.load("fashion_mnist", data_dir=tmp_path, validation_fraction=0.5)
    assert splits.train.name == "fashion_mnist" and splits.train.class_names == FASHION
    np.testing.assert_array_equal(splits.test.labels, written["test"][1])
    # <data_dir>/fashion_mnist/ comes before <data_dir>/fashion-mnist/.
    first = _write_set(tmp_path / "fashion_mnist", classes=10, n_train=60, n_test=20,
                       seed=5)
    splits = data.load("fashion_mnist", data_dir=tmp_path, validation_fraction=0.5)
    np.testing.assert_array_equal(splits.test.labels, first["test"][1])
    # mnist likewise, with digit class names; a label beyond them is refused.
    _write_set(tmp_path / "mnist", classes=10, n_train=60, n_test=20)
    assert data.load("mnist", data_dir=tmp_path, validation_fraction=0.5
                     ).train.class_names == tuple("0123456789")
    _write_set(tmp_path / "mnist", classes=11, n_train=66, n_test=22)
    with pytest.raises(ValueError, match=r"reach 10; expected labels in \[0, 10\) for "
                                         r"'mnist'"):
        data.load("mnist", data_dir=tmp_path)


def test_missing_fashion_mnist_fails_fast_with_both_commands(tmp_path, monkeypatch):
    # Pretend the Debian package is not installed, whether or not it is.
    monkeypatch.setitem(_idx.KNOWN["fashion_mnist"], "system_dirs",
                        (str(tmp_path / "usr-share"),))
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as info:
        data.load("fashion_mnist", data_dir=tmp_path)
    elapsed = time.monotonic() - start
    assert elapsed < 10.0, f"missing fashion_mnist took {elapsed:.1f} s to fail"
    message = str(info.value)
    assert "dataset 'fashion_mnist' was not found" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    for d in (tmp_path / "fashion_mnist", tmp_path / "fashion-mnist",
              tmp_path / "usr-share"):
        assert f"'{d}'" in message
    assert (f"tfds build fashion_mnist --data_dir={tmp_path} --file_format=array_record"
            in message)


def test_validation_carved_in_place_equals_copy():
    rng = np.random.default_rng(0)
    labels = (np.arange(97) % 3).astype(np.int32)
    train = data.Dataset(images=rng.random((97, 3, 2, 1), dtype=np.float32),
                         labels=labels, num_classes=3, name="r",
                         class_names=("a", "b", "c"), source_index=np.arange(97))
    test = train.take([0, 1, 2])
    from jaxkd.data._subsets import carve_validation
    copied = carve_validation(train, test, validation_fraction=0.3, seed=4)
    original = train.images.copy()
    in_place = carve_validation(train, test, validation_fraction=0.3, seed=4,
                                in_place=True)
    for a, b in ((copied.train, in_place.train), (copied.validation, in_place.validation)):
        np.testing.assert_array_equal(a.source_index, b.source_index)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(b.images, original[b.source_index])
    assert np.shares_memory(in_place.train.images, train.images)


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    start = time.monotonic()
    splits = data.load("fashion_mnist")
    elapsed = time.monotonic() - start
    assert len(splits.train) == 54000 and len(splits.validation) == 6000
    np.testing.assert_array_equal(splits.test.class_counts(), np.full(10, 1000))
    assert splits.train.image_shape == (28, 28, 1) and splits.train.class_names == FASHION
    # Fashion-MNIST's published train-set pixel mean is 0.2860 (72.94 / 255).
    pool = np.concatenate([splits.train.images, splits.validation.images])
    assert abs(float(pool.mean(dtype=np.float64)) - 0.2860) < 5e-4
    assert elapsed < 60.0, f"loading Fashion-MNIST took {elapsed:.1f} s"


def test_idx_a_stray_label_is_refused_naming_file_label_and_index(tmp_path):
    # Three classes, one label damaged to 200: read as is, 197 empty classes.
    _write_set(tmp_path, classes=3, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    values = (np.arange(40) % 3).astype(np.uint8)
    values[17] = 200
    labels.write_bytes(_idx_bytes(values))
    _expect(tmp_path, rf"IDX labels in '{labels}': label 200 \(at index 17, 1 example\(s\)\) "
                      rf"skips classes 3 to 199, which no example has")
    # Classes below the smallest label may be empty (EMNIST letters: 1 to 26).
    letters = tmp_path / "letters"
    _write_set(letters, classes=3, gz=False)
    for stem in ("train", "t10k"):
        path = letters / f"{stem}-labels-idx1-ubyte"
        path.write_bytes(_idx_bytes(_idx.read_idx(path, _idx.LABELS_MAGIC) + 1))
    splits = data.load(f"idx:{letters}")
    assert splits.num_classes == 4 and splits.train.class_counts()[0] == 0


def test_idx_a_stray_largest_label_is_refused_not_made_a_class(tmp_path):
    # Ten classes of 1,100 examples each (train and test together) and one label damaged
    # to 10: read as is, an eleventh class of one example. The pixels do not matter.
    _write_set(tmp_path, classes=10, n_train=10_000, n_test=1_000, shape=(2, 2), gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    values = _idx.read_idx(labels, _idx.LABELS_MAGIC).copy()
    values[123] = 10
    labels.write_bytes(_idx_bytes(values))
    _expect(tmp_path, rf"IDX labels in '{labels}': label 10 \(at index 123\) is held by 1 "
                      rf"example\(s\) against a median of 1100 per class")
    # Named with its eleven classes, the class is taken as real.
    train, _ = _idx.load_idx_pool(tmp_path, class_names=tuple("abcdefghijk"))
    assert train.num_classes == 11 and int((train.labels == 10).sum()) == 1
    # A rare but real class (1 in 100 of the median, as in long-tailed benchmarks) loads.
    values[:12] = 10
    labels.write_bytes(_idx_bytes(values))
    assert data.load(f"idx:{tmp_path}").num_classes == 11
