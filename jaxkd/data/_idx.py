"""MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), read with numpy alone.

An IDX file is a 4-byte big-endian magic number ``0x0000TTNN`` (``TT`` the element type,
``0x08`` for unsigned bytes; ``NN`` the number of dimensions), ``NN`` big-endian uint32
dimension sizes, then the elements. Images are ``0x00000803`` (``[N, rows, cols]``
uint8), labels ``0x00000801`` (``[N]`` uint8). Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zlib
import typing

import numpy as np

from jaxkd.data._dataset import Dataset

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
# (split, kind) -> the standard file stem; "train-images.idx3-ubyte" (a dot) also occurs.
STEMS = {("train", "images"): "train-images-idx3-ubyte",
         ("train", "labels"): "train-labels-idx1-ubyte",
         ("test", "images"): "t10k-images-idx3-ubyte",
         ("test", "labels"): "t10k-labels-idx1-ubyte"}
FILE_NAMES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, " \
             "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz)"


class KnownSet(typing.TypedDict):
    """Where a named IDX set is looked for, how to get it, and its classes."""

    subdirs: tuple[str, ...]  # under ``data_dir``
    system_dirs: tuple[str, ...]  # where system packages put it
    apt: str | None  # the Debian package, if any
    url: str
    class_names: tuple[str, ...]


# Named sets that ``load`` looks for as IDX files before trying tfds: where under
# ``data_dir``, where system packages put them, and their class names.
KNOWN: dict[str, KnownSet] = {
    "fashion_mnist": {
        "subdirs": ("fashion_mnist", "fashion-mnist"),
        "system_dirs": ("/usr/share/datasets/fashion-mnist",),
        "apt": "dataset-fashion-mnist",
        "url": "https://github.com/zalandoresearch/fashion-mnist",
        "class_names": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                        "Shirt", "Sneaker", "Bag", "Ankle boot"),
    },
    "mnist": {
        "subdirs": ("mnist",),
        "system_dirs": (),
        "apt": None,
        "url": "https://yann.lecun.com/exdb/mnist/",
        "class_names": tuple(str(d) for d in range(10)),
    },
}


def _candidates(directory: pathlib.Path, prefix: str, stem: str) -> list[pathlib.Path]:
    dotted = stem.replace("-idx", ".idx")
    names = [prefix + s + ext for ext in ("", ".gz") for s in (stem, dotted)]
    return [directory / n for n in names]


def find_idx_files(path: str | os.PathLike) -> dict[tuple[str, str], pathlib.Path] | None:
    """The four IDX files of ``path``, or None when any is missing; touches only the disk.

    ``path`` is a directory holding the standard names (``train-images-idx3-ubyte[.gz]``,
    ...), or ``<dir>/<prefix>`` for files named ``<prefix>-train-images-idx3-ubyte[.gz]``
    (EMNIST's ``emnist-balanced``, for example). An uncompressed file is preferred to
    its ``.gz``.
    """
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        directory, prefix = path, ""
    else:
        directory, prefix = path.parent, path.name + "-"
    files = {}
    for key, stem in STEMS.items():
        found = [p for p in _candidates(directory, prefix, stem) if p.is_file()]
        if not found:
            return None
        files[key] = found[0]
    return files


def _read_bytes(path: pathlib.Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"IDX file '{path}' cannot be decompressed ({type(err).__name__}:"
                         f" {err}); expected a complete gzip-compressed IDX file.") from err


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Reads one IDX file as a uint8 array of the shape its header gives.

    Args:
        path: the file (``.gz`` is decompressed).
        magic: the expected magic number, ``IMAGES_MAGIC`` (3-D uint8) or
            ``LABELS_MAGIC`` (1-D uint8).

    Raises:
        ValueError: a wrong magic number, a header longer than the file, or a byte
            length that differs from what the header's dimensions need (a truncated
            file); the message names the file and what was expected.
    """
    path = pathlib.Path(path)
    raw = _read_bytes(path)
    what = "images (unsigned bytes, 3-D)" if magic == IMAGES_MAGIC else \
        "labels (unsigned bytes, 1-D)"
    if len(raw) < 4:
        raise ValueError(f"IDX file '{path}' has {len(raw)} bytes, fewer than its 4-byte "
                         f"magic number; expected {what}, magic 0x{magic:08x}.")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"IDX file '{path}' has magic number 0x{found:08x}; expected "
                         f"0x{magic:08x} for {what}.")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file '{path}' is truncated: {len(raw)} bytes, fewer than "
                         f"its {header}-byte header.")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        state = "is truncated" if len(raw) - header < size else "has trailing bytes"
        raise ValueError(
            f"IDX file '{path}' {state}: its header gives shape {dims}, which needs "
            f"{size} bytes of data after the {header}-byte header, but it has "
            f"{len(raw) - header}.")
    return np.frombuffer(raw, np.uint8, count=size, offset=header).reshape(dims)


