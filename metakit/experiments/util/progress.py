"""Progress of long phases on stderr: a bar on a terminal, nothing in a log file or when silenced
(``metakit train --quiet``, ``reproduce --quiet``)."""

import contextlib
import contextvars
import sys

from tqdm import tqdm

_SILENCED = contextvars.ContextVar("metakit_progress_silenced", default=False)


def on_terminal() -> bool:
    """Whether stderr is a terminal (where a carriage-return bar reads well; in a log it does not)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def shown() -> bool:
    """Whether progress bars are drawn now: on a terminal, outside :func:`silenced`."""
    return on_terminal() and not _SILENCED.get()


@contextlib.contextmanager
def silenced(active: bool = True):
    """Within this block (if ``active``), :func:`bar` draws nothing."""
    token = _SILENCED.set(True) if active else None
    try:
        yield
    finally:
        if token is not None:
            _SILENCED.reset(token)


def bar(total: int, desc: str, unit: str = "it") -> tqdm:
    """A progress bar of ``total`` units on stderr that vanishes when closed, drawn only where
    :func:`shown` (else a silent stand-in with the same methods)."""
    return tqdm(
        total=total, desc=desc, unit=unit, disable=not shown(), leave=False, file=sys.stderr, mininterval=0.5
    )
