"""Reptile on learn2learn's ``clone_module``."""

from typing import Sequence

import torch
from torch import nn

from metakit._l2l import learn2learn as l2l
from metakit.wrappers.functional import scaled_updates


class Reptile(nn.Module):
    """Reptile (Nichol et al., 2018): move the initialisation toward task-adapted weights.

    ``clone()`` returns a detached copy of the model; ``adapt(loss)`` takes one plain SGD step on
    it. After adapting a batch of tasks, :func:`metakit.wrappers.functional.reptile_gradient`
    gives ``θ − mean φ̃``, which the backends write into ``.grad``: SGD with learning rate ε on
    it is exactly θ ← θ + ε (mean φ̃ − θ), and any other optimizer (e.g. Adam) works too.

    Args:
        model: any ``nn.Module``.
        lr: inner-loop SGD learning rate.

    Example::

        reptile = Reptile(model, lr=0.02)
        learner = reptile.clone()
        for _ in range(5):
            learner.adapt(loss_fn(learner(x), y))

    Reference: Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms",
    arXiv:1803.02999.
    """

    def __init__(self, model: nn.Module, lr: float):
        super().__init__()
        self.module = model
        self.lr = lr

    def forward(self, *args, **kwargs):
        """Run the wrapped model."""
        return self.module(*args, **kwargs)

    def clone(self) -> "Reptile":
        """A copy of the model detached from the initialisation (Reptile needs no meta graph)."""
        copy = l2l.clone_module(self.module)
        l2l.detach_module(copy, keep_requires_grad=True)
        return Reptile(copy, self.lr)

    def adapt(self, loss: torch.Tensor) -> None:
        """One SGD step on ``loss``, in place on this learner."""
        params = list(self.module.parameters())
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for param, update in zip(params, self.inner_updates(grads, 0)):
                param.sub_(update)

    def inner_updates(self, grads: Sequence[torch.Tensor], step: int) -> list:
        """The inner-loop step ``α·g`` for each gradient."""
        return scaled_updates(grads, [self.lr] * len(grads))