def load_idx_pool(path: str | os.PathLike, *, name: str | None = None,
                  class_names: tuple[str, ...] | None = None) -> tuple[Dataset, Dataset]:
    """Reads the IDX files of ``path`` (see :func:`find_idx_files`) as (train, test).

    Images become float32 ``[N, rows, cols, 1]`` in ``[0, 1]`` (``value / 255``), labels
    int32. ``source_index`` counts train examples first, then test examples, in file
    order. EMNIST stores its images transposed; they are returned as stored.

    Args:
        path: the directory (or ``<dir>/<prefix>``) holding the four files.
        name: the ``Dataset.name``; default ``"idx:<path>"``.
        class_names: the class names; default ``"0"``, ``"1"``, ... up to the largest
            label in either split.

    Raises:
        FileNotFoundError: a file is missing (the message lists the names looked for).
        ValueError: a bad file (see :func:`read_idx`), image and label counts that
            differ, a label outside ``class_names``, or (without ``class_names``)
            labels that skip a class (names the file, the label and its index).
    """
    path = pathlib.Path(path).expanduser()
    files = find_idx_files(path)
    if files is None:
        raise FileNotFoundError(
            f"no IDX data set at '{path}': expected the files {FILE_NAMES} in that "
            f"directory (or '<prefix>-train-images-idx3-ubyte[.gz]' ... for "
            f"'idx:<dir>/<prefix>').")
    name = name or f"idx:{path}"
    raw = {}
    for split in ("train", "test"):
        images = read_idx(files[(split, "images")], IMAGES_MAGIC)
        labels = read_idx(files[(split, "labels")], LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"IDX {split} files disagree: '{files[(split, 'images')]}' holds "
                f"{images.shape[0]} images but '{files[(split, 'labels')]}' holds "
                f"{labels.shape[0]} labels; expected one label per image.")
        raw[split] = images, labels
    top = max((int(lab.max()) for _, lab in raw.values() if lab.size), default=-1)
    if class_names is None:
        labelled = {s: (files[(s, "labels")], lab) for s, (_, lab) in raw.items()}
        _check_no_gap(labelled)
        _check_top_not_stray(labelled)
        class_names = tuple(str(c) for c in range(top + 1))
    elif top >= len(class_names):
        split = next(s for s, (_, lab) in raw.items() if lab.size and lab.max() == top)
        raise ValueError(f"IDX labels in '{files[(split, 'labels')]}' reach {top}; "
                         f"expected labels in [0, {len(class_names)}) for {name!r}.")
    out, offset = [], 0
    for split in ("train", "test"):
        images, labels = raw.pop(split)  # the file bytes go once their copy is made
        # One float32 array, filled in place: peak memory is the result plus the bytes.
        scaled = np.empty(images.shape + (1,), np.float32)
        np.divide(images[..., None], np.float32(255.0), out=scaled, dtype=np.float32)
        out.append(Dataset(images=scaled, labels=labels.astype(np.int32),
                           num_classes=len(class_names), name=name,
                           class_names=class_names,
                           source_index=offset + np.arange(labels.shape[0])))
        offset += labels.shape[0]
    return out[0], out[1]


# A largest label held by fewer than 1/STRAY_RATIO of the median class's examples is
# taken for damage, not a class: one stray 10 among Fashion-MNIST's 7,000 per class is
# 1/7000; the most imbalanced long-tailed benchmarks in use keep 1/100 to 1/256.
STRAY_RATIO = 1000


