"""The user's metakit cache folder (no torch import: the command line reads it at start-up)."""

import os
from pathlib import Path


def user_cache() -> Path:
    """``$METAKIT_CACHE`` if set, else ``metakit`` in ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    if os.environ.get("METAKIT_CACHE"):
        return Path(os.environ["METAKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metakit"
