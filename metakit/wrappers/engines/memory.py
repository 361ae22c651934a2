"""How much memory a computation takes and how much the device has left, for engines that size
their work to fit (Linux and CUDA; ``None`` where it cannot be measured)."""

import ctypes
import re
from typing import Callable, Optional

import torch


def peak_memory_growth(fn: Callable[[], None], device: torch.device = torch.device("cpu")) -> Optional[int]:
    """Bytes by which the peak memory in use grows while ``fn()`` runs, or ``None`` (``fn`` not
    run) where it cannot be measured (a CPU off Linux).

    On the CPU: the process's peak resident set. Freed heap memory is first returned to the system
    (glibc ``malloc_trim``) so that it cannot hide new allocations, and the kernel's high-water
    mark is reset to the current resident set (``/proc/self/clear_refs``). On CUDA: the caching
    allocator's peak of allocated bytes on ``device``.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    try:
        ctypes.CDLL(None).malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_kib("/proc/self/status", "VmRSS")
    except (OSError, AttributeError):  # not Linux with glibc: ``fn`` is not run
        return None
    fn()
    return max(0, _proc_kib("/proc/self/status", "VmHWM") - before)


def available_memory(device: torch.device = torch.device("cpu")) -> Optional[int]:
    """Bytes a computation on ``device`` can still allocate, or ``None`` where it cannot be read.

    On the CPU the kernel's estimate (``MemAvailable``, Linux), or less where the process's
    control group (a container) has a lower limit; on CUDA free device memory plus what torch's
    cache holds unused.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        available = _proc_kib("/proc/meminfo", "MemAvailable")
    except (OSError, AttributeError):
        return None
    group = _control_group_headroom()
    return available if group is None else min(available, group)


_CONTROL_GROUPS = (  # (limit, usage, statistics, reclaimable page-cache key): cgroup v2, then v1
    (
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory.current",
        "/sys/fs/cgroup/memory.stat",
        "inactive_file",
    ),
    (
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        "/sys/fs/cgroup/memory/memory.stat",
        "total_inactive_file",
    ),
)


def _control_group_headroom() -> Optional[int]:
    """Bytes left below this process's control-group memory limit (its inactive page cache
    counted as free), or ``None`` without a limit."""
    for limit_path, usage_path, stat_path, cache_key in _CONTROL_GROUPS:
        try:
            with open(limit_path) as f:
                limit = f.read().strip()
            with open(usage_path) as f:
                usage = int(f.read())
            with open(stat_path) as f:
                cache = re.search(rf"^{cache_key} (\d+)$", f.read(), re.M)
        except (OSError, ValueError):
            continue
        if not limit.isdigit() or int(limit) >= 2**60:  # "max", or v1's "no limit"
            return None
        return max(0, int(limit) - usage + (int(cache.group(1)) if cache else 0))
    return None


def _proc_kib(path: str, key: str) -> int:
    """A ``key: N kB`` line of a ``/proc`` file, in bytes."""
    with open(path) as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024
