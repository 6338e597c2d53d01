"""Image folders, one subfolder per class (for sets tfds lacks, e.g. MIT Indoor 67)."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from jaxkd.data._dataset import Dataset
from jaxkd.data._subsets import TEST_FRACTION, TEST_SPLIT_SEED, stratified_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif",
                  ".tiff", ".webp")


def _class_files(root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder '{root}' does not exist or is not a "
                                f"directory.")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FileNotFoundError(
            f"image folder '{root}' has no class subfolders; expected "
            f"'{root}/<class_name>/<image>.png' (or train/ and test/ each laid out so).")
    files = {}
    for d in classes:
        images = sorted(f for f in d.iterdir()
                        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(
                f"class folder '{d}' of image folder '{root}' holds no images (looked "
                f"for {', '.join(IMAGE_SUFFIXES)}).")
        files[d.name] = images
    return files


def _read_images(paths: list[pathlib.Path], image_size: tuple[int, int] | None,
                 mode: str) -> np.ndarray:
    from PIL import Image  # pylint: disable=import-outside-toplevel

    out, first = [], None
    for path in paths:
        with Image.open(path) as img:
            img = img.convert(mode)
            if image_size is not None:
                img = img.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
        if first is None:
            first = (path, array.shape)
        elif array.shape != first[1]:
            raise ValueError(
                f"images differ in size: '{first[0]}' is {first[1][:2]} but '{path}' is "
                f"{array.shape[:2]}; pass image_size=(height, width) to resize on load.")
        out.append(array)
    images = np.stack(out).astype(np.float32) / np.float32(255.0)
    return images[..., None] if images.ndim == 3 else images


def _mode(paths: list[pathlib.Path]) -> str:
    """'L' when every image is greyscale, else 'RGB'."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    for path in paths:
        with Image.open(path) as img:
            if img.mode not in ("L", "1", "I;16", "I"):
                return "RGB"
    return "L"


def load_folder_pool(path: str | os.PathLike, *,
                     image_size: tuple[int, int] | None = None) -> tuple[Dataset, Dataset]:
    """Reads a class-per-subfolder image directory as its (train, test) splits.

    Layouts: ``<path>/train/<class>/*`` and ``<path>/test/<class>/*`` (the given split),
    or ``<path>/<class>/*`` (a fixed stratified 20 % of each class becomes test).
    Classes are the subfolder names in sorted order. Greyscale-only folders give one
    channel, others RGB.

    Args:
        path: the root folder.
        image_size: ``(height, width)`` to resize every image to (bilinear, on load);
            required when the images differ in size.

    Raises:
        FileNotFoundError: the folder is missing or empty, or a class folder is empty.
        ValueError: images differ in size and ``image_size`` is None, or train and test
            have different classes.
    """
    root = pathlib.Path(path).expanduser()
    name = f"folder:{root}"
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files, test_files = _class_files(root / "train"), _class_files(root / "test")
        if set(test_files) - set(train_files):
            raise ValueError(f"image folder '{root}': test classes "
                             f"{sorted(set(test_files) - set(train_files))} are not in "
                             f"train.")
    else:
        train_files, test_files = _class_files(root), None
    class_names = tuple(train_files)
    index = {c: i for i, c in enumerate(class_names)}

    def flat(files):
        paths = [p for c in class_names for p in files.get(c, [])]
        labels = np.asarray([index[c] for c in class_names for _ in files.get(c, [])],
                            np.int32)
        return paths, labels

    train_paths, train_labels = flat(train_files)
    test_paths, test_labels = flat(test_files) if test_files else ([], None)
    mode = _mode(train_paths + test_paths)
    pool = Dataset(images=_read_images(train_paths + test_paths, image_size, mode),
                   labels=np.concatenate([train_labels] + (
                       [test_labels] if test_labels is not None else [])),
                   num_classes=len(class_names), name=name, class_names=class_names,
                   source_index=np.arange(len(train_paths) + len(test_paths)))
    if test_files:
        n = len(train_paths)
        return pool.take(np.arange(n)), pool.take(np.arange(n, len(pool)))
    train, test = stratified_split(pool.labels, TEST_FRACTION, seed=TEST_SPLIT_SEED)
    return pool.take(train), pool.take(test)
