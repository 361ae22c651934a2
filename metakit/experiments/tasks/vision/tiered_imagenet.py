"""tieredImageNet (Ren et al. 2018), read from the pickles of its release, with miniImageNet's protocol.

``--data-root`` holds, for each split ``train``, ``val`` and ``test``:

* ``{split}_images_png.pkl``: a pickled list of PNG-encoded 84×84 images, each ``bytes`` or a
  uint8 array of the encoded bytes (as ``cv2.imencode`` returns them);
* ``{split}_labels.pkl``: a dict whose ``label_specific`` holds each image's class index and, when
  present, ``label_specific_str`` the class names.

The pickles are read with the restricted
:func:`~metakit.experiments.tasks.vision.image_sets.read_data_pickle`; the decoded splits are cached
like miniImageNet's (:func:`~metakit.experiments.tasks.vision.image_sets.cached_splits`), keyed by
the six files' paths, sizes and modification times. Every problem is a one-line
:class:`~metakit.experiments.tasks.vision.image_sets.DataError` naming the file, raised before
anything is written.
"""

import io
import os
from pathlib import Path

import numpy as np
import torch

from metakit.experiments.tasks.vision.image_sets import (
    ClassImages,
    DataError,
    cached_splits,
    files_fingerprint,
    one_line,
    read_data_pickle,
    split_cache_path,
)
from metakit.experiments.tasks.vision.mini_imagenet import MiniImageNet
from metakit.experiments.tasks.vision.mini_imagenet_files import SIZE, check_count, decode
from metakit.experiments.util.errors import flag

SPLITS = {"train": "train", "validation": "val", "test": "test"}
"""Split → the prefix of its two files."""
CACHE_VERSION = 1
LAYOUT = "{train,val,test}_images_png.pkl with {train,val,test}_labels.pkl"
"""What :func:`load_tiered_imagenet` expects under its root, for error messages."""


class TieredImageNet(MiniImageNet):
    """N-way K-shot classification of 84×84 colour images: 351 meta-train, 97 validation and 160
    meta-test ImageNet classes from disjoint super-categories (Ren et al. 2018), read from the
    pickles in ``--data-root`` (:func:`load_tiered_imagenet`).

    The protocol is miniImageNet's, the MAML paper's (Finn et al. 2017, §5.2): 4 conv blocks of 32
    filters with max-pool, α = 0.01, 5 inner steps in training, meta-batch 4, 15 query images per
    class (in training and in held-out episodes), 60,000 iterations; evaluation reports up to 10
    inner steps.
    """

    reproduction = None  # miniImageNet's published numbers are not this data set's

    @classmethod
    def check_config(cls, config) -> None:
        """tieredImageNet needs ``--data-root``."""
        if not config.data_root:
            raise ValueError(f"{flag('task')} tiered-imagenet needs {flag('data_root')} DIR holding {LAYOUT}")

    def load(self):
        """The meta-train, validation and meta-test classes; every class must have ``shots + query``
        images."""
        return load_tiered_imagenet(Path(self.data_root), self.min_images)


def find_files(root: Path) -> dict:
    """``{split: (images pickle, labels pickle)}`` under ``root``; a missing one is a :class:`DataError`."""
    files = {}
    for split, prefix in SPLITS.items():
        files[split] = (root / f"{prefix}_images_png.pkl", root / f"{prefix}_labels.pkl")
        for path in files[split]:
            if not path.is_file():
                raise DataError(f"{path} is missing; expected {LAYOUT} in {root}")
    return files


def read_labels(path: Path) -> tuple:
    """``(class index per image (int64 [n]), {index: class name})`` of a labels pickle; names come
    from ``label_specific_str`` when it names every class, else they are the indices."""
    data = read_data_pickle(path)
    if not isinstance(data, dict) or "label_specific" not in data:
        raise DataError(f"{path} has no 'label_specific' key; expected a dict with each image's class index")
    try:
        labels = np.asarray(data["label_specific"])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: label_specific is not a list of class indices ({one_line(exc)})") from exc
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: label_specific must be one integer class index per image, got {labels.dtype} "
            f"{labels.shape}"
        )
    labels = labels.astype(np.int64)
    names = data.get("label_specific_str")
    classes = np.unique(labels)
    named = isinstance(names, (list, tuple)) and classes.min() >= 0 and classes.max() < len(names)
    return labels, {int(c): str(names[c]) if named else str(c) for c in classes}


def encoded(item, index: int, path: Path) -> bytes:
    """The encoded bytes of one entry of an images pickle (Python 2 strings come back as latin-1 ``str``)."""
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("latin1")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise DataError(
        f"{path}: image {index} has type {type(item).__name__}; expected PNG bytes or a uint8 array of them"
    )


def read_split(images_path: Path, labels_path: Path) -> tuple:
    """One split as ``(ClassImages, name of its smallest class)``: classes in index order, each
    keeping the split's smallest image count (its first images in file order)."""
    labels, names = read_labels(labels_path)
    items = read_data_pickle(images_path)
    if not isinstance(items, (list, tuple)):
        raise DataError(
            f"{images_path} holds a {type(items).__name__}; expected a list of PNG-encoded images"
        )
    if len(items) != len(labels):
        raise DataError(f"{labels_path} labels {len(labels)} images but {images_path} holds {len(items)}")
    rows = [np.flatnonzero(labels == c) for c in names]
    per_class = min(len(r) for r in rows)
    images = torch.empty(len(rows), per_class, 3, SIZE, SIZE, dtype=torch.uint8)
    for c, row in enumerate(rows):
        for i, index in enumerate(row[:per_class]):
            raw = encoded(items[index], index, images_path)
            images[c, i] = decode(io.BytesIO(raw), f"{index} of {images_path}")
    classes = tuple(names.values())
    smallest = classes[min(range(len(rows)), key=lambda c: len(rows[c]))]
    return ClassImages(images, classes, classes), smallest


def load_tiered_imagenet(root: Path, min_images: int = 1) -> dict:
    """``{"train", "validation", "test"}`` :class:`ClassImages` (uint8 ``[classes, n, 3, 84, 84]``,
    351 / 97 / 160 classes in the released files) from the pickles under ``root``.

    Decoded splits are cached and reused while the files stay the same; bad data raises a one-line
    :class:`DataError` and writes nothing.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.is_dir():
        raise DataError(
            f"the tieredImageNet folder {root} does not exist or is not a folder; expected {LAYOUT}"
        )
    files = find_files(root)
    return cached_splits(
        split_cache_path("tiered-imagenet", CACHE_VERSION, root),
        files_fingerprint(f"tiered-imagenet-{CACHE_VERSION}", [p for pair in files.values() for p in pair]),
        SPLITS,
        lambda: {split: read_split(*files[split]) for split in SPLITS},
        lambda split, data, smallest: check_count(files[split][1], data, smallest, min_images),
    )
