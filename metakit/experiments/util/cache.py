"""The user's metakit cache folder (no torch import: the command line reads it at start-up)."""

import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple


def user_cache() -> Path:
    """``$METAKIT_CACHE`` if set, else ``metakit`` in ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    if os.environ.get("METAKIT_CACHE"):
        return Path(os.environ["METAKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metakit"


def unwritable(path: Path) -> Optional[str]:
    """Why folder ``path`` cannot be created or written (a phrase), or ``None`` if it can."""
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def compile_cache() -> Tuple[Path, Optional[str]]:
    """``(folder, warning)``: where ``torch.compile`` caches compiled code, ``CACHE/torch-compile``
    (:func:`user_cache`), or a folder in the temporary directory when that one cannot be written;
    ``warning`` (one line) then says so, else it is ``None``."""
    try:
        wanted = user_cache() / "torch-compile"
        problem = unwritable(wanted)
    except RuntimeError as err:  # Path.home() without a home directory
        wanted, problem = "the cache folder", str(err)
    if problem is None:
        return wanted, None
    fallback = Path(tempfile.gettempdir()) / f"metakit-{os.getuid()}" / "torch-compile"
    return fallback, (
        f"cannot use {wanted} for compiled code ({problem}); using {fallback} instead "
        "(set METAKIT_CACHE to a writable folder)"
    )
