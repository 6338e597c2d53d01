"""The record every loader returns: an in-memory labelled image set and its splits."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image set held in host memory.

    Every loader (digits, tfds, image folders) returns these, so experiments treat all
    sources alike.

    Attributes:
        images: ``[N, H, W, C]`` float32 pixel values in ``[0, 1]``.
        labels: ``[N]`` int32 class indices in ``[0, num_classes)``.
        num_classes: the number of classes of the source (not only those present).
        name: where the data came from, e.g. ``"digits"`` or ``"tfds:mnist"``.
        class_names: ``num_classes`` human-readable class names.
        source_index: ``[N]`` int64 position of each example in the loader's pool of all
            its examples (source train split first, then source test split); two
            subsets of one load are disjoint exactly when these are.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    class_names: tuple[str, ...]
    source_index: np.ndarray

    def __post_init__(self):
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        source_index = np.asarray(self.source_index)
        if images.ndim != 4:
            raise ValueError(f"images must be [N, H, W, C]; got shape {images.shape}.")
        if images.dtype != np.float32:
            raise TypeError(f"images must be float32; got {images.dtype}.")
        if labels.shape != images.shape[:1] or labels.dtype != np.int32:
            raise ValueError(
                f"labels must be int32 of shape {images.shape[:1]}; got {labels.dtype} "
                f"{labels.shape}.")
        if source_index.shape != labels.shape:
            raise ValueError(f"source_index must have shape {labels.shape}; got "
                             f"{source_index.shape}.")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for "
                             f"num_classes={self.num_classes}.")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}); got "
                             f"[{labels.min()}, {labels.max()}].")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "source_index", source_index.astype(np.int64))
        object.__setattr__(self, "class_names", tuple(self.class_names))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The per-example shape ``(H, W, C)``."""
        _, height, width, channels = self.images.shape  # checked [N, H, W, C] at init
        return int(height), int(width), int(channels)

    def take(self, indices) -> Dataset:
        """Returns the examples at ``indices`` (positions in this dataset), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(self, images=self.images[indices],
                                   labels=self.labels[indices],
                                   source_index=self.source_index[indices])

    def class_counts(self) -> np.ndarray:
        """``[num_classes]`` int64: the number of examples of each class."""
        return np.bincount(self.labels, minlength=self.num_classes)


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """Train, validation and test sets of one source.

    The validation set is always carved from the source's training data, never from
    its test data.
    """

    train: Dataset
    validation: Dataset
    test: Dataset

    @property
    def num_classes(self) -> int:
        return self.train.num_classes
