"""Keep freed memory in the process instead of returning it to the kernel after every iteration."""

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Ask glibc's ``malloc`` to serve large blocks from its heap and not to trim it.

    By default glibc maps every block above 32 MiB (at most) with ``mmap`` and unmaps it when freed,
    so each meta-iteration that allocates and frees large activations (the vectorised engine on the
    conv net: ~1 GiB per iteration at 5-way 5-shot, meta-batch 32) pays page faults to get the
    memory back: measured 8.9 s of system time per iteration against 0.25 s with this setting,
    at an unchanged 5.5 s of user time. The price is that the resident set stays at its peak.
    Returns whether the setting was applied (``False`` off Linux/glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 2**30) and libc.mallopt(M_TRIM_THRESHOLD, 2**62))
    except (OSError, AttributeError):
        return False
