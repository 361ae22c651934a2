"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018): the published few-shot class
splits of CIFAR-100 (Krizhevsky 2009), read from its python version.

``--data-root`` is the extracted ``cifar-100-python/`` folder or the folder holding it: ``train``
and ``test`` are pickled dicts with ``data`` (uint8 N×3072, each row a 32×32 image's red, green and
blue planes), ``fine_labels`` and ``coarse_labels``; ``meta`` has ``fine_label_names`` and
``coarse_label_names``. Every class has its train and test images together (600 in the real files),
in file order. The class lists are shipped in ``splits/`` (``cifar_fs_*.txt``: fine classes,
``fc100_*.txt``: superclasses), each naming its source.

The pickles are read with the restricted
:func:`~metakit.experiments.tasks.vision.image_sets.read_data_pickle`; the 100 classes are cached
once for both families (:func:`~metakit.experiments.tasks.vision.image_sets.cached_splits`), keyed by
the three files' paths, sizes and modification times. Every problem is a one-line
:class:`~metakit.experiments.tasks.vision.image_sets.DataError` naming the file, raised before
anything is written.
"""

import os
from pathlib import Path

import numpy as np
import torch

from metakit.experiments.tasks.vision.episodes import ImageEpisodes
from metakit.experiments.tasks.vision.image_sets import (
    ClassImages,
    DataError,
    cached_splits,
    class_list,
    files_fingerprint,
    read_data_pickle,
    split_cache_path,
)
from metakit.experiments.tasks.vision.mini_imagenet import MiniImageNet
from metakit.experiments.tasks.vision.mini_imagenet_files import check_count
from metakit.experiments.util.errors import flag

FOLDER = "cifar-100-python"
SIZE = 32
"""Side of every image."""
ROW = 3 * SIZE * SIZE
"""Bytes per row of ``data``: the red, green and blue planes of one image."""
CACHE_VERSION = 1
LAYOUT = f"{FOLDER}/ with train, test and meta (the extracted python version of CIFAR-100)"
"""What :func:`load_cifar100` expects under its root, for error messages."""
SPLIT_LISTS = Path(__file__).with_name("splits")
"""The folder of the shipped class lists (package data)."""
SPLITS = {"train": "train", "validation": "val", "test": "test"}
"""Split → the suffix of its class list."""


class Cifar100Split(ImageEpisodes):
    """N-way K-shot classification of 32×32 colour images from a published split of CIFAR-100's
    classes (:func:`load_cifar100`); subclasses name their class lists (:attr:`lists`) and whether
    the lists name fine classes or superclasses (:attr:`by`).

    CIFAR-FS and FC100 are used at their native 32×32 px, as in the papers that introduced them
    (Bertinetto et al. 2019; Oreshkin et al. 2018) and MetaOptNet (Lee et al. 2019), which used other
    backbones. The protocol is miniImageNet's from the MAML paper (Finn et al. 2017, §5.2): 4 conv
    blocks of 32 filters with max-pool (32 → 16 → 8 → 4 → 2 px, a 128-feature head), α = 0.01, 5
    inner steps in training, meta-batch 4, 15 query images per class (in training and in held-out
    episodes), 60,000 iterations; evaluation reports up to 10 inner steps.
    """

    protocol = MiniImageNet.protocol
    eval_protocol = MiniImageNet.eval_protocol
    eval_query = MiniImageNet.eval_query
    channels = MiniImageNet.channels
    image_size = SIZE
    bench_plan = MiniImageNet.bench_plan
    lists = ""
    """The class lists' prefix: ``splits/{lists}_{train,val,test}.txt``."""
    by = "names"
    """What the lists name: ``"names"`` (fine classes) or ``"alphabets"`` (superclasses)."""
    task = ""
    """The ``--task`` name, for messages."""

    @classmethod
    def check_config(cls, config) -> None:
        """The family needs ``--data-root``."""
        if not config.data_root:
            raise ValueError(f"{flag('task')} {cls.task} needs {flag('data_root')} DIR holding {LAYOUT}")

    def load(self):
        """The meta-train, validation and meta-test classes named by the shipped lists, in
        CIFAR-100's class order; every class must have ``shots + query`` images."""
        lists = {split: SPLIT_LISTS / f"{self.lists}_{suffix}.txt" for split, suffix in SPLITS.items()}
        wanted = {split: set(class_list(path)) for split, path in lists.items()}

        def check(data: ClassImages) -> None:  # before the classes are cached
            have = set(getattr(data, self.by))
            for split, path in lists.items():
                missing = sorted(wanted[split] - have)
                if missing:
                    kind = "fine class" if self.by == "names" else "superclass"
                    raise DataError(
                        f"{path.name} lists the {kind} {missing[0]!r}, which "
                        f"{find_folder(Path(self.data_root)) / 'meta'} does not name; expected the standard "
                        f"{FOLDER}"
                    )

        data = load_cifar100(Path(self.data_root), self.min_images, check)
        have = getattr(data, self.by)
        splits = {}
        for split in SPLITS:
            keep = [i for i, name in enumerate(have) if name in wanted[split]]
            names, alphabets = (tuple(values[i] for i in keep) for values in (data.names, data.alphabets))
            splits[split] = ClassImages(data.images[keep], names, alphabets)
        return splits


