"""Class-by-class image sets, the data cache folder, atomic ``.pt`` caching of image sets, and what
the readers share: a restricted unpickler for data pickles and shipped class lists."""

import hashlib
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Optional

import torch

from metakit.experiments.util.cache import user_cache
from metakit.experiments.util.errors import MetakitError


class DataError(MetakitError):
    """Missing or malformed data; the message is one line naming the file or folder and what is expected."""


_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes in protocol 2 pickles (Python 2 era files)
    *((f"numpy.{core}.{module}", name) for core in ("core", "_core") for module, name in (
        ("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"),
    )),
}  # fmt: skip


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler for data files: builtin containers and numpy arrays only; any other global
    (a function or class that could run code) is refused with an ``UnpicklingError``."""

    def find_class(self, module: str, name: str):
        """The allowed numpy array constructors; refuse anything else."""
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (only arrays and containers)")


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its type's name if it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def read_data_pickle(path: Path):
    """The object in the pickle ``path``, read with :class:`ArrayUnpickler` (Python 2 strings as
    latin-1); a one-line :class:`DataError` naming the file if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return ArrayUnpickler(handle, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"cannot read the pickle {path}: {one_line(exc)}") from exc


def class_list(path: Path) -> tuple:
    """The class names of a shipped class-list file, one a line (blank lines and ``#`` comments skipped)."""
    lines = (line.strip() for line in Path(path).read_text().splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


@dataclass(frozen=True, eq=False)
class ClassImages:
    """Images grouped by class: ``images[c, i]`` is the ``i``-th image of class ``c``.

    ``images`` is uint8 ``[classes, per_class, channels, height, width]``, any number of channels
    and any size (the glyph set and Omniglot: one channel, 255 for ink and 0 for background);
    ``names`` and ``alphabets`` hold one string per class (its name and its alphabet or script).
    Every class has ``per_class`` images; where a reader cut the classes to the count of the one
    with the fewest, ``fewest`` says where that class is (its folder), for messages ('' if unknown).
    """

    images: torch.Tensor
    names: tuple
    alphabets: tuple
    fewest: str = ""

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 5:
            raise ValueError(
                f"images must be uint8 [classes, per_class, channels, height, width], got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        if not len(self.names) == len(self.alphabets) == self.images.shape[0]:
            raise ValueError(
                f"{self.images.shape[0]} classes but {len(self.names)} names "
                f"and {len(self.alphabets)} alphabets"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple:
        """``(channels, height, width)`` of every image."""
        return tuple(self.images.shape[2:])

    def select(self, alphabets: Collection[str]) -> "ClassImages":
        """The classes whose alphabet is in ``alphabets`` (a name or a collection of names), in order."""
        wanted = {alphabets} if isinstance(alphabets, str) else set(alphabets)
        keep = [i for i, alphabet in enumerate(self.alphabets) if alphabet in wanted]
        return ClassImages(
            self.images[keep],
            tuple(self.names[i] for i in keep),
            tuple(self.alphabets[i] for i in keep),
            self.fewest,
        )

    def alphabet_names(self) -> list:
        """The distinct alphabets, sorted."""
        return sorted(set(self.alphabets))


def cache_dir(data_root: Optional[Path] = None) -> Path:
    """Where caches go: ``data_root`` if given, else ``$METAKIT_CACHE``, else the user cache folder."""
    return Path(data_root) if data_root is not None else user_cache()


def files_fingerprint(tag: str, paths) -> str:
    """A hash of ``tag`` and every file's path, size and modification time, in order (a cache built
    from the files is stale when this changes)."""
    digest = hashlib.sha256(tag.encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"\n{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def split_cache_path(name: str, version: int, root: Path) -> Path:
    """Where the decoded splits of the data set ``name`` under ``root`` are cached:
    ``{cache_dir()}/{name}/{name}-v{version}-{hash of root}.pt``."""
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return cache_dir(None) / name / f"{name}-v{version}-{key}.pt"


def to_payload(data: ClassImages) -> dict:
    """A dict of tensors, strings and lists that ``torch.load(weights_only=True)`` can read back."""
    return {"images": data.images.contiguous(), "names": list(data.names), "alphabets": list(data.alphabets)}


def from_payload(payload) -> Optional[ClassImages]:
    """The inverse of :func:`to_payload`; ``None`` if ``payload`` is not a well-formed image set."""
    try:
        return ClassImages(payload["images"], tuple(payload["names"]), tuple(payload["alphabets"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def save_atomic(path: Path, payload: dict) -> bool:
    """Write ``payload`` with ``torch.save`` to a temporary file, fsync it and rename it onto ``path``.

    Readers never see a half-written file. A cache that cannot be written (read-only folder, full disk)
    only warns and returns False: the caller still has the data in memory.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as handle:
            tmp = handle.name
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return True
    except OSError as exc:
        warnings.warn(f"could not write the cache {path}: {exc}", stacklevel=2)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return False


def load_payload(path: Path):
    """``torch.load(path, weights_only=True)``; ``None`` if the file is missing, truncated or corrupt."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # any unreadable cache is rebuilt, whatever the pickle or zip layer raised
        return None


def load_split_cache(path: Path, fingerprint: str, names) -> Optional[dict]:
    """The splits ``names`` that :func:`save_split_cache` wrote to ``path`` with this
    ``fingerprint``: ``{name: (ClassImages, extras)}``, ``extras`` being the entry's other keys;
    ``None`` if the file is missing, unreadable, stale or malformed (the caller then rebuilds it)."""
    payload = load_payload(path)
    if not isinstance(payload, dict) or payload.get("fingerprint") != fingerprint:
        return None
    splits = {}
    for name in names:
        entry = payload.get(name)
        data = from_payload(entry)
        if data is None:
            return None
        splits[name] = (data, {key: value for key, value in entry.items() if key not in to_payload(data)})
    return splits


def save_split_cache(path: Path, fingerprint: str, splits: dict, extras: Optional[dict] = None) -> bool:
    """Cache the :class:`ClassImages` ``splits`` (``{name: data}``) with their ``fingerprint`` and,
    per split, the plain values in ``extras[name]`` (see :func:`save_atomic`)."""
    extras = extras or {}
    payload = {name: {**to_payload(data), **extras.get(name, {})} for name, data in splits.items()}
    return save_atomic(path, {"fingerprint": fingerprint, **payload})


def cached_splits(path: Path, fingerprint: str, names, read, check) -> dict:
    """``{name: ClassImages}`` of the splits ``names``: from the cache at ``path`` if it was written
    with this ``fingerprint``, else from ``read()`` (``{name: (ClassImages, name of its smallest
    class)}``), which is then cached. ``check(name, data, smallest)`` runs on every split either way,
    before anything is written, so data that fails it is never cached."""
    cached = load_split_cache(path, fingerprint, names)
    fresh = cached is None or not all(isinstance(extra.get("smallest"), str) for _, extra in cached.values())
    splits = read() if fresh else {name: (data, extra["smallest"]) for name, (data, extra) in cached.items()}
    for name, (data, smallest) in splits.items():
        check(name, data, smallest)
    if fresh:
        data = {name: data for name, (data, _) in splits.items()}
        save_split_cache(path, fingerprint, data, {name: {"smallest": s} for name, (_, s) in splits.items()})
    return {name: data for name, (data, _) in splits.items()}
