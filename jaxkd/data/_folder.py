"""Image folders, one subfolder per class (for sets tfds lacks, e.g. MIT Indoor 67).

Each file is decoded once, by a pool of threads (Pillow's decoders release the GIL),
straight into preallocated float32 train and test arrays: peak memory stays near the
size of what is returned.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import struct
import threading
import zlib

import numpy as np

from jaxkd.data._dataset import Dataset
from jaxkd.data._subsets import TEST_FRACTION, TEST_SPLIT_SEED, stratified_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif",
                  ".tiff", ".webp")
# Pillow modes by how they become pixel values in [0, 1].
GREY_8BIT = ("1", "L", "LA", "La")                  # value / 255 (alpha dropped)
GREY_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")    # value / 65535
COLOUR = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr")  # as RGB / 255
# Pillow opens 16-bit PNG (older Pillow) and PGM/PPM with maxval > 255 (rescaled to
# 16 bits) as mode "I"; "I" from other formats (32-bit TIFF) has no known bit depth.
MODE_I_16BIT_FORMATS = ("PNG", "PPM")
_CHUNK = 64


class _BadImage(ValueError):
    """A file this loader refuses (mode, size); raised as is, never re-wrapped."""


def _decode_errors():
    """What Pillow raises on a corrupt or truncated file."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    return (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
            Image.DecompressionBombError)


def _cannot_decode(path: pathlib.Path, err: Exception) -> ValueError:
    return ValueError(f"cannot decode image '{path}' ({type(err).__name__}: {err}); "
                      f"expected a complete image file.")


def _num_threads() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _check_inside(path: pathlib.Path, top: pathlib.Path, real_top: pathlib.Path) -> None:
    """Refuses a symbolic link that leads outside the image folder ``top``."""
    real = pathlib.Path(os.path.realpath(path))
    if real != real_top and real_top not in real.parents:
        raise ValueError(
            f"image folder '{top}': '{path}' is a symbolic link to '{real}', outside the "
            f"folder; links must stay inside the folder (copy the file in, or point "
            f"folder: at a directory that holds both).")
    if not real.exists():
        raise FileNotFoundError(f"image folder '{top}': '{path}' is a broken symbolic "
                                f"link (to '{real}').")


def _class_files(root: pathlib.Path, top: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder '{root}' does not exist or is not a "
                                f"directory.")
    real_top = pathlib.Path(os.path.realpath(top))
    if root.is_symlink():
        _check_inside(root, top, real_top)
    with os.scandir(root) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")),
                         key=lambda e: e.name)
    classes = []
    for e in entries:
        if e.is_symlink():
            _check_inside(pathlib.Path(e.path), top, real_top)
        if e.is_dir():
            classes.append(pathlib.Path(e.path))
    if not classes:
        raise FileNotFoundError(
            f"image folder '{root}' has no class subfolders; expected "
            f"'{root}/<class_name>/<image>.png' (or train/ and test/ each laid out so).")
    files = {}
    for d in classes:
        with os.scandir(d) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")
                              and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES),
                             key=lambda e: e.name)
        images = []
        for e in entries:
            if e.is_symlink():
                _check_inside(pathlib.Path(e.path), top, real_top)
            if e.is_file():
                images.append(pathlib.Path(e.path))
        if not images:
            raise FileNotFoundError(
                f"class folder '{d}' of image folder '{root}' holds no images (looked "
                f"for {', '.join(IMAGE_SUFFIXES)}).")
        files[d.name] = images
    return files


def _kind(mode: str, image_format: str | None, path: pathlib.Path) -> str:
    """'grey8', 'grey16' or 'colour' for a Pillow mode, or a ValueError naming the file."""
    if mode in GREY_8BIT:
        return "grey8"
    if mode in GREY_16BIT or (mode == "I" and image_format in MODE_I_16BIT_FORMATS):
        return "grey16"
    if mode in COLOUR:
        return "colour"
    raise _BadImage(
        f"image '{path}' has Pillow mode {mode!r} ({image_format}), which has no known "
        f"scale to [0, 1]; supported: 8-bit grey {GREY_8BIT}, 16-bit grey "
        f"{GREY_16BIT} (and 'I' from PNG/PGM), colour {COLOUR}. Convert it to 8- or "
        f"16-bit grey or RGB.")