class CifarFS(Cifar100Split):
    """CIFAR-FS (Bertinetto et al. 2019): 64 meta-train, 16 validation and 20 meta-test fine classes
    of CIFAR-100, 600 images each (:class:`Cifar100Split` has the protocol)."""

    lists = "cifar_fs"
    by = "names"
    task = "cifar-fs"


class FC100(Cifar100Split):
    """FC100 (Oreshkin et al. 2018, TADAM): the fine classes of 12 meta-train, 4 validation and 4
    meta-test CIFAR-100 superclasses, 60 / 20 / 20 classes of 600 images, so that no superclass
    spans two splits (:class:`Cifar100Split` has the protocol)."""

    lists = "fc100"
    by = "alphabets"
    task = "fc100"


def find_folder(root: Path) -> Path:
    """The ``cifar-100-python`` folder: ``root/cifar-100-python`` or ``root`` itself, holding
    ``train``, ``test`` and ``meta``; a missing one is a :class:`DataError`."""
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    for name in ("train", "test", "meta"):
        if not (folder / name).is_file():
            raise DataError(f"{folder / name} is missing; expected {LAYOUT} in {root}")
    return folder


def _entry(data, path: Path, key: str, expected: str):
    if not isinstance(data, dict) or key not in data:
        raise DataError(f"{path} has no {key!r} key; expected a dict with {expected}")
    return data[key]


def read_meta(path: Path) -> tuple:
    """``(fine class names, superclass names)`` of the ``meta`` pickle."""
    data = read_data_pickle(path)
    expected = "fine_label_names and coarse_label_names"
    names = [_entry(data, path, key, expected) for key in ("fine_label_names", "coarse_label_names")]
    for key, value in zip(("fine_label_names", "coarse_label_names"), names):
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(n, str) for n in value):
            raise DataError(f"{path}: {key} must be a non-empty list of names")
    return tuple(names[0]), tuple(names[1])


def read_part(path: Path, fine: int, coarse: int) -> tuple:
    """``(uint8 images [n, 3, 32, 32], fine labels [n], coarse labels [n])`` of the ``train`` or
    ``test`` pickle, labels checked against ``fine`` and ``coarse`` class counts."""
    data = read_data_pickle(path)
    expected = "data, fine_labels and coarse_labels"
    images = _entry(data, path, "data", expected)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != (ROW,):
        shape = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{path}: data must be uint8 N×{ROW} (32×32 RGB planes), got {shape}")
    labels = []
    for key, count in (("fine_labels", fine), ("coarse_labels", coarse)):
        value = np.asarray(_entry(data, path, key, expected))
        if value.shape != images.shape[:1] or not np.issubdtype(value.dtype, np.integer):
            raise DataError(
                f"{path}: {key} must be one integer per row of data ({images.shape[0]}), got {value.dtype} "
                f"{value.shape}"
            )
        if value.size and (value.min() < 0 or value.max() >= count):
            raise DataError(f"{path}: {key} has a label outside the {count} names of the meta file")
        labels.append(value.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(images)).view(-1, 3, SIZE, SIZE), *labels


def read_classes(folder: Path) -> tuple:
    """All fine classes as ``(ClassImages, name of the smallest class)``: ``names`` the fine
    classes in label order, ``alphabets`` their superclasses; every class keeps the smallest image
    count, train images first."""
    fine_names, coarse_names = read_meta(folder / "meta")
    parts = [read_part(folder / name, len(fine_names), len(coarse_names)) for name in ("train", "test")]
    images = torch.cat([part[0] for part in parts])
    fine, coarse = (np.concatenate([part[i] for part in parts]) for i in (1, 2))
    rows = [np.flatnonzero(fine == c) for c in range(len(fine_names))]
    per_class = min(len(r) for r in rows)
    alphabets = []
    for c, row in enumerate(rows):
        parents = np.unique(coarse[row])
        if len(parents) > 1:
            raise DataError(
                f"{folder}: fine class {fine_names[c]!r} has images in the superclasses "
                f"{', '.join(coarse_names[p] for p in parents)}; expected one"
            )
        alphabets.append(coarse_names[parents[0]] if len(parents) else "")
    keep = torch.from_numpy(np.stack([r[:per_class] for r in rows]))
    smallest = fine_names[min(range(len(rows)), key=lambda c: len(rows[c]))]
    return ClassImages(images[keep].contiguous(), fine_names, tuple(alphabets)), smallest


def load_cifar100(root: Path, min_images: int = 1, check=None) -> ClassImages:
    """All CIFAR-100 fine classes under ``root`` (uint8 ``[100, 600, 3, 32, 32]`` in the real
    files), with their superclasses as ``alphabets`` (see :func:`read_classes`).

    The decoded set is cached and reused while the files stay the same; bad data (every class
    needs ``min_images``; ``check(data)``, if given, may raise too) is a one-line
    :class:`DataError` and writes nothing.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.is_dir():
        raise DataError(f"the CIFAR-100 folder {root} does not exist or is not a folder; expected {LAYOUT}")
    folder = find_folder(root)

    def checks(_, data: ClassImages, smallest: str) -> None:
        check_count(folder, data, smallest, min_images)
        if check is not None:
            check(data)

    return cached_splits(
        split_cache_path("cifar-100", CACHE_VERSION, root),
        files_fingerprint(f"cifar-100-{CACHE_VERSION}", [folder / n for n in ("train", "test", "meta")]),
        ("classes",),
        lambda: {"classes": read_classes(folder)},
        checks,
    )["classes"]
