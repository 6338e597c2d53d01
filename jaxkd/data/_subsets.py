"""Stratified, seeded selections: validation carving and nested few-shot subsets."""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from jaxkd.data._dataset import Dataset, Splits

# The seed of the fixed train/test split of sources that ship without one (digits,
# unsplit image folders): the test set must not move when the experiment seed does.
TEST_SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _class_permutation(labels: np.ndarray, cls: int, seed: int, salt: int) -> np.ndarray:
    """The positions of class ``cls``, in an order that depends only on (seed, salt, cls)."""
    positions = np.flatnonzero(labels == cls)
    rng = np.random.default_rng([salt, seed, cls])
    return positions[rng.permutation(positions.size)]


def stratified_split(labels: np.ndarray, fraction: float, *, seed: int,
                     salt: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Splits positions into (rest, taken) with ``round(fraction * count)`` per class taken.

    Both index arrays are sorted; each class contributes its share to ``taken``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1); got {fraction}.")
    labels = np.asarray(labels)
    per_class: list[np.ndarray] = []
    for cls in np.unique(labels):
        order = _class_permutation(labels, int(cls), seed, salt)
        per_class.append(order[:int(round(fraction * order.size))])
    taken = np.sort(np.concatenate(per_class)) if per_class else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(labels.size), taken)
    return rest, taken


def _take_in_place(dataset: Dataset, rest: np.ndarray, taken: np.ndarray
                   ) -> tuple[Dataset, Dataset]:
    """``(dataset.take(rest), dataset.take(taken))``, the first built inside
    ``dataset.images``'s own buffer (overwritten), so only ``taken`` is copied."""
    images = dataset.images
    held_out = dataset.take(taken)
    # rest is sorted with rest[j] >= j: a chunk writes rows [start, stop) only after
    # reading its own sources, and later chunks read rows >= stop, so no row is
    # overwritten before it is read.
    step = max(1, (1 << 20) // max(1, images[0].nbytes if len(images) else 1))  # ~1 MiB
    for start in range(0, rest.size, step):
        stop = min(start + step, rest.size)
        images[start:stop] = images[rest[start:stop]]
    kept = dataclasses.replace(dataset, images=images[:rest.size],
                               labels=dataset.labels[rest],
                               source_index=dataset.source_index[rest])
    return kept, held_out


def carve_validation(train: Dataset, test: Dataset, *, validation_fraction: float,
                     seed: int, in_place: bool = False) -> Splits:
    """Splits ``validation_fraction`` of ``train`` (stratified, seeded) off as validation.

    With ``in_place`` the returned train images reuse (and overwrite) ``train.images``,
    so peak memory grows by the validation split only; for callers that own ``train``.

    Raises:
        ValueError: ``validation_fraction`` is not in ``(0, 1)``, or leaves the
            validation split empty, or leaves a class of ``train`` with no training
            example (the message gives the usable range for this data).
    """
    if (isinstance(validation_fraction, bool)
            or not isinstance(validation_fraction, numbers.Real)
            or not 0.0 < validation_fraction < 1.0):
        raise ValueError(
            f"validation_fraction must be a number in (0, 1), the share of each training "
            f"class held out for validation; got {validation_fraction!r}.")
    rest, taken = stratified_split(train.labels, float(validation_fraction), seed=seed,
                                   salt=2)
    counts = train.class_counts()
    present = np.flatnonzero(counts)
    if not present.size:
        raise ValueError(f"{train.name!r} has no training examples to carve a "
                         f"validation split from.")
    # round(f * c) keeps >= 1 example of a class of c in train while f < (c - 0.5) / c,
    # and moves >= 1 to validation once f > 0.5 / c (the largest class moves first).
    lowest = 0.5 / counts[present].max()
    highest = min((c - 0.5) / c for c in counts[present])
    problem = None
    if not taken.size:
        problem = "leaves the validation split empty"
    else:
        emptied = [int(c) for c in present if not np.any(train.labels[rest] == c)]
        if emptied:
            problem = (f"leaves class {emptied[0]} ({train.class_names[emptied[0]]!r}, "
                       f"{int(counts[emptied[0]])} training examples) with no training "
                       f"example" + (" (the train split is empty)" if not rest.size else ""))
    if problem:
        usable = (f"values above {lowest:.3g} and below {highest:.3g} give non-empty "
                  f"splits here" if lowest < highest else
                  "no value gives non-empty splits: the classes are too small")
        raise ValueError(
            f"validation_fraction={validation_fraction!r} {problem} for {train.name!r} "
            f"({len(train)} training examples, classes of {int(counts[present].min())} to "
            f"{int(counts[present].max())}); {usable}.")
    if in_place and train.images.flags.writeable and train.images.flags.c_contiguous:
        kept, held_out = _take_in_place(train, rest, taken)
    else:
        kept, held_out = train.take(rest), train.take(taken)
    return Splits(train=kept, validation=held_out, test=test)


def few_shot_subset(dataset: Dataset, examples_per_class: int, *, seed: int = 0) -> Dataset:
    """Keeps ``examples_per_class`` examples of every class: stratified, seeded, nested.

    Each class's examples are put in an order that depends only on ``seed`` and the
    class, and the first ``examples_per_class`` are kept, so for one seed the
    10-per-class subset lies inside the 50-per-class subset and the learning curves
    compare like with like. The kept examples stay in their original order.

    Args:
        dataset: the pool, usually ``splits.train``.
        examples_per_class: how many examples of each class to keep (``>= 1``).
        seed: selects which examples.

    Returns:
        A ``Dataset`` with ``num_classes * examples_per_class`` examples.

    Raises:
        ValueError: ``examples_per_class`` is not a positive integer, or exceeds the
            number of examples of some class.
    """
    if (isinstance(examples_per_class, bool)
            or not isinstance(examples_per_class, numbers.Integral)
            or examples_per_class < 1):
        raise ValueError(
            f"examples_per_class must be a positive integer; got {examples_per_class!r}.")
    counts = dataset.class_counts()
    short = np.flatnonzero(counts < examples_per_class)
    if short.size:
        cls = int(short[0])
        raise ValueError(
            f"examples_per_class={examples_per_class} exceeds the {int(counts[cls])} "
            f"examples of class {cls} ({dataset.class_names[cls]!r}) in "
            f"{dataset.name!r} ({len(dataset)} examples); the largest possible value is "
            f"{int(counts.min())}.")
    kept = [_class_permutation(dataset.labels, cls, seed, salt=3)[:examples_per_class]
            for cls in range(dataset.num_classes)]
    return dataset.take(np.sort(np.concatenate(kept)))