class _Reader:
    """Decodes files into rows of preallocated ``[N, H, W, C]`` float32 arrays."""

    def __init__(self, outputs: list[np.ndarray], size: tuple[int, int],
                 resize: bool, first: pathlib.Path):
        self.outputs = outputs
        self.size = size              # (height, width) of every returned image
        self.resize = resize
        self.first = first            # the file whose size the others must match
        self.colour_late: dict[tuple[int, int], np.ndarray] = {}
        self.lock = threading.Lock()

    def decode(self, path: pathlib.Path) -> tuple[str, np.ndarray]:
        """One file as ('grey8', uint8 [H,W]) / ('grey16', float32 [H,W] in [0,1]) /
        ('colour', uint8 [H,W,3])."""
        from PIL import Image  # pylint: disable=import-outside-toplevel

        height, width = self.size
        try:
            with Image.open(path) as img:
                kind = _kind(img.mode, img.format, path)
                if not self.resize and (img.height, img.width) != self.size:
                    raise _BadImage(
                        f"images differ in size: '{self.first}' is {self.size} but "
                        f"'{path}' is {(img.height, img.width)}; pass "
                        f"image_size=(height, width) to resize on load.")
                if kind == "grey16":
                    array = np.asarray(img).astype(np.float32)
                    if self.resize:
                        array = np.asarray(Image.fromarray(array).resize(
                            (width, height), Image.Resampling.BILINEAR))
                    return kind, array / np.float32(65535.0)
                target = "L" if kind == "grey8" else "RGB"
                image: Image.Image = img if img.mode == target else img.convert(target)
                if self.resize:
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                return kind, np.asarray(image, dtype=np.uint8)
        except _BadImage:
            raise
        except _decode_errors() as err:
            raise _cannot_decode(path, err) from err

    def read(self, jobs: list[tuple[pathlib.Path, int, int]]) -> None:
        """Decodes ``(path, output, row)`` jobs into their rows."""
        for path, key, row in jobs:
            kind, array = self.decode(path)
            out = self.outputs[key][row]
            if kind == "colour" and out.shape[-1] == 1:
                with self.lock:  # a colour image in a folder that began grey
                    self.colour_late[(key, row)] = array
            elif kind == "grey16":
                out[...] = array[..., None]
            else:
                np.divide(array if array.ndim == 3 else array[..., None],
                          np.float32(255.0), out=out, dtype=np.float32)

    def finish(self) -> list[np.ndarray]:
        """Widens grey outputs to RGB when some image turned out to be colour."""
        if not self.colour_late:
            return self.outputs
        widened = []
        for grey in self.outputs:
            rgb = np.empty(grey.shape[:3] + (3,), np.float32)
            rgb[...] = grey
            widened.append(rgb)
        self.outputs = []  # drop the grey arrays
        for (key, row), array in self.colour_late.items():
            np.divide(array, np.float32(255.0), out=widened[key][row], dtype=np.float32)
        return widened


