"""The per-task reference engines: learn2learn's clone/adapt loop and ``higher``'s differentiable
optimizer. They serve as baselines that the vectorised engine must agree with.

Each fills ``.grad`` of the algorithm's meta-parameters, so the trainer can step any
``torch.optim`` optimizer. Which parameters adapt, by what rule, and what the meta-loss is come from
the learner contract (:class:`~metakit.wrappers.base.MetaLearner`), never from the algorithm's class.
"""

from typing import Callable, Optional, Sequence

import torch

from metakit.wrappers.base import Objective, parameter_names, step_kwargs
from metakit.wrappers.engines.batch import TaskBatch, accumulate_grad, joint_backward, refuse_frozen
from metakit.wrappers.rules import reptile_gradient

BACKENDS = ("l2l", "higher")


class LoopEngine:
    """Meta-gradients one task at a time, on the ``l2l`` or ``higher`` backend.

    Args:
        algo: any learner (:class:`~metakit.wrappers.base.MetaLearner`).
        loss_fn: the task loss.
        backend: ``"l2l"`` (clone/adapt per task) or ``"higher"`` (differentiable optimizer).
    """

    def __init__(self, algo, loss_fn: Callable, backend: str = "l2l"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: the loop engine serves {' and '.join(BACKENDS)}")
        if backend == "higher" and algo.objective is Objective.INTERPOLATION:
            raise ValueError("reptile does not differentiate through the inner loop; use backend l2l or func")
        if backend == "higher":
            refuse_frozen(algo, backend)
        self.algo = algo
        self.loss_fn = loss_fn
        self.name = backend
        """The backend, as ``--backend`` spells it."""

    def meta_backward(
        self,
        batch: TaskBatch,
        steps: int,
        first_order: Optional[bool] = None,
        step_weights: Optional[Sequence[float]] = None,
    ) -> float:
        """Accumulate the meta-gradient of ``batch`` into ``.grad`` and return the mean query loss.

        ``first_order`` overrides the algorithm's own setting (derivative-order annealing);
        ``step_weights`` is the MAML++ multi-step loss, one weight per inner step (``None``: the
        query loss after the last step alone). The meta-loss is the mean over tasks of the
        (weighted) query loss after adaptation; the returned value is the unweighted query loss
        after the last step, for logging.
        """
        algo, objective = self.algo, self.algo.objective
        if objective in (Objective.JOINT, Objective.TRANSFER):
            return joint_backward(algo, batch, self.loss_fn)
        if objective is Objective.INTERPOLATION:
            return self._interpolation_backward(batch, steps)
        first_order = algo.first_order if first_order is None else first_order
        total = 0.0
        for i in range(batch.num_tasks):
            task = batch.task(i)
            if objective is Objective.METRIC:
                query_losses = [self.loss_fn(algo.predict(algo.module, *task[:3]), task.y_query)]
            else:
                adapt = self._adapt_l2l if self.name == "l2l" else self._adapt_higher
                query_losses = adapt(task, steps, first_order, want_all=step_weights is not None)
            if step_weights is None:
                meta_loss = query_losses[-1]
            else:
                meta_loss = sum(w * q for w, q in zip(step_weights, query_losses))
            (meta_loss / batch.num_tasks).backward()
            total += query_losses[-1].item()
        return total / batch.num_tasks

    def _adapt_l2l(self, task, steps, first_order, want_all):
        learner, loss_fn = self.algo.clone(), self.loss_fn
        losses = []
        for s in range(steps):
            learner.adapt(loss_fn(learner(task.x_support), task.y_support), first_order=first_order)
            if want_all or s == steps - 1:
                losses.append(loss_fn(learner(task.x_query), task.y_query))
        return losses

    def _adapt_higher(self, task, steps, first_order, want_all):
        import higher  # archived baseline backend: imported only when asked for

        # higher steps only the tensors its optimizer holds; it still differentiates the support loss
        # with respect to every parameter, and the callback passes the others' gradients on unused.
        algo, loss_fn = self.algo, self.loss_fn
        names = parameter_names(algo.module)
        adapted = [names.index(n) for n in algo.adapted_names]
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

                support = fmodel(task.x_support, **step_kwargs(algo.module, s))
                diffopt.step(loss_fn(support, task.y_support), grad_callback=transform)
                if want_all or s == steps - 1:
                    query = fmodel(task.x_query, **step_kwargs(algo.module, s + 1))
                    losses.append(loss_fn(query, task.y_query))
        return losses

    def _interpolation_backward(self, batch, steps):
        algo, loss_fn = self.algo, self.loss_fn
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
