"""The single entry point: a dataset name in, train/validation/test splits out."""

from __future__ import annotations

import dataclasses
import numbers
import os

import numpy as np

from jaxkd.data._dataset import Dataset, Splits
from jaxkd.data._subsets import carve_validation


def load(name: str = "digits", *, data_dir: str | os.PathLike | None = None,
         download: bool = False, validation_fraction: float = 0.1, seed: int = 0,
         image_size: tuple[int, int] | None = None) -> Splits:
    """Loads a labelled image set as deterministic train / validation / test splits.

    Names:

    * ``"digits"`` (default): scikit-learn's 1,797 8x8 grey digits, offline; a fixed
      stratified 20 % is the test set.
    * ``"idx:<dir>"``: MNIST-format IDX files in ``<dir>``
      (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
      ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``), as MNIST,
      Fashion-MNIST, KMNIST and EMNIST ship them; ``"idx:<dir>/<prefix>"`` for files
      named ``<prefix>-train-images-idx3-ubyte[.gz]`` ... (EMNIST). Their own train
      and test splits; classes ``"0"``, ``"1"``, ... up to the largest label.
    * ``"fashion_mnist"`` and ``"mnist"``: IDX files looked for, in order, in
      ``<data_dir>/fashion_mnist/``, ``<data_dir>/fashion-mnist/`` (``<data_dir>/mnist/``
      for MNIST) and, for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist/`` (where
      Debian's ``apt-get install dataset-fashion-mnist`` puts them); then a prepared
      tfds copy in ``data_dir``. Nowhere: ``FileNotFoundError`` at once, giving the
      ``apt-get`` command and the tfds alternative.
    * ``"tfds:<name>[/<config>][:<version>]"`` or a plain tfds name (``"cifar10"``,
      ``"cifar100"``, ``"svhn_cropped"``, ...): a tfds image classification set
      prepared in ``data_dir`` (read without TensorFlow when stored as array_record);
      its own train and test splits.
    * ``"folder:<path>"``: a class-per-subfolder image directory (see
      :func:`load_folder_pool`'s layouts). Symbolic links that lead outside the
      folder are refused.

    The validation split is a stratified, seeded ``validation_fraction`` of the
    training data, never of the test data. Images are float32 ``[N, H, W, C]`` in
    ``[0, 1]``, labels int32 ``[N]``.

    Args:
        name: which dataset, in one of the forms above.
        data_dir: the tfds data directory (default ``$TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``), also searched for ``fashion_mnist`` / ``mnist``
            IDX files; ignored by the other sources.
        download: let tfds download and prepare a missing dataset (needs TensorFlow and
            a network). Off by default: a missing dataset fails in milliseconds.
        validation_fraction: the share of each training class moved to validation, in
            ``(0, 1)``; it must leave the validation split non-empty and every class
            with a training example.
        seed: selects the validation examples.
        image_size: ``(height, width)`` to resize every image to (bilinear); folders
            resize on load, other sources after.

    Returns:
        ``Splits(train, validation, test)``.

    Raises:
        ValueError: an unknown name (the message lists the valid forms); a bad
            ``validation_fraction`` or one that leaves a split empty; a dataset with
            fewer than two classes in its training data or an empty test split; a bad
            file (a corrupt or truncated image or IDX file, an unsupported image mode,
            a symbolic link leading outside an image folder), named in the message.
        FileNotFoundError: a tfds dataset not prepared in ``data_dir`` (the message gives
            the command that prepares it), ``fashion_mnist`` / ``mnist`` found nowhere,
            missing IDX files, or a missing or empty image folder.
    """
    # pylint: disable=import-outside-toplevel
    from jaxkd.data import _digits, _folder, _idx, _tfds
    from jaxkd.data._pipeline import resize_images

    if not isinstance(name, str) or not name:
        raise ValueError(f"unknown dataset name {name!r}; valid forms: "
                         f"{_tfds.VALID_FORMS}.")
    if image_size is not None and not (
            len(tuple(image_size)) == 2
            and all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0
                    for d in image_size)):
        raise ValueError(f"image_size must be None or (height, width), two positive "
                         f"integers; got {image_size!r}.")
    prefix, sep, rest = name.partition(":")
    if name == "digits":
        train, test = _digits.load_digits_pool()
    elif sep and prefix == "folder" and rest:
        train, test = _folder.load_folder_pool(rest, image_size=image_size)
        image_size = None
    elif sep and prefix == "idx" and rest:
        train, test = _idx.load_idx_pool(rest)
    elif sep and prefix == "tfds" and rest:
        train, test = _tfds.load_tfds_pool(rest, data_dir=data_dir, download=download)
    elif name in _idx.KNOWN:
        found = _idx.find_known(name, data_dir)
        if found is not None:
            train, test = _idx.load_idx_pool(
                found, name=name, class_names=_idx.KNOWN[name]["class_names"])
        else:
            try:
                train, test = _tfds.load_tfds_pool(name, data_dir=data_dir,
                                                   download=download)
            except FileNotFoundError as err:
                if download:
                    raise
                raise FileNotFoundError(
                    _idx.missing_message(name, data_dir, str(err))) from err
    elif _tfds.is_known_tfds_name(name):
        train, test = _tfds.load_tfds_pool(name, data_dir=data_dir, download=download)
    else:
        raise ValueError(f"unknown dataset name {name!r}; valid forms: "
                         f"{_tfds.VALID_FORMS}.")
    _check_classification(train, test)
    if image_size is not None:
        train, test = (dataclasses.replace(
            d, images=np.asarray(resize_images(d.images, image_size))) for d in (train, test))
    # The pools are this call's own arrays: carve in place to keep peak memory near the
    # size of the splits returned.
    return carve_validation(train, test, validation_fraction=validation_fraction,
                            seed=seed, in_place=True)


def _check_classification(train: Dataset, test: Dataset) -> None:
    """Refuses a source that cannot train a classifier: < 2 classes, or no test data."""
    present = np.flatnonzero(train.class_counts())
    if present.size < 2:
        found = ", ".join(repr(train.class_names[c]) for c in present) or "none"
        raise ValueError(
            f"dataset {train.name!r} has {present.size} class(es) with training examples "
            f"({found}); classification needs at least two.")
    if not len(test):
        raise ValueError(f"dataset {test.name!r} has an empty test split; expected test "
                         f"examples.")
