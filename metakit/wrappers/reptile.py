"""Reptile on learn2learn's ``clone_module``."""

import torch
from torch import nn

from metakit.wrappers.base import Learner, Objective


def cycling_block(step: int, size: int, total: int) -> list:
    """Indices of the ``step``-th block of ``size`` points when blocks are taken in turn from
    ``total`` points, wrapping around: ``step·size … step·size + size − 1``, each modulo ``total``."""
    return [(step * size + j) % total for j in range(size)]


class Reptile(Learner):
    """Reptile (Nichol et al., 2018): move the initialisation toward task-adapted weights.

    Its objective is :attr:`Objective.INTERPOLATION`: ``clone()`` returns a detached copy of the
    model; ``adapt(loss)`` takes one plain SGD step on it. After adapting a batch of tasks,
    :func:`metakit.wrappers.rules.reptile_gradient` gives ``θ − mean φ̃``, which the engines write
    into ``.grad``: SGD with learning rate ε on
    it is exactly θ ← θ + ε (mean φ̃ − θ), and any other optimizer (e.g. Adam) works too.

    Args:
        model: any ``nn.Module``.
        lr: inner-loop SGD learning rate.
        all_points: in meta-training, inner steps train on all of a task's points (support and
            query) in mini-batches of the support size, as in the paper, instead of on the support
            set alone (see :meth:`inner_points`). Adaptation at evaluation uses the support set.

    Example::

        reptile = Reptile(model, lr=0.02)
        learner = reptile.clone()
        for _ in range(5):
            learner.adapt(loss_fn(learner(x), y))

    Reference: Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms",
    arXiv:1803.02999.
    """

    objective = Objective.INTERPOLATION

    def __init__(self, model: nn.Module, lr: float, all_points: bool = False):
        super().__init__(model, lr, first_order=True)
        self.all_points = all_points

    def inner_points(self, task, step: int) -> tuple:
        """``(x, y)`` that meta-training's inner step ``step`` trains on, for one task (tensors
        without the task dimension): its support points, or with ``all_points`` the ``step``-th
        block of K = support-size points of support + query, in turn (:func:`cycling_block`)."""
        if not self.all_points:
            return task.x_support, task.y_support
        x = torch.cat([task.x_support, task.x_query])
        y = torch.cat([task.y_support, task.y_query])
        index = torch.tensor(cycling_block(step, task.x_support.shape[0], x.shape[0]), device=x.device)
        return x[index], y[index]
