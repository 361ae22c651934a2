"""A learner that adapts a detached copy of a model by plain SGD (no meta graph)."""

from typing import Sequence

import torch
from torch import nn

from metakit._l2l import learn2learn as l2l
from metakit.wrappers.rules import scaled_updates


class SGDLearner(nn.Module):
    """Base of Reptile and the pretrain baseline: ``clone()`` detaches, ``adapt(loss)`` is one SGD step.

    Args:
        model: any ``nn.Module``.
        lr: SGD learning rate of the inner loop / fine-tuning.
    """

    def __init__(self, model: nn.Module, lr: float):
        super().__init__()
        self.module = model
        self.lr = lr

    def forward(self, *args, **kwargs):
        """Run the wrapped model."""
        return self.module(*args, **kwargs)

    def clone(self) -> "SGDLearner":
        """A copy of the model detached from the initialisation (learn2learn's ``clone_module``)."""
        copy = l2l.clone_module(self.module)
        l2l.detach_module(copy, keep_requires_grad=True)
        return type(self)(copy, self.lr)

    def adapt(self, loss: torch.Tensor) -> None:
        """One SGD step on ``loss``, in place on this learner."""
        params = list(self.module.parameters())
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for param, update in zip(params, self.inner_updates(grads, 0)):
                param.sub_(update)

    def inner_updates(self, grads: Sequence[torch.Tensor], step: int) -> list:
        """The step ``α·g`` for each gradient."""
        return scaled_updates(grads, [self.lr] * len(grads))
