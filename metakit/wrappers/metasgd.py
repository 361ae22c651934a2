"""Meta-SGD: MAML with a learned inner learning rate for every parameter entry."""

from typing import Sequence

import torch
from torch import nn

from metakit.wrappers.base import Learner, adaptable_names
from metakit.wrappers.lslr import initial_rates
from metakit.wrappers.rules import scaled_updates


class MetaSGD(Learner):
    """Meta-SGD: the inner step is ``α_i ⊙ ∇_i L_support(θ)``, with a learned rate tensor ``α_i`` of
    the same shape as each adapted parameter tensor ``θ_i`` (all but
    :class:`~metakit.wrappers.base.MetaOnly` parts).

    The meta-parameters (``parameters()``) are the model initialisation and the rates; one outer
    optimizer trains them together. The rates start at ``lr``. With ``rate_form="signed"`` they are
    ``lrs``, unconstrained in sign, as in the paper and named as in
    ``learn2learn.algorithms.MetaSGD`` (whose state dicts load into this one); with ``"log"`` they
    are stored as ``log_lrs`` = log α (positive rates, moved by ratios). The same rates serve every
    inner step.

    It offers learn2learn's ``clone()`` / ``adapt(loss)`` surface: a clone shares the rate
    parameters with its parent, so the meta-gradient reaches them through every clone.

    Args:
        model: any ``nn.Module``.
        lr: initial value of every inner learning rate.
        first_order: do not differentiate through the inner gradients (the rates still get a
            gradient, through the step they scale).
        rate_form: ``"signed"`` (the default: the paper's and learn2learn's parameters) or ``"log"``.

    Example::

        metasgd = MetaSGD(model, lr=0.01)
        learner = metasgd.clone()
        learner.adapt(loss_fn(learner(x_support), y_support))
        loss_fn(learner(x_query), y_query).backward()   # grads for the model and the rates

    Reference: Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
    2017, arXiv:1707.09835.
    """

    def __init__(self, model: nn.Module, lr: float, first_order: bool = False, rate_form: str = "signed"):
        super().__init__(model, lr, first_order)
        self.rate_form = rate_form
        named = dict(model.named_parameters())
        adapted = [named[name] for name in adaptable_names(model)]  # those the inner loop steps
        rates = nn.ParameterList(initial_rates(p.detach(), lr, rate_form) for p in adapted)
        setattr(self, "log_lrs" if rate_form == "log" else "lrs", rates)

    def rates(self) -> list:
        """The rate tensors α_i, one per parameter tensor (``exp`` of ``log_lrs`` in the log form)."""
        return [r.exp() for r in self.log_lrs] if self.rate_form == "log" else list(self.lrs)

    def inner_updates(self, grads: Sequence[torch.Tensor], step: int) -> list:
        """The inner-loop step ``α_i ⊙ g_i`` for each gradient (the same at every step)."""
        return scaled_updates(grads, self.rates())

    def describe(self) -> str:
        """One line on the learned rates α: their range and mean over all entries."""
        rates = torch.cat([r.detach().reshape(-1) for r in self.rates()])
        return f"learned Meta-SGD rates {rates.min():.4f}..{rates.max():.4f} (mean {rates.mean():.4f})"
