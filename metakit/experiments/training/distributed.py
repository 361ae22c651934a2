"""One meta-batch over several processes (``torchrun``): who this process is, its share of the
tasks, and the few collectives a training step needs.

Every process samples the same global task batch from the same seeded stream and adapts its own
contiguous slice of it; the meta-gradients of the slices are then summed, weighted by slice size,
into the gradient of the mean over the global batch. Rank 0 alone reads and writes the run folder;
the other processes receive the configuration and the training state from it.
"""

import contextlib
import io
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (a single process by default)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def writer(self) -> bool:
        """Whether this process reads and writes the run folder (rank 0)."""
        return self.rank == 0


def world() -> World:
    """This process's place, from the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``); a single process when ``WORLD_SIZE`` is unset or 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def slice_bounds(batch: int, rank: int, size: int) -> tuple:
    """``(start, stop)`` of ``rank``'s contiguous share of ``batch`` tasks; the first
    ``batch % size`` ranks take one task more."""
    base, extra = divmod(batch, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@contextlib.contextmanager
def process_group(world: World):
    """The default process group of ``world`` (from ``torchrun``'s ``MASTER_ADDR``/``MASTER_PORT``),
    destroyed on exit. CPU tensors travel over gloo and, where CUDA exists, CUDA tensors over NCCL.

    ``torchrun`` keeps one key-value store across the restarts of a job, so each attempt uses keys
    of its own: otherwise a restarted process can read the address of a dead one and fail to connect.
    """
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    store, _, _ = next(dist.rendezvous("env://", world.rank, world.size))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"metakit/attempt-{attempt}", store)
    dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def share(world: World, work: Callable[[], object]):
    """``work()`` run on rank 0 alone; every rank gets its result, with tensors on the CPU.

    If ``work`` raises, every rank raises that exception, so that all processes stop together.
    """
    if world.size == 1:
        return work()
    box = [None]
    if world.writer:
        try:
            buffer = io.BytesIO()
            torch.save(work(), buffer)
            box = [buffer.getvalue()]
        except Exception as err:  # handed to the other ranks, then raised here too
            box = [err]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return torch.load(io.BytesIO(box[0]), map_location="cpu", weights_only=True)


@torch.no_grad()
def broadcast_parameters(params: Iterable[torch.Tensor]) -> None:
    """Overwrite every rank's ``params`` with rank 0's."""
    for p in params:
        dist.broadcast(p.detach(), src=0)


@torch.no_grad()
def all_reduce_grads(
    params: Iterable[torch.Tensor], local_size: int, global_size: int, loss: float = 0.0, stop: bool = False
) -> tuple:
    """Turn every rank's meta-gradient of its slice into the meta-gradient of the global batch.

    Each rank's ``.grad`` is the gradient of the mean over its ``local_size`` tasks; the result,
    written into ``.grad`` on every rank, is their sum weighted by ``local_size / global_size``:
    the gradient of the mean over all ``global_size`` tasks. A missing ``.grad`` counts as zeros;
    it stays missing when it is missing on every rank (so that Adam skips that parameter, as in
    one process). ``loss`` is reduced the same way and a stop request by any rank is shared, all in
    one collective. Returns ``(global mean loss, whether any rank asked to stop)``.
    """
    params = list(params)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    like = grads[0]
    weighted = torch.cat([*(g.reshape(-1).to(like.dtype) for g in grads), like.new_tensor([loss])])
    flags = like.new_tensor([float(stop), *(float(p.grad is not None) for p in params)])
    buffer = torch.cat([weighted * (local_size / global_size), flags])
    dist.all_reduce(buffer)
    *values, total, shared = buffer.split([*(p.numel() for p in params), 1, len(flags)])
    for p, value, has_grad in zip(params, values, shared[1:].tolist()):
        p.grad = value.view_as(p).to(p.dtype) if has_grad else None
    return total.item(), shared[0].item() > 0


@torch.no_grad()
def all_reduce_mean(value: torch.Tensor, local_size: int, global_size: int) -> torch.Tensor:
    """The mean over all ``global_size`` tasks of a value that is, on every rank, the mean over its
    ``local_size`` tasks (the same on every rank)."""
    total = value * (local_size / global_size)
    dist.all_reduce(total)
    return total