def _read_all(jobs: list[tuple[pathlib.Path, int, int]], counts: tuple[int, ...],
              image_size: tuple[int, int] | None) -> list[np.ndarray]:
    """Decodes every job in parallel into ``len(counts)`` float32 arrays."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    first = jobs[0][0]
    try:
        with Image.open(first) as img:  # the header only: size and channels
            first_kind = _kind(img.mode, img.format, first)
            size = (img.height, img.width)
    except _BadImage:
        raise
    except _decode_errors() as err:
        raise _cannot_decode(first, err) from err
    if image_size is not None:
        size = (int(image_size[0]), int(image_size[1]))
    channels = 3 if first_kind == "colour" else 1
    reader = _Reader([np.empty((n,) + size + (channels,), np.float32) for n in counts],
                     size, image_size is not None, first)
    chunks = [jobs[i:i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    with concurrent.futures.ThreadPoolExecutor(min(len(chunks), _num_threads())) as pool:
        futures = [pool.submit(reader.read, chunk) for chunk in chunks]
        try:
            for future in futures:  # in order: the first bad file in file order wins
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return reader.finish()


def load_folder_pool(path: str | os.PathLike, *,
                     image_size: tuple[int, int] | None = None) -> tuple[Dataset, Dataset]:
    """Reads a class-per-subfolder image directory as its (train, test) splits.

    Layouts: ``<path>/train/<class>/*`` and ``<path>/test/<class>/*`` (the given split),
    or ``<path>/<class>/*`` (a fixed stratified 20 % of each class becomes test).
    Classes are the subfolder names in sorted order; files and folders whose names
    start with ``.`` are skipped. Greyscale-only folders give one channel, others RGB.

    Pixel values: 8-bit images (grey, palette, RGB, RGBA, CMYK, ...) are divided by
    255 (alpha dropped); 16-bit grey (PNG, TIFF, PGM) by 65535. Other modes (32-bit
    integer or float TIFF, LAB, HSV) are refused.

    Symbolic links: a link (to a class folder or an image) is followed when it stays
    inside ``path`` and refused with ``ValueError`` when it leads outside, so a folder
    cannot pull in files from elsewhere on the machine without saying so.

    Args:
        path: the root folder.
        image_size: ``(height, width)`` to resize every image to (bilinear, on load);
            required when the images differ in size.

    Raises:
        FileNotFoundError: the folder is missing or empty, a class folder is empty, or
            a link is broken.
        ValueError: images differ in size and ``image_size`` is None; train and test
            have different classes; an image is corrupt or truncated, or has an
            unsupported mode; a symbolic link leads outside the folder. Each message
            names the file.
    """
    root = pathlib.Path(path).expanduser()
    name = f"folder:{root}"
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files = _class_files(root / "train", root)
        test_files = _class_files(root / "test", root)
        if set(test_files) - set(train_files):
            raise ValueError(f"image folder '{root}': test classes "
                             f"{sorted(set(test_files) - set(train_files))} are not in "
                             f"train.")
    else:
        train_files, test_files = _class_files(root, root), None
    class_names = tuple(train_files)
    index = {c: i for i, c in enumerate(class_names)}

    def flat(files):
        paths = [p for c in class_names for p in files.get(c, [])]
        labels = np.asarray([index[c] for c in class_names for _ in files.get(c, [])],
                            np.int32)
        return paths, labels

    train_paths, train_labels = flat(train_files)
    if test_files:
        test_paths, test_labels = flat(test_files)
        paths = train_paths + test_paths
        labels = np.concatenate([train_labels, test_labels])
        train_pos = np.arange(len(train_paths))
        test_pos = np.arange(len(train_paths), len(paths))
    else:
        paths, labels = train_paths, train_labels
        train_pos, test_pos = stratified_split(labels, TEST_FRACTION, seed=TEST_SPLIT_SEED)
    # Every file goes straight to its row of the train or test array; jobs run in file
    # order, so the first bad file in that order is the one reported.
    job_at: dict[int, tuple[pathlib.Path, int, int]] = {}
    for key, positions in enumerate((train_pos, test_pos)):
        for row, p in enumerate(positions):
            job_at[int(p)] = (paths[p], key, int(row))
    jobs = [job_at[p] for p in range(len(paths))]
    train_images, test_images = _read_all(jobs, (len(train_pos), len(test_pos)),
                                          image_size)
    out = []
    for images, pos in ((train_images, train_pos), (test_images, test_pos)):
        out.append(Dataset(images=images, labels=labels[pos],
                           num_classes=len(class_names), name=name,
                           class_names=class_names, source_index=pos))
    return out[0], out[1]
