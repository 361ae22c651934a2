"""The real Omniglot (Lake et al. 2015), read from the official ``images_background`` and
``images_evaluation`` folders or zips, decoded once and cached as tensors.

Expected layout, either directly under ``root`` or under ``root/omniglot-py/`` (where torchvision
puts it)::

    images_background/<alphabet>/<character>/<drawing>.png     (105×105, black strokes on white)
    images_evaluation/<alphabet>/<character>/<drawing>.png

A missing folder may be replaced by the official zip of the same name (``images_background.zip``),
which is then read in place, whatever folders its members lie under (a zip made from an absolute
path holds ``home/u/images_background/...``). Alphabets, characters and files are taken in name
order; a transparent background counts as white; images are inverted (ink = 255) and resized with
antialiasing, and an image that is mostly ink (light strokes on dark) is refused.
"""

import hashlib
import io
import os
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from metakit.experiments.tasks.vision.image_sets import (
    ClassImages,
    DataError,
    cache_dir,
    class_list,
    load_split_cache,
    one_line,
    save_split_cache,
)
from metakit.experiments.util.errors import flag

SPLITS = ("background", "evaluation")
"""The two official splits, in the order they are returned."""
SPLIT_LISTS = Path(__file__).with_name("splits")
"""The folder of the shipped class lists ``omniglot_vinyals_{train,val,test}.txt`` (package data)."""
VINYALS = {"train": "train", "validation": "val", "test": "test"}
"""The Vinyals et al. (2016) splits, by the name :func:`vinyals_splits` returns them under → file suffix."""
CACHE_VERSION = 2
"""Part of the cache file name and fingerprint; bump it when the cached layout changes (2: images carry a
channel axis)."""
LAYOUT = (
    "images_background/ and images_evaluation/ holding <alphabet>/<character>/*.png "
    "(or images_background.zip and images_evaluation.zip), directly or under omniglot-py/"
)
"""What :func:`load_omniglot` expects under its root, for error messages."""
MAX_INK = 0.5
"""Refuse an image whose share of ink pixels (≥ 50% dark after decoding) is at least this: Omniglot's
strokes cover a small part of the image, so such an image is light-on-dark (inverted) or not a drawing."""


@dataclass(frozen=True)
class CharacterImages:
    """One character class of a split: its alphabet, its name and its image files in name order.

    For a folder, ``files`` are paths; for a zip, member names inside :attr:`Split.source`.
    """

    alphabet: str
    character: str
    files: tuple


@dataclass(frozen=True)
class Split:
    """Where one split lives (a folder or a zip file) and the classes listed in it."""

    source: Path
    is_zip: bool
    classes: tuple


def find_split(root: Path, split: str) -> Optional[Path]:
    """The folder ``images_{split}`` under ``root`` or ``root/omniglot-py``, else the zip of that name,
    else ``None``."""
    bases = (root, root / "omniglot-py")
    for base in bases:
        if (base / f"images_{split}").is_dir():
            return base / f"images_{split}"
    for base in bases:
        if (base / f"images_{split}.zip").is_file():
            return base / f"images_{split}.zip"
    return None


def _visible(name: str) -> bool:
    return not name.startswith((".", "__MACOSX"))


def _is_png(name: str) -> bool:
    return name.lower().endswith(".png") and _visible(name)


def _entries(folder: Path, folders: bool) -> list:
    """The visible sub-folders (or PNG files) of ``folder``, sorted by name."""
    with os.scandir(folder) as entries:
        names = [
            e.name
            for e in entries
            if (e.is_dir() if folders else e.is_file() and _is_png(e.name)) and _visible(e.name)
        ]
    return [folder / name for name in sorted(names)]


