"""The data of a study: loaded, class-restricted, normalised, subset, batched, augmented.

The validation split is held out of the training split with seed 0 whatever the
experiment seed: the teacher trains on the rest and selects on all of it, so no student's
validation image was ever trained on by the teacher. Each student seed then selects its
best step on its own draw from that split (:func:`seed_validation`, ``validation_per_seed``
of each class), so the validation noise varies between seeds as the subsets and the
initialisations do, and an interval over seeds includes it. Augmentation happens here,
on the host side of the train step (``jaxkd.training.train`` places what the iterator
yields).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from experiments.configs._base import ConfigError
from jaxkd import data


# The keys that shape every study's images (the study adds its datasets and classes).
DATA_KEYS = ("data_dir", "image_size", "validation_fraction", "augment", "flip")


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Normalised splits plus what the noise study needs to corrupt raw pixels.

    Attributes:
      splits: train / validation / test, normalised with the train statistics.
      mean, std: ``[C]`` the normalisation statistics.
      raw_test: ``[N, H, W, C]`` test images in ``[0, 1]`` before normalisation.
    """
    splits: data.Splits
    mean: np.ndarray
    std: np.ndarray
    raw_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.splits.train.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.splits.train.image_shape

    @property
    def background(self) -> np.ndarray:
        """``[C]`` a black raw pixel after normalisation: the padding of random crops."""
        return data.background_value(self.mean, self.std)


class StudyData(NamedTuple):
    """The teacher's data and the students' (the same object in studies 1 and 2)."""
    teacher: PreparedData
    student: PreparedData


def _normalized(dataset: data.Dataset, mean, std) -> data.Dataset:
    return dataclasses.replace(dataset, images=np.asarray(data.normalize(dataset.images,
                                                                         mean, std)))


def class_subset(dataset: data.Dataset, classes: Sequence[int]) -> data.Dataset:
    """The examples of ``classes``, relabelled ``0..len(classes)-1`` in the given order.

    Raises:
      ConfigError: a class id outside the dataset's ``0..K-1``, a repeated one, or fewer
        than two classes (checked as soon as the data is loaded, before any training).
    """
    classes = [int(c) for c in classes]
    outside = [c for c in classes if not 0 <= c < dataset.num_classes]
    if outside or len(set(classes)) != len(classes) or len(classes) < 2:
        raise ConfigError(
            f"classes {tuple(classes)} of {dataset.name!r}: expected two or more distinct "
            f"class ids in 0..{dataset.num_classes - 1} (it has {dataset.num_classes} "
            f"classes){'; not classes of it: ' + str(outside) if outside else ''}; set "
            f"source_classes / target_classes accordingly.")
    keep = np.flatnonzero(np.isin(dataset.labels, classes))
    relabel = np.full(dataset.num_classes, -1, np.int32)
    relabel[classes] = np.arange(len(classes), dtype=np.int32)
    return data.Dataset(images=dataset.images[keep], labels=relabel[dataset.labels[keep]],
                        num_classes=len(classes), name=f"{dataset.name}[{classes}]",
                        class_names=tuple(dataset.class_names[c] for c in classes),
                        source_index=dataset.source_index[keep])


def load_data(name: str, *, data_dir: str = "", image_size: Sequence[int] = (),
              validation_fraction: float = 0.1, classes: Sequence[int] = (),
              stats_from: tuple[np.ndarray, np.ndarray] | None = None) -> PreparedData:
    """Loads ``name`` (see :func:`jaxkd.data.load`), keeps ``classes`` and normalises.

    Statistics come from the (class-restricted) train split unless ``stats_from`` gives
    them.
    """
    splits = data.load(name, data_dir=data_dir or None,
                       validation_fraction=validation_fraction, seed=0,
                       image_size=tuple(image_size) if image_size else None)
    if classes:
        splits = data.Splits(*(class_subset(s, classes) for s in
                               (splits.train, splits.validation, splits.test)))
    mean, std = stats_from if stats_from is not None else data.normalization_stats(
        splits.train.images)
    normalized = data.Splits(*(_normalized(s, mean, std) for s in
                               (splits.train, splits.validation, splits.test)))
    return PreparedData(normalized, mean, std, splits.test.images)


