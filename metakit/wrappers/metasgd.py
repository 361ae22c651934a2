"""Meta-SGD: MAML with a learned inner learning rate for every parameter entry."""

from typing import Optional, Sequence

import torch
from torch import nn

from metakit._l2l import learn2learn as l2l
from metakit.wrappers.base import adapt_module
from metakit.wrappers.rules import scaled_updates


class MetaSGD(nn.Module):
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
        lrs: rate tensors to use instead of new ones (``clone`` passes its parent's).

    Example::

        metasgd = MetaSGD(model, lr=0.01)
        learner = metasgd.clone()
        learner.adapt(loss_fn(learner(x_support), y_support))
        loss_fn(learner(x_query), y_query).backward()   # grads for the model and the rates

    Reference: Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
    2017, arXiv:1707.09835.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        first_order: bool = False,
        lrs: Optional[nn.ParameterList] = None,
    ):
        super().__init__()
        self.module = model
        self.lr = lr
        self.first_order = first_order
        if lrs is None:
            rates = (torch.full_like(p.detach(), float(lr)) for p in model.parameters())
            lrs = nn.ParameterList(nn.Parameter(r) for r in rates)
        self.lrs = lrs

    def forward(self, *args, **kwargs):
        """Run the wrapped model."""
        return self.module(*args, **kwargs)

    def clone(self, first_order: Optional[bool] = None) -> "MetaSGD":
        """A differentiable copy of the model that shares this wrapper's rates."""
        return MetaSGD(
            l2l.clone_module(self.module),
            self.lr,
            first_order=self.first_order if first_order is None else first_order,
            lrs=self.lrs,
        )

    def inner_updates(self, grads: Sequence[torch.Tensor], step: int) -> list:
        """The inner-loop step ``α_i ⊙ g_i`` for each gradient (the same at every step)."""
        return scaled_updates(grads, list(self.lrs))

    def adapt(self, loss: torch.Tensor, first_order: Optional[bool] = None) -> None:
        """One inner step on ``loss``, in place on this learner."""
        first_order = self.first_order if first_order is None else first_order
        adapt_module(self.module, loss, self.inner_updates, 0, first_order)

    def describe_rates(self) -> str:
        """One line on the learned rates: their range and mean over all entries."""
        rates = torch.cat([r.detach().reshape(-1) for r in self.lrs])
        return f"learned Meta-SGD rates {rates.min():.4f}..{rates.max():.4f} (mean {rates.mean():.4f})"