def list_folder(folder: Path) -> tuple:
    """The :class:`CharacterImages` of an extracted split folder, sorted by alphabet then character."""
    classes = []
    for alphabet in _entries(folder, folders=True):
        for character in _entries(alphabet, folders=True):
            files = tuple(_entries(character, folders=False))
            if not files:
                raise DataError(
                    f"character folder {character} holds no .png images; expected {character}/<drawing>.png"
                )
            classes.append(CharacterImages(alphabet.name, character.name, files))
    if not classes:
        raise DataError(
            f"{folder} holds no character folders; expected {folder}/<alphabet>/<character>/*.png"
        )
    return tuple(classes)


def list_zip(path: Path, split: str) -> tuple:
    """The :class:`CharacterImages` of a split zip, members sorted like :func:`list_folder`.

    The images must lie at ``<alphabet>/<character>/<drawing>.png`` below one common folder, whatever
    it is: ``images_<split>/`` in the official zips, ``home/u/images_<split>/`` in a zip made from an
    absolute path, none at all. Images at different depths are a :class:`DataError` naming two.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read the zip {path}: {one_line(exc)}") from exc
    expected = f"expected images_{split}/<alphabet>/<character>/*.png inside it"
    entries = [(member, [part for part in member.split("/") if part]) for member in members]
    entries = [(member, parts) for member, parts in entries if parts and all(map(_visible, parts))]
    images = [(member, parts) for member, parts in entries if not member.endswith("/") and _is_png(parts[-1])]
    if not images:
        raise DataError(f"the zip {path} holds no .png images; {expected}")
    depths = {}  # the folder above <alphabet>/ (None: too shallow for one) → a member there
    for member, parts in images:
        depths.setdefault(tuple(parts[:-3]) if len(parts) >= 3 else None, member)
    if len(depths) > 1 or None in depths:
        shown = " and ".join(sorted(depths.values())[:2])
        raise DataError(
            f"the zip {path} holds .png images outside <alphabet>/<character>/ folders of one common "
            f"folder ({shown}); {expected}"
        )
    (top,) = depths
    files, folders = {}, set()
    for member, parts in entries:
        rest = parts[len(top) :]
        if tuple(parts[: len(top)]) != top or len(rest) < 2 or (len(rest) == 2 and not member.endswith("/")):
            continue  # outside the common folder, or a file beside the character folders
        folders.add(tuple(rest[:2]))
        if len(rest) == 3 and not member.endswith("/") and _is_png(rest[2]):
            files.setdefault(tuple(rest[:2]), []).append((rest[2], member))
    classes = []
    for alphabet, character in sorted(folders):
        found = sorted(files.get((alphabet, character), []))
        if not found:
            folder = "/".join((*top, alphabet, character))
            raise DataError(
                f"character folder {path}:{folder}/ holds no .png images; "
                f"expected <alphabet>/<character>/<drawing>.png"
            )
        classes.append(CharacterImages(alphabet, character, tuple(member for _, member in found)))
    return tuple(classes)


def list_split(root: Path, split: str) -> Split:
    """Locate and list one split under ``root`` (see :data:`LAYOUT`)."""
    source = find_split(root, split)
    if source is None:
        raise DataError(f"no images_{split} folder or zip under {root}; expected {LAYOUT}")
    is_zip = source.suffix == ".zip" and source.is_file()
    classes = list_zip(source, split) if is_zip else list_folder(source)
    return Split(source, is_zip, classes)


def class_folder(split: Split, character: CharacterImages) -> str:
    """Where one class's images are, for messages: its folder, or ``ZIP:its/folder/``."""
    if split.is_zip:
        return f"{split.source}:{character.files[0].rsplit('/', 1)[0]}/"
    return str(Path(character.files[0]).parent)


def fewest(split: Split) -> tuple:
    """``(folder, count)`` of the class of ``split`` with the fewest images (the first in name order)."""
    character = min(split.classes, key=lambda c: len(c.files))
    return class_folder(split, character), len(character.files)


