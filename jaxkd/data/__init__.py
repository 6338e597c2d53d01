"""Data: the offline digits default, MNIST-format IDX files (Fashion-MNIST from Debian's
``dataset-fashion-mnist``), tfds datasets, image folders, few-shot subsets, and the input
pipeline (normalisation, augmentation, noise, restorable sharded batches).

``load`` takes ``"digits"``, ``"fashion_mnist"`` / ``"mnist"`` (IDX files under
``data_dir`` or ``/usr/share/datasets/fashion-mnist``, else tfds), ``"idx:<dir>"``,
``"tfds:<name>"`` or a tfds name, and ``"folder:<path>"`` (symbolic links leading outside
the folder are refused). ``import jaxkd.data`` needs only the core install; tfds paths
import tensorflow-datasets lazily (extra ``jaxkd[tfds]``), and downloading needs
TensorFlow (``jaxkd[tfds-prepare]``).
"""

from jaxkd.data._dataset import Dataset, Splits
from jaxkd.data._load import load
from jaxkd.data._pipeline import (BatchIterator, add_gaussian_noise, augment,
                                  background_value, check_image_shape, normalization_stats,
                                  normalize, random_crop, random_flip, resize_images)
from jaxkd.sharding import data_sharding, shard_batch  # re-exported: jaxkd.sharding
from jaxkd.data._subsets import few_shot_subset

__all__ = [
    "BatchIterator",
    "Dataset",
    "Splits",
    "add_gaussian_noise",
    "augment",
    "background_value",
    "check_image_shape",
    "data_sharding",
    "few_shot_subset",
    "load",
    "normalization_stats",
    "normalize",
    "random_crop",
    "random_flip",
    "resize_images",
    "shard_batch",
]
