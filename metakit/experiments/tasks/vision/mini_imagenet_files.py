"""miniImageNet (Vinyals et al. 2016, Ravi & Larochelle's split), read from the two layouts users keep:

* the pickled caches ``mini-imagenet-cache-{train,val,test}.pkl`` (the middle one sometimes named
  ``-validation.pkl``): a dict with ``image_data`` (uint8, N×84×84×3) and ``class_dict`` (wnid →
  row indices);
* Ravi's folder: ``images/<file>.jpg`` with ``train.csv``, ``val.csv`` and ``test.csv``
  (``filename,label`` rows).

Pickles can run code when loaded, so these are read with
:class:`~metakit.experiments.tasks.vision.image_sets.ArrayUnpickler`, which builds
dicts, lists, strings, numbers and numpy arrays and refuses every other global. The decoded splits
are cached as tensors (``torch.load(weights_only=True)``) in the user cache folder, keyed by the
files' paths, sizes and modification times. Every problem is a one-line :class:`DataError` naming
the file, raised before anything is written.
"""

import csv
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from metakit.experiments.tasks.vision.image_sets import (
    ClassImages,
    DataError,
    cached_splits,
    files_fingerprint,
    one_line,
    read_data_pickle,
    split_cache_path,
)

SIZE = 84
"""Side of every image (the cache's and the Ravi folder's; other sizes are resized to it)."""
SPLITS = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}
"""Split → the file-name parts it is found under, first match wins."""
CACHE_VERSION = 1
LAYOUT = (
    "mini-imagenet-cache-{train,val,test}.pkl, or images/ with train.csv, val.csv and test.csv "
    "(filename,label)"
)
"""What :func:`load_mini_imagenet` expects under its root, for error messages."""


def find_files(root: Path) -> dict:
    """``{"layout": "pickle" | "ravi", split: path}`` of the data under ``root`` (pickles win)."""
    pickles = {}
    for split, names in SPLITS.items():
        found = [root / f"mini-imagenet-cache-{name}.pkl" for name in names]
        pickles[split] = next((path for path in found if path.is_file()), None)
    if any(pickles.values()):
        missing = [split for split, path in pickles.items() if path is None]
        if missing:
            raise DataError(
                f"no mini-imagenet-cache-{SPLITS[missing[0]][0]}.pkl in {root}; expected {LAYOUT}"
            )
        return {"layout": "pickle", **pickles}
    tables = {split: root / f"{names[0]}.csv" for split, names in SPLITS.items()}
    if (root / "images").is_dir() or any(path.is_file() for path in tables.values()):
        missing = [path for path in [root / "images", *tables.values()] if not path.exists()]
        if missing:
            raise DataError(f"{missing[0]} is missing; expected {LAYOUT} in {root}")
        return {"layout": "ravi", **tables}
    raise DataError(f"no miniImageNet data in {root}; expected {LAYOUT}")