def _check_top_not_stray(labels: dict[str, tuple[pathlib.Path, np.ndarray]]) -> None:
    """Refuses a largest label that only a stray few examples have: the classes are
    numbered 0 to the largest label, so one damaged 10 among labels 0..9 would make an
    eleventh class of one example without a word."""
    pooled = np.concatenate([lab for _, lab in labels.values()])
    if pooled.size == 0:
        return
    counts = np.bincount(pooled.astype(np.int64))
    top, others = counts.size - 1, counts[:-1][counts[:-1] > 0]
    if others.size == 0 or counts[top] * STRAY_RATIO >= np.median(others):
        return
    for path, lab in labels.values():
        where = np.nonzero(lab == top)[0]
        if where.size:
            break
    raise ValueError(
        f"IDX labels in '{path}': label {top} (at index {int(where[0])}) is held by "
        f"{int(counts[top])} example(s) against a median of {int(np.median(others))} per "
        f"class: it would make class {top} of a stray few. Fix the label file (a damaged "
        f"label?), or pass class_names naming every class if the class is real.")


def _check_no_gap(labels: dict[str, tuple[pathlib.Path, np.ndarray]]) -> None:
    """Refuses labels that skip classes: the classes are numbered by the largest label,
    so a stray label (a damaged byte, 200 among labels 0..2) would make hundreds of
    empty classes. Classes below the smallest label may be empty (EMNIST letters are
    labelled 1 to 26)."""
    present = np.unique(np.concatenate([lab for _, lab in labels.values()]))
    if present.size < 2:
        return
    jumps = np.nonzero(np.diff(present) > 1)[0]
    if not jumps.size:
        return
    below, above = int(present[jumps[0]]), int(present[jumps[0] + 1])
    for path, lab in labels.values():
        where = np.nonzero(lab == above)[0]
        if where.size:
            break
    missing = (f"class {below + 1}" if above == below + 2 else
               f"classes {below + 1} to {above - 1}")
    raise ValueError(
        f"IDX labels in '{path}': label {above} (at index {int(where[0])}, "
        f"{where.size} example(s)) skips {missing}, which no example has; the "
        f"classes are numbered 0 to the largest label, so a stray label makes empty "
        f"classes. Fix the label file (a damaged or wrong label?), or pass class_names "
        f"naming every class if the gap is intended.")


def find_known(name: str, data_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """Where the IDX files of the known set ``name`` are, or None; touches only the disk."""
    for directory in known_dirs(name, data_dir):
        if find_idx_files(directory) is not None:
            return directory
    return None


def known_dirs(name: str, data_dir: str | os.PathLike | None) -> list[pathlib.Path]:
    """The directories searched, in order, for the known IDX set ``name``."""
    known = KNOWN[name]
    dirs = []
    if data_dir:
        root = pathlib.Path(data_dir).expanduser()
        dirs += [root / sub for sub in known["subdirs"]]
    dirs += [pathlib.Path(d) for d in known["system_dirs"]]
    return dirs


def missing_message(name: str, data_dir: str | os.PathLike | None,
                    tfds_message: str) -> str:
    """The FileNotFoundError text when the known set ``name`` is nowhere on disk."""
    known = KNOWN[name]
    looked = ", ".join(f"'{d}'" for d in known_dirs(name, data_dir)) or "(nowhere)"
    lines = [f"dataset {name!r} was not found. Looked for its IDX files ({FILE_NAMES}) "
             f"in {looked}, and for a tfds copy (below). Any one of these fixes it:"]
    if known["apt"]:
        lines.append(f"  * sudo apt-get install {known['apt']}   (Debian/Ubuntu: puts the "
                     f"IDX files in {known['system_dirs'][0]}/)")
    target = (f"{pathlib.Path(data_dir).expanduser() / known['subdirs'][0]}/"
              if data_dir else f"<data_dir>/{known['subdirs'][0]}/ and pass data_dir")
    lines.append(f"  * put the four IDX files (from {known['url']}) in {target}")
    lines.append(f"  * or use tfds: {tfds_message}")
    return "\n".join(lines)
