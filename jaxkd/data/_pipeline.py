"""The input pipeline: normalisation, augmentation, noise, batching, sharding.

Per-example transforms are pure, jit-able JAX functions of a PRNG key, applied on the
host side of the train step, to a batch before it is placed on the devices (the
experiments fold the iterator's position into the key, so a resumed run augments the
same way); the train step itself never augments. Batching runs on the host in NumPy
with a per-epoch permutation that depends only on (seed, epoch), so the iterator's
position is three integers and restores exactly. Placement on a mesh is
:mod:`jaxkd.sharding`'s.
"""

from __future__ import annotations

import collections
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxkd.data._dataset import Dataset
from jaxkd.sharding import num_batch_shards, shard_batch


def _static_shape(images: jax.typing.ArrayLike) -> tuple[int, ...]:
    return tuple(np.shape(images))


def _check_batch(images: jax.typing.ArrayLike, name: str = "images") -> None:
    if len(_static_shape(images)) != 4:
        raise ValueError(f"{name} must be [batch, height, width, channels]; got shape "
                         f"{_static_shape(images)}.")


def check_image_shape(images: jax.typing.ArrayLike, expected: Sequence[int | None]) -> None:
    """Raises unless ``images`` is ``[N, *expected]``; ``None`` in ``expected`` matches any size.

    Args:
        images: ``[N, H, W, C]``.
        expected: the ``(H, W, C)`` a model takes.

    Raises:
        ValueError: naming both shapes and how to adapt them.
    """
    shape = _static_shape(images)
    expected = tuple(expected)
    if len(shape) != len(expected) + 1 or any(
            e is not None and s != e for s, e in zip(shape[1:], expected)):
        raise ValueError(
            f"images have per-example shape {shape[1:]} (array shape {shape}) but the model "
            f"expects {expected} (height, width, channels); resize with "
            f"jaxkd.data.resize_images or load(..., image_size=(h, w)), and match the "
            f"channel count.")


def resize_images(images: jax.typing.ArrayLike, size: Sequence[int], *,
                  method: str = "bilinear") -> jax.Array:
    """Resizes ``[N, H, W, C]`` images to ``[N, size[0], size[1], C]`` (``jax.image.resize``)."""
    _check_batch(images)
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, numbers.Integral) and s > 0 for s in size):
        raise ValueError(f"size must be (height, width) of positive integers; got {size}.")
    images = jnp.asarray(images)
    return jax.image.resize(images, (images.shape[0], *size, images.shape[3]), method=method)