def subset(dataset: data.Dataset, examples_per_class: int | str, seed: int) -> data.Dataset:
    """``examples_per_class`` per class (nested in ``seed``), or everything for ``"all"``."""
    if examples_per_class == "all":
        return dataset
    return data.few_shot_subset(dataset, int(examples_per_class), seed=seed)


def validation_share(config: Any) -> float:
    """``validation_per_seed``: the share of the validation split each seed draws."""
    return float(config.get("validation_per_seed", 1.0))


def seed_validation(validation: data.Dataset, seed: int, fraction: float) -> data.Dataset:
    """The validation set of the cells of ``seed``: ``round(fraction * count)`` (at least
    one) of each class of the held-out ``validation`` split, drawn with ``seed``, in
    their original order; ``fraction >= 1``: the whole split, the same for every seed."""
    if fraction >= 1.0:
        return validation
    kept = []
    for cls in range(validation.num_classes):
        positions = np.flatnonzero(validation.labels == cls)
        order = np.random.default_rng([7, seed, cls]).permutation(positions.size)
        kept.append(positions[order[:max(1, round(fraction * positions.size))]])
    return validation.take(np.sort(np.concatenate(kept)))


def check_sizes(dataset: data.Dataset, sizes: Sequence[int | str], *, name: str,
                key: str = "examples_per_class") -> None:
    """Refuses a size of ``sizes`` that the smallest class of ``dataset`` cannot give.

    Raises:
      ConfigError: names ``key``, the size, the smallest class and its count.
    """
    counts = np.bincount(np.asarray(dataset.labels), minlength=dataset.num_classes)
    fewest = int(np.argmin(counts))
    too_many = [n for n in sizes if n != "all" and int(n) > counts[fewest]]
    if too_many:
        raise ConfigError(
            f"config key {key!r}: {max(too_many, key=int)} examples per class exceeds the "
            f"{counts[fewest]} training examples of class {fewest} of {name!r} (after the "
            f"validation split); expected at most {counts[fewest]}, or 'all'.")


def eval_batches(images: np.ndarray, labels: np.ndarray,
                 batch_size: int) -> list[dict[str, np.ndarray]]:
    """Re-iterable, in-order evaluation batches (the last may be smaller; evaluate pads)."""
    return [{"image": images[i:i + batch_size], "label": labels[i:i + batch_size]}
            for i in range(0, len(labels), batch_size)]


class AugmentedBatches:
    """A :class:`jaxkd.data.BatchIterator` whose batches are randomly cropped (and flipped).

    The augmentation key of a batch is ``fold_in(key(seed), position)`` where position is
    the iterator's ``(epoch, index)`` before the batch, so ``get_state``/``set_state``
    resume the same augmented sequence.
    """

    def __init__(self, batches: data.BatchIterator, *, seed: int, crop_padding: int,
                 flip: bool, pad_value=0.0):
        self._batches = batches
        self._key = jax.random.key(seed)
        self._augment = jax.jit(functools.partial(data.augment, crop_padding=crop_padding,
                                                  flip=flip, pad_value=pad_value))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        position = self._batches.get_state()
        batch = next(self._batches)
        key = jax.random.fold_in(jax.random.fold_in(self._key, position["epoch"]),
                                 position["index"])
        return {**batch, "image": np.asarray(self._augment(key, batch["image"]))}

    def get_state(self) -> dict[str, int]:
        return self._batches.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._batches.set_state(state)


def train_batches(dataset: data.Dataset, *, batch_size: int, seed: int,
                  augment: bool = False, crop_padding: int = 4, flip: bool = False,
                  pad_value=0.0) -> Iterator[dict[str, Any]]:
    """Endless shuffled batches of ``dataset`` (restorable), optionally augmented.

    ``pad_value`` fills the crops' padding: for normalised images, the normalised black
    (``PreparedData.background``), so that a shifted image has the raw images' black
    border rather than the mean grey that a 0 would be.
    """
    if batch_size > len(dataset):
        raise ConfigError(f"batch_size={batch_size} exceeds the {len(dataset)} training "
                          f"examples; lower train.batch_size or raise examples_per_class.")
    batches = data.BatchIterator(dataset, batch_size, seed=seed)
    if augment:
        return AugmentedBatches(batches, seed=seed, crop_padding=crop_padding, flip=flip,
                                pad_value=pad_value)
    return batches
