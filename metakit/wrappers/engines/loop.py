"""Meta-gradients for a batch of tasks, from any algorithm, on the learn2learn or higher backend.

Every algorithm exposes ``module`` (the model), ``inner_updates(grads, step)`` and, for the
learn2learn backend, ``clone()`` / ``adapt(loss)``. :func:`meta_backward` fills ``.grad`` of the
algorithm's meta-parameters, so the trainer can step any ``torch.optim`` optimizer.

An algorithm whose inner loop adapts only some parameter tensors (e.g. ANIL, only the head) sets
an ``adapted_params`` attribute: their positions in ``module.parameters()``. ``inner_updates`` then
receives the gradients of those tensors alone and returns their steps; the other tensors keep their
values through the inner loop. Every backend honours it (see :func:`adapted_indices`).
"""

from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from metakit.wrappers.pretrain import Pretrain, joint_backward
from metakit.wrappers.reptile import Reptile
from metakit.wrappers.rules import reptile_gradient


class TaskBatch(NamedTuple):
    """Support and query tensors of a batch of tasks, each of shape ``[tasks, points, features]``."""

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor

    def task(self, i: int) -> "TaskBatch":
        """The i-th task alone (no task dimension)."""
        return TaskBatch(*(t[i] for t in self))

    @property
    def num_tasks(self) -> int:
        """Number of tasks in the batch (the leading dimension)."""
        return self.x_support.shape[0]


def meta_backward(
    algo: torch.nn.Module,
    batch: TaskBatch,
    steps: int,
    backend: str = "l2l",
    first_order: Optional[bool] = None,
    step_weights: Optional[Sequence[float]] = None,
    loss_fn: Callable = F.mse_loss,
) -> float:
    """Accumulate the meta-gradient of ``batch`` into ``.grad`` and return the mean query loss.

    Args:
        algo: a :class:`MAML`, :class:`MAMLEnhanced`, :class:`MetaSGD`, :class:`ANIL`,
            :class:`Reptile` or :class:`Pretrain` (whose gradient is that of its joint loss on all
            points, whatever the backend).
        batch: the tasks.
        steps: inner steps per task.
        backend: ``"l2l"`` (clone/adapt per task) or ``"higher"`` (differentiable optimizer);
            ``"func"`` is served by :class:`metakit.wrappers.engines.vectorized.VectorizedEngine`.
        first_order: override the algorithm's own setting (derivative-order annealing).
        step_weights: MAML++ multi-step loss, one weight per inner step; ``None`` uses the query
            loss after the last step alone.
        loss_fn: the task loss.

    The meta-loss is the mean over tasks of the (weighted) query loss after adaptation; the
    returned value is the unweighted query loss after the last step, for logging.
    """
    if isinstance(algo, Pretrain):
        return joint_backward(algo, batch, loss_fn)
    if isinstance(algo, Reptile):
        if backend == "higher":
            raise ValueError("reptile does not differentiate through the inner loop; use backend l2l or func")
        return _reptile_backward(algo, batch, steps, loss_fn)
    if first_order is None:
        first_order = algo.first_order
    if backend not in ("l2l", "higher"):
        raise ValueError(f"unknown backend {backend!r}: meta_backward serves 'l2l' and 'higher'")
    adapt_task = _adapt_l2l if backend == "l2l" else _adapt_higher
    total = 0.0
    for i in range(batch.num_tasks):
        task = batch.task(i)
        query_losses = adapt_task(algo, task, steps, first_order, loss_fn, want_all=step_weights is not None)
        if step_weights is None:
            meta_loss = query_losses[-1]
        else:
            meta_loss = sum(w * q for w, q in zip(step_weights, query_losses))
        (meta_loss / batch.num_tasks).backward()
        total += query_losses[-1].item()
    return total / batch.num_tasks


def _adapt_l2l(algo, task, steps, first_order, loss_fn, want_all):
    learner = algo.clone()
    losses = []
    for s in range(steps):
        learner.adapt(loss_fn(learner(task.x_support), task.y_support), first_order=first_order)
        if want_all or s == steps - 1:
            losses.append(loss_fn(learner(task.x_query), task.y_query))
    return losses


def _adapt_higher(algo, task, steps, first_order, loss_fn, want_all):
    import higher  # archived baseline backend: imported only when asked for

    # higher steps only the tensors its optimizer holds; it still differentiates the support loss
    # with respect to every parameter, and the callback passes the others' gradients on unused.
    adapted = adapted_indices(algo)
    params = list(algo.module.parameters())
    opt = torch.optim.SGD([params[i] for i in adapted], lr=1.0)
    losses = []
    with higher.innerloop_ctx(algo.module, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for s in range(steps):

            def transform(grads, s=s):
                chosen = [grads[i] for i in adapted]
                if first_order:
                    chosen = [g.detach() for g in chosen]
                full = list(grads)
                for i, update in zip(adapted, algo.inner_updates(chosen, s)):
                    full[i] = update
                return full

            diffopt.step(loss_fn(fmodel(task.x_support), task.y_support), grad_callback=transform)
            if want_all or s == steps - 1:
                losses.append(loss_fn(fmodel(task.x_query), task.y_query))
    return losses


def _reptile_backward(algo, batch, steps, loss_fn):
    adapted, total = [], 0.0
    for i in range(batch.num_tasks):
        task = batch.task(i)
        learner = algo.clone()
        for s in range(steps):
            x, y = algo.inner_points(task, s)
            learner.adapt(loss_fn(learner(x), y))
        with torch.no_grad():
            total += loss_fn(learner(task.x_query), task.y_query).item()
        adapted.append([p.detach() for p in learner.module.parameters()])
    theta = list(algo.module.parameters())
    accumulate_grad(theta, reptile_gradient([p.detach() for p in theta], adapted))
    return total / batch.num_tasks


def adapted_indices(algo) -> tuple:
    """Positions in ``algo.module.parameters()`` of the tensors the inner loop adapts: the
    algorithm's optional ``adapted_params``, else all of them."""
    chosen = getattr(algo, "adapted_params", None)
    if chosen is None:
        return tuple(range(sum(1 for _ in algo.module.parameters())))
    return tuple(chosen)


def accumulate_grad(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
    """Add ``grads`` into ``.grad`` of ``params``, as ``backward()`` would."""
    for p, g in zip(params, grads):
        p.grad = g.clone() if p.grad is None else p.grad + g