def normalization_stats(images: jax.typing.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation, to be computed on the training split.

    Args:
        images: ``[N, H, W, C]``.

    Returns:
        ``(mean, std)``, each ``[C]`` float32; ``std`` is floored at 1e-6.
    """
    _check_batch(images)
    images = np.asarray(images, np.float64)
    mean = images.mean(axis=(0, 1, 2))
    std = np.maximum(images.std(axis=(0, 1, 2)), 1e-6)
    return mean.astype(np.float32), std.astype(np.float32)


def normalize(images: jax.typing.ArrayLike, mean: jax.typing.ArrayLike,
              std: jax.typing.ArrayLike) -> jax.Array:
    """``(images - mean) / std`` per channel.

    Args:
        images: ``[..., C]``.
        mean: ``[C]``.
        std: ``[C]``.

    Returns:
        ``[..., C]`` normalised images, in the images' dtype.
    """
    images = jnp.asarray(images)
    channels = images.shape[-1]
    if _static_shape(mean) != (channels,) or _static_shape(std) != (channels,):
        raise ValueError(f"mean and std must have shape ({channels},) to match images "
                         f"{images.shape}; got {_static_shape(mean)} and "
                         f"{_static_shape(std)}.")
    lead = (1,) * (images.ndim - 1)
    mean = jnp.asarray(mean, images.dtype).reshape(lead + (channels,))
    std = jnp.asarray(std, images.dtype).reshape(lead + (channels,))
    return (images - mean) / std


def _pad_value(pad_value: jax.typing.ArrayLike, images: jax.Array) -> jax.Array:
    """``pad_value`` as a ``[C]`` vector of the images' dtype (a scalar fills every channel)."""
    channels = images.shape[-1]
    shape = _static_shape(pad_value)
    if shape not in ((), (channels,)):
        raise ValueError(f"pad_value must be a scalar or have shape ({channels},) to match "
                         f"images {images.shape}; got shape {shape}.")
    return jnp.broadcast_to(jnp.asarray(pad_value, images.dtype), (channels,))


def random_crop(key: jax.Array, images: jax.typing.ArrayLike, *, padding: int,
                pad_value: jax.typing.ArrayLike = 0.0) -> jax.Array:
    """Pads each image by ``padding`` pixels of ``pad_value`` and crops it back at a random offset.

    The padding should look like the images' background. For normalised images that is
    not 0 but the normalised value of a black pixel, ``-mean / std`` (see
    :func:`background_value`): a border of 0 would be the mean grey, a frame that no
    test image has.

    Args:
        key: a PRNG key.
        images: ``[B, H, W, C]``.
        padding: pixels of padding on each side (``>= 0``).
        pad_value: the padded pixels' value: a scalar or ``[C]``, one per channel.

    Returns:
        ``[B, H, W, C]``, each image shifted by up to ``padding`` pixels.
    """
    _check_batch(images)
    if not isinstance(padding, numbers.Integral) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer; got {padding!r}.")
    images = jnp.asarray(images)
    fill = _pad_value(pad_value, images)
    if padding == 0:
        return images
    batch, height, width, channels = images.shape
    # Pad with 0, then paint the border with the fill: jnp.pad takes one scalar only.
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    rows = jnp.arange(height + 2 * padding)
    cols = jnp.arange(width + 2 * padding)
    inside = (((rows >= padding) & (rows < padding + height))[:, None]
              & ((cols >= padding) & (cols < padding + width))[None, :])
    padded = jnp.where(inside[None, :, :, None], padded, fill)
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                     (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def background_value(mean: jax.typing.ArrayLike, std: jax.typing.ArrayLike) -> np.ndarray:
    """The value a black (0) pixel takes after :func:`normalize`: ``-mean / std``, ``[C]``.

    Pass it as ``pad_value`` to :func:`random_crop` / :func:`augment` for normalised
    images, so that a crop's padding is the black background of the raw images.
    """
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if mean.ndim != 1 or std.shape != mean.shape:
        raise ValueError(f"mean and std must both have shape [C]; got {mean.shape} and "
                         f"{std.shape}.")
    return (-mean / std).astype(np.float32)


def random_flip(key: jax.Array, images: jax.typing.ArrayLike) -> jax.Array:
    """Mirrors each image left-right with probability 1/2.

    Args:
        key: a PRNG key.
        images: ``[B, H, W, C]``.

    Returns:
        ``[B, H, W, C]``.
    """
    _check_batch(images)
    images = jnp.asarray(images)
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def augment(key: jax.Array, images: jax.typing.ArrayLike, *, crop_padding: int = 0,
            flip: bool = False, pad_value: jax.typing.ArrayLike = 0.0) -> jax.Array:
    """Random crop with padding, then (when ``flip``) a random horizontal flip.

    Leave ``flip`` off for digits and other sets whose classes are not mirror-symmetric.

    Args:
        key: a PRNG key.
        images: ``[B, H, W, C]``.
        crop_padding: see :func:`random_crop`; 0 disables cropping.
        flip: whether to flip left-right at random.
        pad_value: the crop's padding, see :func:`random_crop` (for normalised images,
            :func:`background_value`).

    Returns:
        ``[B, H, W, C]`` augmented images.
    """
    crop_key, flip_key = jax.random.split(key)
    images = random_crop(crop_key, images, padding=crop_padding, pad_value=pad_value)
    return random_flip(flip_key, images) if flip else images


def add_gaussian_noise(key: jax.Array, images: jax.typing.ArrayLike,
                       sigma: jax.typing.ArrayLike) -> jax.Array:
    """Corrupts images with additive Gaussian noise ``N(0, sigma^2)`` per pixel.

    Args:
        key: a PRNG key.
        images: ``[...]`` floating-point images (any shape).
        sigma: scalar noise standard deviation, ``>= 0``.

    Returns:
        ``images + sigma * xi`` with ``xi ~ N(0, I)``, in the images' shape and dtype.
    """
    images = jnp.asarray(images)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(f"images must be floating point; got {images.dtype}.")
    if np.ndim(sigma) != 0:
        raise ValueError(f"sigma must be a scalar; got shape {np.shape(sigma)}.")
    try:
        concrete = float(jnp.asarray(sigma))
    except jax.errors.ConcretizationTypeError:  # traced: checked by the caller.
        concrete = 0.0
    if concrete < 0:
        raise ValueError(f"sigma must be >= 0; got {concrete}.")
    sigma = jnp.asarray(sigma, images.dtype)
    return images + sigma * jax.random.normal(key, images.shape, images.dtype)


class BatchIterator:
    """Seeded, restorable batches of a :class:`Dataset`, optionally sharded and prefetched.

    Epoch ``e`` visits the examples in ``permutation(seed, e)`` order (or in order when
    ``shuffle`` is False), so the same seed gives the same batches and the position is
    just ``{"seed", "epoch", "index"}`` (``index`` = examples of the epoch already
    yielded). ``get_state`` reports the position after the last batch *yielded*, even
    while later batches are prefetched, so a checkpointed state restores exactly.

    Yields ``{"image": [B, H, W, C] float32, "label": [B] int32}``: NumPy arrays, or
    device arrays placed with ``sharding`` (``prefetch`` batches ahead) when given.

    Several processes (multi-host): every process iterates the same global batches (same
    dataset, same seed) and yields only its own rows, the ``process_index``-th of
    ``process_count`` equal slices of each, which is what :func:`shard_batch` and
    :func:`jaxkd.training.train` expect; with ``sharding`` the yielded arrays are the
    assembled global batch.

    Args:
        dataset: the examples.
        batch_size: examples per global batch (divisible by the number of processes).
        seed: the shuffling seed.
        shuffle: reshuffle every epoch (False: dataset order, for evaluation).
        drop_remainder: skip an epoch's last, smaller batch (use for training).
        num_epochs: stop after this many epochs; None runs forever.
        sharding: when given, batches go to the devices (see :func:`shard_batch`).
        prefetch: how many sharded batches to transfer ahead (0: none).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, drop_remainder: bool = True,
                 num_epochs: int | None = None,
                 sharding: jax.sharding.Sharding | None = None, prefetch: int = 2):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or (
                batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
        if drop_remainder and batch_size > len(dataset):
            raise ValueError(f"batch_size={batch_size} exceeds the {len(dataset)} examples "
                             f"of {dataset.name!r}, so drop_remainder=True leaves no batch.")
        if len(dataset) == 0:
            raise ValueError(f"dataset {dataset.name!r} is empty.")
        if num_epochs is not None and (not isinstance(num_epochs, numbers.Integral)
                                       or num_epochs < 0):
            raise ValueError(f"num_epochs must be None or a non-negative integer; got "
                             f"{num_epochs!r}.")
        if not isinstance(prefetch, numbers.Integral) or prefetch < 0:
            raise ValueError(f"prefetch must be a non-negative integer; got {prefetch!r}.")
        if sharding is not None and batch_size % num_batch_shards(sharding):
            raise ValueError(f"batch_size={batch_size} is not divisible by the "
                             f"{num_batch_shards(sharding)} devices of the data axis.")
        processes = jax.process_count()
        if batch_size % processes:
            raise ValueError(f"batch_size={batch_size} is not divisible by the {processes} "
                             f"processes, each of which takes an equal slice of a batch.")
        remainder = len(dataset) % batch_size
        if not drop_remainder and remainder % processes:
            raise ValueError(f"drop_remainder=False: the last batch of each epoch would hold "
                             f"{remainder} examples, which the {processes} processes cannot "
                             f"split equally; use drop_remainder=True.")
        if (sharding is not None and not drop_remainder
                and remainder % num_batch_shards(sharding)):
            raise ValueError(
                f"drop_remainder=False with a sharding: the last batch of each epoch would "
                f"hold {remainder} of the {len(dataset)} examples, which the "
                f"{num_batch_shards(sharding)} devices of the data axis cannot split. Use "
                f"drop_remainder=True, or jaxkd.training.evaluate (it pads and masks).")
        self._dataset: Dataset = dataset
        self._batch_size: int = int(batch_size)
        self._shuffle: bool = shuffle
        self._drop_remainder: bool = drop_remainder
        self._num_epochs: int | None = num_epochs
        self._sharding: jax.sharding.Sharding | None = sharding
        self._prefetch: int = int(prefetch) if sharding is not None else 0
        # (position after the batch, the batch on the devices), oldest first.
        self._queue: collections.deque[tuple[dict[str, int], dict[str, jax.Array]]] = (
            collections.deque())
        self._seed: int = int(seed)
        self._epoch: int = 0
        self._index: int = 0
        # The permutation of epoch ``_order_epoch`` (-1: none drawn yet).
        self._order_epoch: int = -1
        self._order: np.ndarray = np.arange(0)
        self._yielded_state: dict[str, int] = self._cursor()

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch."""
        n, b = len(self._dataset), self._batch_size
        return n // b if self._drop_remainder else -(-n // b)

    def get_state(self) -> dict[str, int]:
        """The position after the last yielded batch: ``{"seed", "epoch", "index"}`` (JSON-safe)."""
        if self._sharding is not None:
            return dict(self._yielded_state)
        return self._cursor()

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Moves to a position from :meth:`get_state`; the next batch continues from it."""
        missing = {"seed", "epoch", "index"} - set(state)
        if missing:
            raise ValueError(f"state lacks {sorted(missing)}; expected the dict of "
                             f"get_state(), got {dict(state)!r}.")
        seed, epoch, index = (int(state[k]) for k in ("seed", "epoch", "index"))
        if epoch < 0 or not 0 <= index <= len(self._dataset):
            raise ValueError(f"state {dict(state)!r} is out of range for "
                             f"{len(self._dataset)} examples.")
        self._queue.clear()
        self._seed, self._epoch, self._index = seed, epoch, index
        self._order_epoch = -1
        self._yielded_state = self._cursor()

    def _cursor(self) -> dict[str, int]:
        return {"seed": self._seed, "epoch": self._epoch, "index": self._index}

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self._epoch:
            n = len(self._dataset)
            self._order = (np.random.default_rng([self._seed, self._epoch]).permutation(n)
                           if self._shuffle else np.arange(n))
            self._order_epoch = self._epoch
        return self._order

    def _next_host_batch(self) -> dict[str, np.ndarray] | None:
        n = len(self._dataset)
        remaining = n - self._index
        if remaining <= 0 or (self._drop_remainder and remaining < self._batch_size):
            self._epoch, self._index = self._epoch + 1, 0
        if self._num_epochs is not None and self._epoch >= self._num_epochs:
            return None
        take = self._epoch_order()[self._index:self._index + self._batch_size]
        self._index += take.size
        if jax.process_count() > 1:  # this process's rows of the global batch
            rows = take.size // jax.process_count()
            take = take[jax.process_index() * rows:(jax.process_index() + 1) * rows]
        return {"image": self._dataset.images[take], "label": self._dataset.labels[take]}

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray] | dict[str, jax.Array]:
        if self._sharding is None:
            batch = self._next_host_batch()
            if batch is None:
                raise StopIteration
            return batch
        while len(self._queue) <= self._prefetch:
            batch = self._next_host_batch()
            if batch is None:
                break
            self._queue.append((self._cursor(), shard_batch(batch, self._sharding)))
        if not self._queue:
            raise StopIteration
        self._yielded_state, placed = self._queue.popleft()
        return placed
