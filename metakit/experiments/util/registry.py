"""Name → object tables that load their entries on first use.

An entry is registered as a ``"module:attribute"`` path, so listing the names (for ``--help`` and
option choices) imports nothing; user code can also register an object directly.
"""

import importlib
from typing import Any, Dict, Union


class Registry:
    """A table of named entries, each an object or a lazily imported ``"module:attribute"`` path.

    Args:
        noun: what the entries are, for error messages (``"task family"``, ``"method"``).
        entries: the built-in entries.
    """

    def __init__(self, noun: str, entries: Dict[str, Union[str, Any]]):
        self.noun = noun
        self._entries = dict(entries)

    def names(self) -> tuple:
        """The registered names, in registration order (no import happens)."""
        return tuple(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        """The entry called ``name``; an unknown name is a ``ValueError`` listing the known ones."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.noun} {name!r}; choose from {', '.join(self._entries)}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry

    def register(self, name: str, entry: Any, replace: bool = False) -> None:
        """Add ``entry`` under ``name``; re-registering a name needs ``replace=True``."""
        if name in self._entries and not replace:
            raise ValueError(f"{self.noun} {name!r} is already registered (pass replace=True)")
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and user code that registered a temporary entry)."""
        self._entries.pop(name, None)