def _class_rows(path: Path, class_dict, count: int) -> list:
    """``[(wnid, row indices)]`` of a pickle's ``class_dict``, sorted by wnid."""
    if not isinstance(class_dict, dict) or not class_dict:
        raise DataError(f"{path}: class_dict must be a non-empty dict wnid → row indices")
    rows = []
    for wnid in sorted(class_dict, key=str):
        try:
            index = np.asarray(class_dict[wnid], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: class_dict[{wnid!r}] is not a list of row indices ({one_line(exc)})")
        if index.size and (index.min() < 0 or index.max() >= count):
            raise DataError(f"{path}: class_dict[{wnid!r}] has a row outside the {count} rows of image_data")
        rows.append((str(wnid), index))
    return rows


def read_pickle(path: Path) -> list:
    """``[(wnid, uint8 images [n, 3, 84, 84])]`` of one cache pickle (read with the restricted
    :func:`~metakit.experiments.tasks.vision.image_sets.read_data_pickle`)."""
    data = read_data_pickle(path)
    if not isinstance(data, dict):
        raise DataError(
            f"{path} holds a {type(data).__name__}; expected a dict with image_data and class_dict"
        )
    for key in ("image_data", "class_dict"):
        if key not in data:
            raise DataError(f"{path} has no {key!r} key; expected a dict with image_data and class_dict")
    images = data["image_data"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != (SIZE, SIZE, 3):
        shape = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{path}: image_data must be uint8 N×{SIZE}×{SIZE}×3, got {shape}")
    images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return [(wnid, images[index]) for wnid, index in _class_rows(path, data["class_dict"], images.shape[0])]


def decode(source, label=None) -> torch.Tensor:
    """One image, a path or a binary file, as uint8 ``[3, 84, 84]`` (RGB, resized when it has another
    size); an unreadable one is a :class:`DataError` naming ``label`` (default: ``source``)."""
    try:
        with Image.open(source) as image:
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        unknown = isinstance(exc, UnidentifiedImageError)  # its message holds the file object's repr
        reason = "not an image format Pillow reads, or corrupt" if unknown else one_line(exc)
        raise DataError(f"cannot read image {source if label is None else label}: {reason}") from exc
    if rgb.size != (SIZE, SIZE):
        rgb = rgb.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)


def read_table(path: Path) -> list:
    """``[(wnid, uint8 images [n, 3, 84, 84])]`` of one of Ravi's csv files, classes sorted by wnid,
    images in file order."""
    files = {}
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or [cell.strip() for cell in header[:2]] != ["filename", "label"]:
                raise DataError(f"{path}: the first line must be filename,label, got {header}")
            for number, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    raise DataError(f"{path} line {number}: expected filename,label, got {','.join(row)}")
                files.setdefault(row[1].strip(), []).append(row[0].strip())
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from exc
    if not files:
        raise DataError(f"{path} lists no images; expected filename,label rows")
    images = path.parent / "images"
    return [(wnid, torch.stack([decode(images / name) for name in files[wnid]])) for wnid in sorted(files)]


def to_class_images(classes: list) -> tuple:
    """One split as ``(ClassImages, wnid of its smallest class)``; every class keeps the split's
    smallest image count."""
    smallest = min(classes, key=lambda item: len(item[1]))
    images = torch.stack([x[: len(smallest[1])] for _, x in classes])
    names = tuple(w for w, _ in classes)
    return ClassImages(images.contiguous(), names, names), smallest[0]


def check_count(path: Path, data: ClassImages, smallest: str, min_images: int) -> None:
    """A :class:`DataError` naming the smallest class and its file if it has fewer than ``min_images``."""
    if data.images.shape[1] < min_images:
        raise DataError(
            f"class {smallest} in {path} has {data.images.shape[1]} images; episodes need {min_images} per "
            "class (shots + query)"
        )


def fingerprint(files: dict) -> str:
    """A hash of the layout and every source file's path, size and modification time."""
    sources = [files[split] for split in SPLITS]
    if files["layout"] == "ravi":
        images = sources[0].parent / "images"
        with os.scandir(images) as entries:
            sources += sorted((images / e.name for e in entries if e.is_file()), key=str)
    return files_fingerprint(f"mini-imagenet-{CACHE_VERSION}-{files['layout']}", sources)


def load_mini_imagenet(root: Path, min_images: int = 1) -> dict:
    """``{"train", "validation", "test"}`` :class:`ClassImages` (uint8 ``[classes, n, 3, 84, 84]``,
    64 / 16 / 20 classes of 600 images in the standard files) from either layout under ``root``.

    Decoded splits are cached
    (:func:`~metakit.experiments.tasks.vision.image_sets.cached_splits`) and reused while the files
    stay the same; bad data raises a one-line :class:`DataError` and writes nothing.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.is_dir():
        raise DataError(
            f"the miniImageNet folder {root} does not exist or is not a folder; expected {LAYOUT}"
        )
    files = find_files(root)
    read = read_pickle if files["layout"] == "pickle" else read_table
    return cached_splits(
        split_cache_path("mini-imagenet", CACHE_VERSION, root),
        fingerprint(files),
        SPLITS,
        lambda: {split: to_class_images(read(files[split])) for split in SPLITS},
        lambda split, data, smallest: check_count(files[split], data, smallest, min_images),
    )
