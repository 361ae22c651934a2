"""Meta-SGD: MAML with a learned inner learning rate for every parameter entry."""

from typing import Sequence

import torch
from torch import nn

from metakit.wrappers.base import Learner
from metakit.wrappers.rules import scaled_updates


class MetaSGD(Learner):
    """Meta-SGD: the inner step is ``α_i ⊙ ∇_i L_support(θ)``, with a learned rate tensor ``α_i`` of
    the same shape as each parameter tensor ``θ_i``.

    The meta-parameters (``parameters()``) are the model initialisation and the rates (``lrs``,
    named as in ``learn2learn.algorithms.MetaSGD``, whose state dicts load into this one); one
    outer optimizer trains them together. The rates start at ``lr`` and are unconstrained in sign.
    The same rates serve every inner step.

    It offers learn2learn's ``clone()`` / ``adapt(loss)`` surface: a clone shares the rate
    parameters with its parent, so the meta-gradient reaches them through every clone.

    Args:
        model: any ``nn.Module``.
        lr: initial value of every inner learning rate.
        first_order: do not differentiate through the inner gradients (the rates still get a
            gradient, through the step they scale).

    Example::

        metasgd = MetaSGD(model, lr=0.01)
        learner = metasgd.clone()
        learner.adapt(loss_fn(learner(x_support), y_support))
        loss_fn(learner(x_query), y_query).backward()   # grads for the model and the rates

    Reference: Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
    2017, arXiv:1707.09835.
    """

    def __init__(self, model: nn.Module, lr: float, first_order: bool = False):
        super().__init__(model, lr, first_order)
        rates = (torch.full_like(p.detach(), float(lr)) for p in model.parameters())
        self.lrs = nn.ParameterList(nn.Parameter(r) for r in rates)

    def inner_updates(self, grads: Sequence[torch.Tensor], step: int) -> list:
        """The inner-loop step ``α_i ⊙ g_i`` for each gradient (the same at every step)."""
        return scaled_updates(grads, list(self.lrs))

    def describe(self) -> str:
        """One line on the learned rates: their range and mean over all entries."""
        rates = torch.cat([r.detach().reshape(-1) for r in self.lrs])
        return f"learned Meta-SGD rates {rates.min():.4f}..{rates.max():.4f} (mean {rates.mean():.4f})"
