"""MAML and first-order MAML on learn2learn's primitives."""

from typing import Sequence

import torch

from metakit._l2l import learn2learn as l2l
from metakit.wrappers.base import Objective, adapt_module, adaptable_names, parameter_names, step_kwargs
from metakit.wrappers.rules import scaled_updates


class MAML(l2l.algorithms.MAML):
    """Model-Agnostic Meta-Learning, a drop-in for ``learn2learn.algorithms.MAML``.

    It is learn2learn's MAML (``clone()`` copies the model with learn2learn's ``clone_module``;
    ``adapt(loss)`` takes one differentiable SGD step with ``update_module``), plus metakit's
    learner contract (:class:`~metakit.wrappers.base.MetaLearner`: ``objective``,
    ``adapted_names``, ``inner_updates``, ``describe``) so that every engine applies the same rule,
    and the inner-step count :attr:`step` that a model with per-step state needs (see
    :mod:`metakit.wrappers.base`): ``adapt`` advances it, and a :class:`~metakit.wrappers.base.MetaOnly`
    part of the model (per-step batch norm) is not adapted.

    Args:
        model: any ``nn.Module``.
        lr: inner-loop (fast adaptation) learning rate α.
        first_order: use first-order MAML (do not differentiate through the inner gradient).
        allow_unused, allow_nograd: as in learn2learn.

    Example::

        maml = MAML(model, lr=0.01)
        learner = maml.clone()
        learner.adapt(loss_fn(learner(x_support), y_support))
        loss_fn(learner(x_query), y_query).backward()

    Reference: Finn et al., "Model-Agnostic Meta-Learning", ICML 2017, arXiv:1703.03400.
    """

    objective = Objective.UNROLLED

    def __init__(self, model, lr, first_order=False, allow_unused=None, allow_nograd=False):
        super().__init__(model, lr, first_order, allow_unused, allow_nograd)
        self.step = 0
        """Inner steps this learner has taken (``adapt`` advances it; a clone starts at 0)."""

    def forward(self, *args, **kwargs):
        """Run the wrapped model (telling a model that takes it the inner :attr:`step`)."""
        return self.module(*args, **{**step_kwargs(self.module, self.step), **kwargs})

    @property
    def adapted_names(self) -> tuple:
        """Every parameter of the model adapts (but :class:`~metakit.wrappers.base.MetaOnly` parts)."""
        return adaptable_names(self.module)

    def adapt(self, loss, first_order=None, allow_unused=None, allow_nograd=None) -> None:
        """learn2learn's ``adapt``: one differentiable SGD step on ``loss``; advances :attr:`step`.
        A model with :class:`~metakit.wrappers.base.MetaOnly` parts adapts the other parameters
        alone (learn2learn's step would move every parameter)."""
        if len(self.adapted_names) == len(parameter_names(self.module)):
            super().adapt(loss, first_order, allow_unused, allow_nograd)
        else:
            pick = lambda value, default: default if value is None else value  # noqa: E731
            adapt_module(
                self.module,
                loss,
                self.inner_updates,
                self.step,
                pick(first_order, self.first_order),
                self.adapted_names,
                pick(allow_unused, self.allow_unused),
                pick(allow_nograd, self.allow_nograd),
            )
        self.step += 1

    def clone(self, first_order=None, allow_unused=None, allow_nograd=None) -> "MAML":
        """A differentiable copy of the wrapped model, ready for ``adapt``."""
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return MAML(
            l2l.clone_module(self.module),
            lr=self.lr,
            first_order=pick(first_order, self.first_order),
            allow_unused=pick(allow_unused, self.allow_unused),
            allow_nograd=pick(allow_nograd, self.allow_nograd),
        )

    def inner_updates(self, grads: Sequence[torch.Tensor], step: int) -> list:
        """The inner-loop step ``α·g`` for each gradient (subtracted from the parameters)."""
        return scaled_updates(grads, [self.lr] * len(grads))

    def describe(self) -> str:
        """Nothing is learned besides the model."""
        return ""
