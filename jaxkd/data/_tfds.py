"""tfds datasets, read from a prepared copy on disk without TensorFlow.

The on-disk check runs before tensorflow_datasets is even imported, so a missing
dataset fails in milliseconds instead of after tfds's ~205 s of offline download
retries. Downloading is an explicit opt-in (``download=True``).
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
import re

import numpy as np

from jaxkd.data._dataset import Dataset

VALID_FORMS = ("'digits' (the embedded default), 'fashion_mnist' and 'mnist' (IDX files "
               "or tfds), 'idx:<dir>' (MNIST-format IDX files), "
               "'tfds:<name>[/<config>][:<version>]' or a plain tfds name such as "
               "'cifar10', 'cifar100', 'svhn_cropped', and 'folder:<path>'")

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_NAME = re.compile(r"^[a-z0-9_]+(/[A-Za-z0-9_.\-]+)?(:[0-9*]+\.[0-9*]+\.[0-9*]+)?$")
# Names the registry check can fall back to when tensorflow_datasets is not installed.
_COMMON = ("mnist", "fashion_mnist", "kmnist", "emnist", "cifar10", "cifar100",
           "svhn_cropped", "stl10", "imagenette", "imagenet2012", "caltech101",
           "oxford_flowers102", "oxford_iiit_pet", "food101", "eurosat")


def default_data_dir() -> pathlib.Path:
    """tfds's own default: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR",
                                       "~/tensorflow_datasets")).expanduser()


