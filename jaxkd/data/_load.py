"""The single entry point: a dataset name in, train/validation/test splits out."""

from __future__ import annotations

import os

from jaxkd.data._dataset import Splits
from jaxkd.data._subsets import carve_validation


def load(name: str = "digits", *, data_dir: str | os.PathLike | None = None,
         download: bool = False, validation_fraction: float = 0.1, seed: int = 0,
         image_size: tuple[int, int] | None = None) -> Splits:
    """Loads a labelled image set as deterministic train / validation / test splits.

    Names:

    * ``"digits"`` (default): scikit-learn's 1,797 8x8 grey digits, offline; a fixed
      stratified 20 % is the test set.
    * ``"tfds:<name>[/<config>][:<version>]"`` or a plain tfds name (``"mnist"``,
      ``"cifar10"``, ``"cifar100"``, ``"svhn_cropped"``, ...): a tfds image
      classification set prepared in ``data_dir`` (read without TensorFlow when stored
      as array_record); its own train and test splits.
    * ``"folder:<path>"``: a class-per-subfolder image directory (see
      :func:`load_folder_pool`'s layouts).

    The validation split is a stratified, seeded ``validation_fraction`` of the
    training data, never of the test data. Images are float32 ``[N, H, W, C]`` in
    ``[0, 1]``, labels int32 ``[N]``.

    Args:
        name: which dataset, in one of the forms above.
        data_dir: the tfds data directory (default ``$TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``); ignored by the other sources.
        download: let tfds download and prepare a missing dataset (needs TensorFlow and
            a network). Off by default: a missing dataset fails in milliseconds.
        validation_fraction: the share of each training class moved to validation, in
            ``[0, 1)``.
        seed: selects the validation examples.
        image_size: ``(height, width)`` to resize every image to (bilinear); folders
            resize on load, other sources after.

    Returns:
        ``Splits(train, validation, test)``.

    Raises:
        ValueError: an unknown name (the message lists the valid forms) or a bad
            ``validation_fraction``.
        FileNotFoundError: a tfds dataset not prepared in ``data_dir`` (the message gives
            the command that prepares it), or a missing or empty image folder.
    """
    # pylint: disable=import-outside-toplevel
    from jaxkd.data import _digits, _folder, _tfds
    from jaxkd.data._pipeline import resize_images

    if not isinstance(name, str) or not name:
        raise ValueError(f"unknown dataset name {name!r}; valid forms: "
                         f"{_tfds.VALID_FORMS}.")
    prefix, sep, rest = name.partition(":")
    if name == "digits":
        train, test = _digits.load_digits_pool()
    elif sep and prefix == "folder" and rest:
        train, test = _folder.load_folder_pool(rest, image_size=image_size)
        image_size = None
    elif sep and prefix == "tfds" and rest:
        train, test = _tfds.load_tfds_pool(rest, data_dir=data_dir, download=download)
    elif _tfds.is_known_tfds_name(name):
        train, test = _tfds.load_tfds_pool(name, data_dir=data_dir, download=download)
    else:
        raise ValueError(f"unknown dataset name {name!r}; valid forms: "
                         f"{_tfds.VALID_FORMS}.")
    if image_size is not None:
        import dataclasses

        import numpy as np
        train, test = (dataclasses.replace(
            d, images=np.asarray(resize_images(d.images, image_size))) for d in (train, test))
    return carve_validation(train, test, validation_fraction=validation_fraction,
                            seed=seed)
