"""The vectorised engine: every method over the whole task batch in one ``torch.func`` pass.

Per task, the inner loop is a pure function of the parameters (``functional_call`` + ``grad``);
``vmap`` runs it over the task dimension at once. The update rule is the algorithm's own
``inner_updates``, so the numbers are those of the learn2learn and higher backends.
"""

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from metakit.wrappers.backends import TaskBatch, accumulate_grad
from metakit.wrappers.functional import reptile_gradient, sgd_step
from metakit.wrappers.pretrain import Pretrain, joint_backward
from metakit.wrappers.reptile import Reptile


class VectorizedEngine:
    """Meta-gradients and adaptation for a batch of tasks, vectorised with ``torch.func.vmap``.

    Args:
        algo: a :class:`MAML`, :class:`MAMLEnhanced` or :class:`Reptile`; its meta-parameters
            are used in place (the engine holds no copy).
        loss_fn: the task loss.

    Models with buffers (e.g. batch-norm running statistics) are refused: their in-place
    updates cannot be vectorised over tasks.
    """

    def __init__(self, algo: torch.nn.Module, loss_fn: Callable = F.mse_loss):
        buffers = [name for name, _ in algo.module.named_buffers()]
        if buffers:
            raise ValueError(
                f"the func backend does not support models with buffers ({', '.join(buffers)}); "
                "use --backend l2l"
            )
        self.algo = algo
        self.loss_fn = loss_fn
        self.names = [name for name, _ in algo.module.named_parameters()]

    def _loss(self, params, x, y):
        return self.loss_fn(functional_call(self.algo.module, dict(zip(self.names, params)), (x,)), y)

    def _inner_step(self, params, x, y, step, first_order):
        grads = grad(self._loss)(params, x, y)
        if first_order:
            grads = tuple(g.detach() for g in grads)
        return tuple(sgd_step(params, self.algo.inner_updates(grads, step)))

    def _theta(self):
        return tuple(self.algo.module.parameters())

    def meta_backward(
        self,
        batch: TaskBatch,
        steps: int,
        first_order: Optional[bool] = None,
        step_weights: Optional[Sequence[float]] = None,
    ) -> float:
        """Same contract as :func:`metakit.wrappers.backends.meta_backward`."""
        if isinstance(self.algo, Pretrain):
            return joint_backward(self.algo, batch, self.loss_fn)
        if isinstance(self.algo, Reptile):
            return self._reptile_backward(batch, steps)
        if first_order is None:
            first_order = self.algo.first_order
        theta = self._theta()

        def task_losses(xs, ys, xq, yq):
            params, losses = theta, []
            for s in range(steps):
                params = self._inner_step(params, xs, ys, s, first_order)
                if step_weights is not None or s == steps - 1:
                    losses.append(self._loss(params, xq, yq))
            return torch.stack(losses)

        losses = vmap(task_losses)(*batch)  # [tasks, recorded steps]
        if step_weights is None:
            meta_loss = losses[:, -1].mean()
        else:
            weights = torch.as_tensor(step_weights, dtype=losses.dtype)
            meta_loss = (losses.mean(0) * weights).sum()
        meta_loss.backward()
        return losses[:, -1].mean().item()

    def _reptile_backward(self, batch, steps):
        theta = self._theta()
        start = tuple(p.detach() for p in theta)

        def adapt(xs, ys):
            params = start
            for s in range(steps):
                params = self._inner_step(params, xs, ys, s, first_order=True)
            return params

        adapted = vmap(adapt)(batch.x_support, batch.y_support)
        query = vmap(self._loss)(adapted, batch.x_query, batch.y_query)
        mean_adapted = [a.mean(0) for a in adapted]
        accumulate_grad(theta, reptile_gradient(start, [mean_adapted]))
        return query.mean().item()

    @torch.no_grad()
    def query_losses(self, batch: TaskBatch, max_steps: int) -> torch.Tensor:
        """Query loss of every task after 0, 1, …, ``max_steps`` inner steps: ``[max_steps + 1, tasks]``.

        Adapts with the algorithm's own inner rule (first-order, no meta graph), for evaluation.
        """
        start = tuple(p.detach() for p in self._theta())

        def curve(xs, ys, xq, yq):
            params, losses = start, [self._loss(start, xq, yq)]
            for s in range(max_steps):
                params = self._inner_step(params, xs, ys, s, first_order=True)
                losses.append(self._loss(params, xq, yq))
            return torch.stack(losses)

        return vmap(curve)(*batch).T