def warn_if_cut(split: Split) -> None:
    """Warn, in one line naming the class with the fewest images, when the classes of ``split`` hold
    different numbers of images: every class keeps only as many as that one (:func:`read_split`)."""
    counts = [len(c.files) for c in split.classes]
    folder, count = fewest(split)
    most = max(counts)
    if count < most:
        short = sum(n < most for n in counts)
        warnings.warn(
            f"the classes of {split.source.name} hold {count} to {most} images ({short} of {len(counts)} "
            f"fewer than {most}): every class keeps only its first {count}, as many as {folder}",
            stacklevel=3,
        )


def fingerprint(splits: dict, size: int) -> str:
    """A hash of everything the decoded tensors depend on: the output size and, for each split, the
    relative path, byte size and modification time of every image (or of the zip file)."""
    digest = hashlib.sha256(f"omniglot-{CACHE_VERSION}-{size}".encode())
    for name, split in splits.items():
        digest.update(f"\n{name}\t{split.source.name}\t{split.is_zip}".encode())
        if split.is_zip:
            stat = split.source.stat()
            digest.update(f"\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
            continue
        prefix = len(str(split.source)) + 1
        lines = []
        for images in split.classes:
            for path in map(str, images.files):
                stat = os.stat(path)
                lines.append(f"\n{path[prefix:]}\t{stat.st_size}\t{stat.st_mtime_ns}")
        digest.update("".join(lines).encode())
    return digest.hexdigest()


def decode(source, label: str, size: int) -> np.ndarray:
    """One image file (path or file object) as ``size``×``size`` uint8 with ink = 255; a transparent
    background is composited onto white first. An unreadable image, or one with at least
    :data:`MAX_INK` of its pixels ink (light strokes on dark), is a :class:`DataError` naming ``label``."""
    try:
        with Image.open(source) as image:
            if image.has_transparency_data:  # RGBA, LA, a palette or grey level marked transparent
                image = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
            gray = image.convert("L")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {label}: {one_line(exc)}") from exc
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR)
    ink = 255 - np.asarray(gray, dtype=np.uint8)
    share = float((ink >= 128).mean())
    if share >= MAX_INK:
        raise DataError(
            f"image {label} is {share:.0%} ink: Omniglot is read as dark strokes on a light background, "
            "and this image looks light-on-dark; invert such images (e.g. PIL.ImageOps.invert)"
        )
    return ink


def _decode_classes(split: Split, per_class: int, size: int) -> np.ndarray:
    images = np.zeros((len(split.classes), per_class, 1, size, size), dtype=np.uint8)
    if split.is_zip:
        with zipfile.ZipFile(split.source) as archive:
            for c, character in enumerate(split.classes):
                for i, member in enumerate(character.files[:per_class]):
                    label = f"{split.source}:{member}"
                    try:
                        data = archive.read(member)
                    except (OSError, zipfile.BadZipFile) as exc:
                        raise DataError(f"cannot read image {label}: {one_line(exc)}") from exc
                    images[c, i, 0] = decode(io.BytesIO(data), label, size)
    else:
        for c, character in enumerate(split.classes):
            for i, path in enumerate(character.files[:per_class]):
                images[c, i, 0] = decode(path, str(path), size)
    return images


def read_split(split: Split, size: int) -> ClassImages:
    """Decode a listed split into one-channel images; every class keeps its first ``per_class`` images,
    where ``per_class`` is the smallest image count of any class of the split (20 in the official data);
    ``fewest`` names that class's folder."""
    folder, per_class = fewest(split)
    return ClassImages(
        torch.from_numpy(_decode_classes(split, per_class, size)),
        tuple(f"{c.alphabet}/{c.character}" for c in split.classes),
        tuple(c.alphabet for c in split.classes),
        folder,
    )


def cache_path(root: Path, size: int) -> Path:
    """Where the decoded tensors of ``root`` at ``size`` are cached: in :func:`cache_dir`, keyed by the
    absolute root path, so that read-only data folders work."""
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return cache_dir(None) / "omniglot" / f"omniglot-v{CACHE_VERSION}-{key}-{size}.pt"


