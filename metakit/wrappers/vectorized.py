"""The vectorised engine: every method over the whole task batch in one ``torch.func`` pass.

Per task, the inner loop is a pure function of the parameters (``functional_call`` + ``grad``);
``vmap`` runs it over the task dimension at once, and one ``backward()`` through the batched graph
gives the meta-gradient. The update rule is the algorithm's own ``inner_updates``, so the numbers
are those of the learn2learn and higher backends.

For small models the eager engine is bound by per-operation overhead (``vmap`` and ``grad`` add
tens of microseconds to every operation), not by arithmetic. ``compile=True`` hands the batched
meta-loss to ``torch.compile`` (Inductor); AOTAutograd compiles its backward too, which removes
that overhead and fuses the elementwise work, at the price of a one-off compilation per
(inner steps, derivative order, loss recording) combination.
"""

import warnings
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
        algo: a :class:`MAML`, :class:`MAMLEnhanced`, :class:`Reptile` or :class:`Pretrain`; its
            meta-parameters are used in place (the engine holds no copy).
        loss_fn: the task loss.
        compile: compile the MAML-family meta-loss and its backward with ``torch.compile``. Pays
            off on long runs only (a compilation takes seconds to a minute on CPU); if it
            fails, the engine warns and stays eager. Reptile, pretraining and
            :meth:`query_losses` always run eagerly.

    Models with buffers (e.g. batch-norm running statistics) are refused: their in-place
    updates cannot be vectorised over tasks.
    """

    def __init__(self, algo: torch.nn.Module, loss_fn: Callable = F.mse_loss, compile: bool = False):
        buffers = [name for name, _ in algo.module.named_buffers()]
        if buffers:
            raise ValueError(
                f"the func backend does not support models with buffers ({', '.join(buffers)}); "
                "use --backend l2l"
            )
        self.algo = algo
        self.loss_fn = loss_fn
        self.names = [name for name, _ in algo.module.named_parameters()]
        self._compiled = torch.compile(self.meta_losses, dynamic=False) if compile else None

    def task_loss(self, params: tuple, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of the model with ``params`` (ordered as :attr:`names`) on one task's points."""
        return self.loss_fn(functional_call(self.algo.module, dict(zip(self.names, params)), (x,)), y)

    def inner_step(self, params: tuple, x, y, step: int, first_order: bool) -> tuple:
        """One step of the algorithm's inner rule on one task's support points."""
        grads = grad(self.task_loss)(params, x, y)
        if first_order:
            grads = tuple(g.detach() for g in grads)
        return tuple(sgd_step(params, self.algo.inner_updates(grads, step)))

    def unroll(self, params: tuple, task: TaskBatch, steps: int, first_order: bool, record: Sequence[int]):
        """Adapt ``params`` to one task for ``steps`` inner steps.

        Returns the adapted parameters and the stacked query losses after each step count in
        ``record`` (0: before adapting).
        """
        losses = []
        for s in range(steps + 1):
            if s in record:
                losses.append(self.task_loss(params, task.x_query, task.y_query))
            if s < steps:
                params = self.inner_step(params, task.x_support, task.y_support, s, first_order)
        return params, torch.stack(losses)

    def meta_losses(self, batch: TaskBatch, steps: int, first_order: bool, every_step: bool) -> torch.Tensor:
        """Query losses ``[tasks, steps if every_step else 1]`` after adaptation from the model's
        own parameters, differentiable with respect to every meta-parameter."""
        theta = tuple(self.algo.module.parameters())
        record = range(1, steps + 1) if every_step else (steps,)

        def task_losses(*task):
            return self.unroll(theta, TaskBatch(*task), steps, first_order, record)[1]

        return vmap(task_losses)(*batch)

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
        losses = self._meta_losses(TaskBatch(*batch), steps, first_order, step_weights is not None)
        if step_weights is None:
            meta_loss = losses[:, -1].mean()
        else:
            weights = torch.as_tensor(step_weights, dtype=losses.dtype)
            meta_loss = (losses.mean(0) * weights).sum()
        meta_loss.backward()
        return losses[:, -1].mean().item()

    def _meta_losses(self, *args):
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except Exception as err:  # e.g. no C++ compiler: the eager engine gives the same numbers
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); using the eager engine")
                self._compiled = None
        return self.meta_losses(*args)

    def _reptile_backward(self, batch, steps):
        theta = tuple(self.algo.module.parameters())
        start = tuple(p.detach() for p in theta)

        def adapt(*task):
            return self.unroll(start, TaskBatch(*task), steps, True, (steps,))

        with torch.no_grad():
            adapted, query = vmap(adapt)(*batch)
        accumulate_grad(theta, reptile_gradient(start, [[a.mean(0) for a in adapted]]))
        return query.mean().item()

    @torch.no_grad()
    def query_losses(self, batch: TaskBatch, max_steps: int) -> torch.Tensor:
        """Query loss of every task after 0, 1, …, ``max_steps`` inner steps: ``[max_steps + 1, tasks]``.

        Adapts with the algorithm's own inner rule (first-order, no meta graph), for evaluation.
        """
        start = tuple(p.detach() for p in self.algo.module.parameters())

        def curve(*task):
            return self.unroll(start, TaskBatch(*task), max_steps, True, range(max_steps + 1))[1]

        return vmap(curve)(*batch).T
