"""The embedded default: scikit-learn's handwritten digits (offline, bundled in its wheel)."""

from __future__ import annotations

import numpy as np

from jaxkd.data._dataset import Dataset
from jaxkd.data._subsets import TEST_FRACTION, TEST_SPLIT_SEED, stratified_split


def load_digits_pool() -> tuple[Dataset, Dataset]:
    """Returns the fixed (train, test) split of the 1,797 8x8 digits.

    The test set is a stratified ``TEST_FRACTION`` of each class drawn with a fixed seed,
    independent of any experiment seed. Pixel values 0..16 are scaled to ``[0, 1]``.

    Raises:
        ImportError: scikit-learn is not installed (the message names the extra).
    """
    try:
        from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError(
            "the 'digits' dataset is scikit-learn's bundled copy, and scikit-learn is not "
            "installed: pip install \"jaxkd[experiments]\" (or pip install scikit-learn)."
        ) from err

    raw = load_digits()
    images = (np.asarray(raw.images, np.float32) / np.float32(16.0))[..., None]
    labels = np.asarray(raw.target, np.int32)
    pool = Dataset(images=images, labels=labels, num_classes=10, name="digits",
                   class_names=tuple(str(d) for d in range(10)),
                   source_index=np.arange(labels.size))
    train, test = stratified_split(labels, TEST_FRACTION, seed=TEST_SPLIT_SEED)
    return pool.take(train), pool.take(test)