def load_omniglot(root: Path, size: int = 28) -> dict:
    """``{"background": ClassImages, "evaluation": ClassImages}`` from the official Omniglot under ``root``.

    The decoded tensors are cached (see :func:`cache_path`) and reused while the file list, sizes and
    modification times stay the same. Missing or malformed data raises :class:`DataError`.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.exists():
        raise DataError(f"the Omniglot folder {root} does not exist; expected it to hold {LAYOUT}")
    if not root.is_dir():
        hint = _parent_hint(root)
        raise DataError(f"the Omniglot root {root} is not a folder; expected a folder holding {LAYOUT}{hint}")
    if all(find_split(root, split) is None for split in SPLITS):
        raise DataError(f"no Omniglot data under {root}; expected {LAYOUT}{_parent_hint(root)}")
    splits = {name: list_split(root, name) for name in SPLITS}
    for split in splits.values():
        warn_if_cut(split)
    expected = fingerprint(splits, size)
    path = cache_path(root, size)
    cached = load_split_cache(path, expected, SPLITS)
    if cached is not None:  # the cache holds no folder names: they come from the listing
        return {name: replace(data, fewest=fewest(splits[name])[0]) for name, (data, _) in cached.items()}
    data = {name: read_split(split, size) for name, split in splits.items()}
    save_split_cache(path, expected, data)
    return data


def _parent_hint(root: Path) -> str:
    """``"; did you mean its parent P?"`` where ``root`` is itself one split's folder or zip, else ''."""
    if root.name in {f"images_{split}{suffix}" for split in SPLITS for suffix in ("", ".zip")}:
        return f"; did you mean its parent {root.parent}?"
    return ""


def vinyals_splits(data: dict, root: Path, lists: Optional[Path] = None) -> dict:
    """``{"train", "validation", "test"}`` :class:`ClassImages` of the Vinyals et al. (2016) split
    (1,028 / 172 / 423 characters, as Prototypical Networks and most later papers use it), taken by
    name from both official splits in ``data`` (:func:`load_omniglot` of ``root``), in list order.

    ``lists`` is the folder of ``omniglot_vinyals_{train,val,test}.txt`` (default: the shipped
    :data:`SPLIT_LISTS`). Every class keeps the smallest image count of either official split (with a
    warning naming the class that sets it when the two differ). A listed class that the data lacks
    is a :class:`DataError` naming it.
    """
    lists = SPLIT_LISTS if lists is None else Path(lists)
    parts = [data[name] for name in SPLITS]
    counts = [part.images.shape[1] for part in parts]
    per_class, shortest = min(zip(counts, (part.fewest for part in parts)))
    if per_class < max(counts):
        warnings.warn(
            f"the Vinyals split takes classes from both folders, and {shortest} holds {per_class} images: "
            f"every class keeps only its first {per_class}, not {max(counts)}",
            stacklevel=2,
        )
    images = torch.cat([part.images[:, :per_class] for part in parts])
    names = [name for part in parts for name in part.names]
    alphabets = [alphabet for part in parts for alphabet in part.alphabets]
    index = {name: i for i, name in enumerate(names)}
    splits = {}
    for split, suffix in VINYALS.items():
        path = lists / f"omniglot_vinyals_{suffix}.txt"
        wanted = class_list(path)
        missing = [name for name in wanted if name not in index]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(
                f"the Vinyals et al. {suffix} split ({path.name}) lists {missing[0]}{more}, which is in "
                f"neither images_background nor images_evaluation under {root}; "
                f"{flag('omniglot_split')} background reads any alphabets"
            )
        keep = [index[name] for name in wanted]
        splits[split] = ClassImages(images[keep], wanted, tuple(alphabets[i] for i in keep), shortest)
    return splits
