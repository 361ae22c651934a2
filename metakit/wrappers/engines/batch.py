"""What every engine shares: the task batch, gradient accumulation and the joint objective."""

from typing import Callable, NamedTuple, Sequence

import torch


class TaskBatch(NamedTuple):
    """Support and query tensors of a batch of tasks, each of shape ``[tasks, points, ...]``."""

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor

    def task(self, i: int) -> "TaskBatch":
        """The i-th task alone (no task dimension)."""
        return TaskBatch(*(t[i] for t in self))

    def chunks(self, size: int) -> list:
        """The batch as consecutive batches of ``size`` tasks (the last may have fewer)."""
        return [TaskBatch(*(t[i : i + size] for t in self)) for i in range(0, self.num_tasks, size)]

    @property
    def num_tasks(self) -> int:
        """Number of tasks in the batch (the leading dimension)."""
        return self.x_support.shape[0]


def accumulate_grad(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
    """Add ``grads`` into ``.grad`` of ``params``, as ``backward()`` would."""
    for p, g in zip(params, grads):
        p.grad = g.clone() if p.grad is None else p.grad + g


def joint_backward(algo, batch: TaskBatch, loss_fn: Callable) -> float:
    """The ``JOINT`` and ``TRANSFER`` objectives: back-propagate the loss of the un-adapted model on
    all points of all tasks against the batch's labels (a ``TRANSFER`` batch's are global); return
    it."""
    x = torch.cat([batch.x_support, batch.x_query], 1).flatten(0, 1)
    y = torch.cat([batch.y_support, batch.y_query], 1).flatten(0, 1)
    loss = loss_fn(algo(x), y)
    loss.backward()
    return loss.item()


def refuse_frozen(algo, backend: str) -> None:
    """A :class:`ValueError` naming the model's frozen parameters (``requires_grad=False``), which
    ``backend`` would adapt anyway (func) or cannot handle (higher); the l2l backend leaves them
    as they are with ``allow_nograd=True``, as learn2learn does."""
    frozen = [name for name, p in algo.module.named_parameters() if not p.requires_grad]
    if frozen:
        raise ValueError(
            f"the {backend} backend does not support frozen parameters ({', '.join(frozen)}); use the "
            "l2l backend with allow_nograd=True"
        )