def import_tfds():
    """Imports tensorflow_datasets or says which extra to install."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError(
            "tfds datasets need tensorflow-datasets: pip install 'jaxkd[tfds]' "
            "(reading prepared array_record data) or 'jaxkd[tfds-prepare]' (also "
            "downloading and preparing, with TensorFlow).") from err
    return tfds


def is_known_tfds_name(name: str) -> bool:
    """Whether ``name`` (``base[/config][:version]``) names a dataset tfds can build."""
    if not _NAME.match(name):
        return False
    base = name.split(":")[0].split("/")[0]
    try:
        tfds = import_tfds()
    except ImportError:
        return base in _COMMON
    return base in tfds.list_builders(with_community_datasets=False)


def _prepare_command(name: str, data_dir: pathlib.Path) -> str:
    return (f"pip install 'jaxkd[tfds-prepare]' && tfds build {name.split(':')[0]} "
            f"--data_dir={data_dir} --file_format=array_record")


def find_prepared(name: str, data_dir: pathlib.Path) -> pathlib.Path | None:
    """The directory holding the prepared ``name``, or None; touches only the disk.

    Looks for ``<data_dir>/<name>[/<config>]/<version>/dataset_info.json``, taking the
    highest version (matching ``:<version>``, wildcards allowed, when given).

    Raises:
        ValueError: no config was named and several configs are prepared.
    """
    path, _, version = name.partition(":")
    root = data_dir / path
    if not root.is_dir():
        return None

    def versions(d: pathlib.Path) -> list[pathlib.Path]:
        found = [v for v in d.iterdir() if v.is_dir() and _VERSION.match(v.name)
                 and (v / "dataset_info.json").is_file()
                 and (not version or fnmatch.fnmatch(v.name, version))]
        return sorted(found, key=lambda v: tuple(int(p) for p in v.name.split(".")))

    direct = versions(root)
    if direct:
        return direct[-1]
    if "/" not in path:  # a dataset with configs: accept the only prepared one.
        configs = {c.name: versions(c) for c in root.iterdir() if c.is_dir()}
        configs = {c: v for c, v in configs.items() if v}
        if len(configs) == 1:
            return next(iter(configs.values()))[-1]
        if len(configs) > 1:
            raise ValueError(
                f"tfds dataset {name!r} has several prepared configs in {root}: "
                f"{sorted(configs)}; name one, e.g. 'tfds:{path}/{sorted(configs)[0]}'.")
    return None


def _read_split(builder, split: str, image_key: str, label_key: str):
    """The whole split as (uint8-or-float images [N,H,W,C], int labels [N])."""
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format == "array_record":
        source = builder.as_data_source(split=split)
        images: list[np.ndarray] = []
        labels: list[np.ndarray | np.integer | int] = []
        for start in range(0, len(source), 4096):
            stop = min(start + 4096, len(source))
            records = source.__getitems__(list(range(start, stop)))
            images.extend(r[image_key] for r in records)
            labels.extend(r[label_key] for r in records)
        return np.stack(images), np.asarray(labels)
    try:
        import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError as err:
        raise ImportError(
            f"tfds dataset {builder.info.full_name!r} in {builder.data_dir} is stored as "
            f"{file_format}, which only TensorFlow reads: pip install "
            f"'jaxkd[tfds-prepare]', or prepare it again with --file_format=array_record."
        ) from err
    tfds = import_tfds()
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return data[image_key], data[label_key]


def load_tfds_pool(name: str, *, data_dir: str | os.PathLike | None = None,
                   download: bool = False) -> tuple[Dataset, Dataset]:
    """Reads the prepared tfds dataset ``name`` as its (train, test) splits.

    Args:
        name: ``base[/config][:version]``, e.g. ``"mnist"``, ``"cifar100:3.*.*"``.
        data_dir: the tfds data directory; defaults to ``$TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``.
        download: when the data is not on disk, download and prepare it (as
            array_record; needs TensorFlow and a network). Off by default.

    Returns:
        ``(train, test)`` Datasets with images scaled to ``[0, 1]``.

    Raises:
        FileNotFoundError: not prepared in ``data_dir`` and ``download`` is False; the
            message gives the command that prepares it.
        ValueError: the dataset is not an image classification set with train and
            test splits, or a label is outside its classes (names the split and index).
    """
    data_dir = pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()
    prepared = find_prepared(name, data_dir)
    if prepared is None:
        if not download:
            raise FileNotFoundError(
                f"tfds dataset {name!r} is not prepared in data_dir '{data_dir}' (no "
                f"{data_dir / name.split(':')[0]}/<version>/dataset_info.json), and "
                f"download=False. Prepare it where there is a network with\n    "
                f"{_prepare_command(name, data_dir)}\nand copy the directory here, or "
                f"pass download=True (which needs TensorFlow and a network).")
        tfds = import_tfds()
        tfds.builder(name, data_dir=os.fspath(data_dir),
                     file_format="array_record").download_and_prepare()
        prepared = find_prepared(name, data_dir)
        if prepared is None:
            raise FileNotFoundError(f"tfds prepared {name!r} but no dataset_info.json "
                                    f"appeared under {data_dir}.")
    tfds = import_tfds()
    builder = tfds.builder_from_directory(os.fspath(prepared))
    info = builder.info
    image_key, label_key = info.supervised_keys or ("image", "label")
    features = info.features
    if label_key not in features or not hasattr(features[label_key], "num_classes"):
        raise ValueError(f"tfds dataset {name!r} has no class label feature "
                         f"{label_key!r}; features: {list(features)}.")
    for split in ("train", "test"):
        if split not in info.splits:
            raise ValueError(f"tfds dataset {name!r} has no {split!r} split; its splits "
                             f"are {list(info.splits)}.")
    num_classes = int(features[label_key].num_classes)
    class_names = tuple(features[label_key].names)
    out, offset = [], 0
    for split in ("train", "test"):
        images, labels = _read_split(builder, split, image_key, label_key)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise ValueError(f"tfds dataset {name!r} feature {image_key!r} is not an "
                             f"image batch [N, H, W, C]; got shape {images.shape}.")
        bad = np.nonzero((labels < 0) | (labels >= num_classes))[0]
        if bad.size:
            raise ValueError(
                f"tfds dataset {name!r} ({prepared}), split {split!r}: label "
                f"{int(labels[bad[0]])} at index {int(bad[0])} ({bad.size} such) is outside "
                f"its {num_classes} classes [0, {num_classes}); the prepared data is "
                f"damaged: prepare it again ({_prepare_command(name, data_dir)}).")
        if np.issubdtype(images.dtype, np.integer):
            images = images.astype(np.float32) / np.float32(np.iinfo(images.dtype).max)
        out.append(Dataset(images=images.astype(np.float32),
                           labels=labels.astype(np.int32), num_classes=num_classes,
                           name=f"tfds:{name}", class_names=class_names,
                           source_index=offset + np.arange(labels.shape[0])))
        offset += labels.shape[0]
    return out[0], out[1]
