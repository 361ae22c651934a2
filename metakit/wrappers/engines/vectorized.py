"""The vectorised engine: every method over the whole task batch in one ``torch.func`` pass.

Per task, the inner loop is a pure function of the parameters (``functional_call`` + ``grad``);
``vmap`` runs it over the task dimension at once, and one ``backward()`` through the batched graph
gives the meta-gradient. The update rule is the algorithm's own ``inner_updates``, so the numbers
are those of the learn2learn and higher backends.

For small models the eager engine is bound by per-operation overhead (``vmap`` and ``grad`` add
tens of microseconds to every operation), not by arithmetic. ``compile=True`` instead compiles
:meth:`VectorizedEngine.meta_gradient` (``torch.func.grad_and_value`` of the same meta-loss with
respect to every meta-parameter) with ``torch.compile``: one Inductor graph holds the forward and
all derivatives, so neither ``torch.func`` nor the autograd engine runs per iteration. That costs
a one-off compilation per (inner steps, derivative order, multi-step loss, inner learning rate)
combination.
"""

import logging
import warnings
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from metakit.wrappers.base import MetaLearner, Objective, meta_only_names, step_kwargs
from metakit.wrappers.engines.batch import TaskBatch, accumulate_grad, joint_backward, refuse_frozen
from metakit.wrappers.engines.inner_step import Params, functional_inner_step
from metakit.wrappers.engines.memory import available_memory, peak_memory_growth
from metakit.wrappers.rules import reptile_gradient

MEMORY_SHARE = 0.4
"""The share of the available memory a meta-gradient's batch of tasks may take, as measured on one
task and scaled, before :meth:`VectorizedEngine.meta_backward` splits it. The rest is for what that
estimate misses (on the CPU a training's peak came to up to 1.4× it, from heap fragments: measured
at glyphs 100-way), the data and other work."""


def meta_objective(losses: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The meta-loss from query losses ``[tasks, recorded steps]``: the mean loss after the last
    step, or with multi-step ``weights`` the weighted sum over steps of the mean loss."""
    if weights is None:
        return losses[:, -1].mean()
    return (losses.mean(0) * weights).sum()


class _MetaObjective(nn.Module):
    """An engine's meta-loss as a module that owns the algorithm, so that ``functional_call`` can
    substitute every meta-parameter and ``torch.func.grad`` differentiate with respect to them."""

    def __init__(self, engine: "VectorizedEngine"):
        super().__init__()
        self.algo = engine.algo
        self.engine = engine

    def forward(self, batch, steps, first_order, weights):
        """``(meta_loss, last_query_loss)``; the second is the mean query loss after the last step."""
        losses = self.engine.meta_losses(batch, steps, first_order, weights is not None)
        return meta_objective(losses, weights), losses[:, -1].mean()


class VectorizedEngine:
    """Meta-gradients and adaptation for a batch of tasks, vectorised with ``torch.func.vmap``.

    Args:
        algo: any learner (:class:`~metakit.wrappers.base.MetaLearner`); its meta-parameters are
            used in place (the engine holds no copy).
        loss_fn: the task loss.
        compile: compute MAML-family meta-gradients with a ``torch.compile``-d
            :meth:`meta_gradient` (on a GPU in the compiler's ``reduce-overhead`` mode, i.e. with
            CUDA graphs). Pays off on long runs only: a compilation takes seconds to a minute on
            CPU (Inductor's on-disk caches make a repeated one a few seconds). If it fails, or
            dynamo's recompile limit is hit, the engine warns once and stays eager. Objectives other
            than ``UNROLLED``, and :meth:`query_curves`, always run eagerly.

    Models with buffers (e.g. batch-norm running statistics) are refused, their in-place
    updates cannot be vectorised over tasks, except those of
    :class:`~metakit.wrappers.base.MetaOnly` parts, which their forward only reads. A model that
    takes the inner step (``takes_step``) gets it in every forward: the number of inner steps its
    parameters have taken.
    """

    def __init__(self, algo: torch.nn.Module, loss_fn: Callable = F.mse_loss, compile: bool = False):
        if not isinstance(algo, MetaLearner):
            raise TypeError(
                f"VectorizedEngine takes a metakit learner (metakit.wrappers.base.MetaLearner: objective, "
                f"adapted_names, inner_updates, describe), e.g. metakit.wrappers.MAML(model, lr); got "
                f"{type(algo).__module__}.{type(algo).__name__}"
            )
        refuse_frozen(algo, "func")
        read_only = meta_only_names(algo.module, "buffers")
        buffers = [name for name, _ in algo.module.named_buffers() if name not in read_only]
        if buffers:
            raise ValueError(
                f"the func backend does not support models with buffers ({', '.join(buffers)}); "
                "use --backend l2l"
            )
        self.algo = algo
        self.loss_fn = loss_fn
        self._objective = _MetaObjective(self)
        self._compiled = None
        self._chunks = {}  # batch shape and setting -> tasks per chunk (task_chunk)
        # the meta-parameters the compiled gradient is taken for, listed once (walking the
        # modules on every call cost ~50 µs of a ~1 ms iteration)
        self._meta_params = {name: p for name, p in self._objective.named_parameters() if p.requires_grad}
        if compile and algo.objective is Objective.UNROLLED:
            # Inductor's CPU build warns that no CUDA runtime exists: not news on a CPU run
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            # past dynamo's recompile limit a function silently runs eagerly; make that an error,
            # which the engine reports (one warning) before it goes on eagerly
            torch._dynamo.config.fail_on_recompile_limit_hit = True
            on_gpu = next(algo.parameters()).is_cuda  # CUDA graphs take the launch overhead away
            mode = "reduce-overhead" if on_gpu else None
            self._compiled = torch.compile(self.meta_gradient, dynamic=False, mode=mode)

    @property
    def compiled(self) -> bool:
        """Whether meta-gradients come from the compiled :meth:`meta_gradient` (``False`` for
        objectives other than ``UNROLLED``, and after a failed compilation)."""
        return self._compiled is not None

    def forward(self, params: Params, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        """The model's output on ``x`` with the name → tensor ``params``, which have taken ``step``
        inner steps."""
        module = self.algo.module
        return functional_call(module, params, (x,), step_kwargs(module, step))

    @property
    def name(self) -> str:
        """``func-compiled`` or ``func``."""
        return "func-compiled" if self.compiled else "func"

    def task_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> torch.Tensor:
        """Loss of the model with ``params`` (after ``step`` inner steps) on one task's points."""
        return self.loss_fn(self.forward(params, x, step), y)

    def inner_step(self, params: Params, x, y, step: int, first_order: bool) -> Params:
        """Inner step ``step`` of the algorithm's rule on one task's points ``x, y``
        (:func:`~metakit.wrappers.engines.inner_step.functional_inner_step`)."""
        loss_of = lambda p: self.task_loss(p, x, y, step)  # noqa: E731
        return functional_inner_step(self.algo, loss_of, params, step, first_order)

    def unroll(
        self,
        params: Params,
        task: TaskBatch,
        steps: int,
        first_order: bool,
        record: Sequence[int],
        measure: Optional[Callable] = None,
        guard_from: Optional[int] = None,
    ):
        """Adapt ``params`` to one task for ``steps`` inner steps.

        Returns the adapted parameters and the stacked ``measure(params, x_query, y_query, s)`` (by
        default the query loss) after each step count ``s`` in ``record`` (0: before adapting). From
        step ``guard_from`` on, a step is kept only where it lowers the support loss
        (:meth:`guarded_step`).
        """
        measure = measure or self.task_loss
        values = []
        for s in range(steps + 1):
            if s in record:
                values.append(measure(params, task.x_query, task.y_query, s))
            if s < steps:
                step = self.inner_step if guard_from is None or s < guard_from else self.guarded_step
                params = step(params, task.x_support, task.y_support, s, first_order)
        return params, torch.stack(values)

    def guarded_step(self, params: Params, x, y, step: int, first_order: bool) -> Params:
        """:meth:`inner_step`, kept only if it lowers the loss on ``x, y`` (else ``params`` stay).

        For steps beyond a learned rule's horizon, where the rule (the last trained step's) is
        extrapolated: a rule tuned to make one step count can overshoot when repeated and, on
        a few tasks, climb to an infinite loss. A step that raises a task's support loss (or makes
        it non-finite) is not taken, so adapting longer never raises the support loss; the query
        set is not looked at.
        """
        stepped = self.inner_step(params, x, y, step, first_order)
        keep = self.task_loss(stepped, x, y, step + 1) <= self.task_loss(params, x, y, step)
        return {n: torch.where(keep, stepped[n], params[n]) for n in params}

    def meta_losses(self, batch: TaskBatch, steps: int, first_order: bool, every_step: bool) -> torch.Tensor:
        """Query losses ``[tasks, steps if every_step else 1]`` after adaptation from the model's
        own parameters, differentiable with respect to every meta-parameter."""
        theta = dict(self.algo.module.named_parameters())
        record = range(1, steps + 1) if every_step else (steps,)

        def task_losses(*task):
            return self.unroll(theta, TaskBatch(*task), steps, first_order, record)[1]

        return vmap(task_losses)(*batch)

    def meta_gradient(self, params: dict, batch: TaskBatch, steps: int, first_order: bool, weights=None):
        """``(gradients, (meta_loss, last_query_loss))`` of the meta-loss, computed functionally.

        ``params`` maps the algorithm's parameter names, prefixed ``algo.``, to the (detached)
        tensors to differentiate at; parameters left out keep their values and get no gradient.
        ``weights`` is a tensor of multi-step loss weights or ``None``.
        """

        def objective(values):
            return functional_call(self._objective, values, (batch, steps, first_order, weights))

        return grad_and_value(objective, has_aux=True)(params)

    def meta_backward(
        self,
        batch: TaskBatch,
        steps: int,
        first_order: Optional[bool] = None,
        step_weights: Optional[Sequence[float]] = None,
    ) -> float:
        """Same contract as :meth:`metakit.wrappers.engines.loop.LoopEngine.meta_backward`.

        A batch whose meta-gradient would not fit in the memory left on its device is taken in
        equal chunks of tasks (:meth:`task_chunk`), each chunk's gradient weighted by its share of
        the batch: the same meta-gradient, up to the order of a sum.
        """
        objective = self.algo.objective
        if objective in (Objective.JOINT, Objective.TRANSFER):
            return joint_backward(self.algo, batch, self.loss_fn)
        if first_order is None:
            first_order = self.algo.first_order
        batch = TaskBatch(*batch)
        size, tasks = self.task_chunk(batch, steps, first_order, step_weights), batch.num_tasks
        if size >= tasks:
            return self._meta_backward(batch, steps, first_order, step_weights)
        return sum(
            self._shared_backward(chunk, size / tasks, steps, first_order, step_weights)
            for chunk in batch.chunks(size)
        )

    def task_chunk(self, batch: TaskBatch, steps: int, first_order: bool, step_weights=None) -> int:
        """How many of ``batch``'s tasks :meth:`meta_backward` takes at a time: all of them, unless
        the memory one task's meta-gradient takes (measured once per batch shape and setting, on
        one task, eagerly) times the tasks exceeds :data:`MEMORY_SHARE` of what the device has
        available; then the largest divisor of the batch size that fits (at least 1). All of
        them where memory cannot be measured (a CPU off Linux)."""
        key = (tuple(part.shape for part in batch), steps, first_order, step_weights is None)
        if key not in self._chunks:
            self._chunks[key] = self._fitting_chunk(batch, steps, first_order, step_weights)
        return self._chunks[key]

    def _fitting_chunk(self, batch, steps, first_order, step_weights) -> int:
        tasks, device = batch.num_tasks, batch.x_support.device
        free = available_memory(device)
        if tasks == 1 or free is None:
            return tasks
        one = TaskBatch(*(part[:1] for part in batch))
        probe = lambda: self._shared_backward(one, None, steps, first_order, step_weights, eager=True)  # noqa: E731
        with torch.enable_grad():  # also when asked from a no-grad computation (step_moments)
            per_task = peak_memory_growth(probe, device)
        if per_task is None:
            return tasks
        fits = max(1, int(MEMORY_SHARE * free / max(per_task, 1)))
        if fits >= tasks:
            return tasks
        size = max(d for d in range(1, fits + 1) if tasks % d == 0)
        warnings.warn(
            f"a batch of {tasks} tasks takes about {tasks * per_task / 2**30:.1f} GiB for its "
            f"meta-gradient and {free / 2**30:.1f} GiB are available: taking it {size} task(s) at a time"
        )
        return size

    def _shared_backward(self, chunk, share, steps, first_order, step_weights, eager=False) -> float:
        """:meth:`_meta_backward` of ``chunk``, its gradient added into ``.grad`` times ``share``
        (``None``: dropped, ``.grad`` left as it was); returns its loss times ``share`` (or 0)."""
        params = [p for p in self.algo.parameters() if p.requires_grad]
        held = [p.grad for p in params]
        for p in params:
            p.grad = None
        loss = self._meta_backward(chunk, steps, first_order, step_weights, eager)
        new = [p.grad for p in params]
        for p, before in zip(params, held):
            p.grad = before
        if share is None:
            return 0.0
        reached = [(p, g * share) for p, g in zip(params, new) if g is not None]
        accumulate_grad([p for p, _ in reached], [g for _, g in reached])
        return loss * share

    def _meta_backward(self, batch, steps, first_order, step_weights, eager=False) -> float:
        objective = self.algo.objective
        if objective is Objective.INTERPOLATION:
            return self._interpolation_backward(batch, steps)
        if objective is Objective.METRIC:
            losses = self._metric_losses(batch)
            losses.mean().backward()
            return losses.mean().item()
        weights = None
        if step_weights is not None:
            weights = torch.as_tensor(step_weights, dtype=next(self.algo.parameters()).dtype)
        if self._compiled is not None and not eager:
            loss = self._compiled_backward(batch, steps, first_order, weights)
            if loss is not None:
                return loss
        losses = self.meta_losses(batch, steps, first_order, weights is not None)
        meta_objective(losses, weights).backward()
        return losses[:, -1].mean().item()

    def _compiled_backward(self, batch, steps, first_order, weights) -> Optional[float]:
        params = self._meta_params
        detached = {name: p.detach() for name, p in params.items()}
        try:
            grads, (_, last) = self._compiled(detached, batch, steps, first_order, weights)
        except Exception as err:  # e.g. no C++ compiler: the eager engine gives the same numbers
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            warnings.warn(f"torch.compile failed ({type(err).__name__}: {reason}); using the eager engine")
            self._compiled = None
            return None
        accumulate_grad(list(params.values()), [grads[name] for name in params])
        return last.item()

    def _interpolation_backward(self, batch, steps):
        theta = tuple(self.algo.module.parameters())
        start = {name: p.detach() for name, p in self.algo.module.named_parameters()}

        def adapt(*task):
            task, params = TaskBatch(*task), start
            for s in range(steps):
                params = self.inner_step(params, *self.algo.inner_points(task, s), s, True)
            return params, self.task_loss(params, task.x_query, task.y_query, steps)

        with torch.no_grad():
            adapted, query = vmap(adapt)(*batch)
        mean = [adapted[name].mean(0) for name in start]
        accumulate_grad(theta, reptile_gradient(list(start.values()), [mean]))
        return query.mean().item()

    def _metric_losses(self, batch: TaskBatch) -> torch.Tensor:
        """Per-task query losses ``[tasks]`` of a ``METRIC`` learner's predictions."""
        params = dict(self.algo.module.named_parameters())

        def task_loss(*task):
            task = TaskBatch(*task)
            prediction = self.algo.predict(lambda x: self.forward(params, x), *task[:3])
            return self.loss_fn(prediction, task.y_query)

        return vmap(task_loss)(*batch)

    @torch.no_grad()
    def query_curves(
        self,
        batch: TaskBatch,
        max_steps: int,
        score: Optional[Callable] = None,
        guard_from: Optional[int] = None,
        record: Optional[Sequence[int]] = None,
    ) -> dict:
        """Query loss (and ``score(prediction, target)``) of every task after 0, 1, …, ``max_steps``
        inner steps: ``{"loss": [max_steps + 1, tasks], "score": same shape or None}``. With
        ``record`` a learner that takes gradient steps is measured at those step counts only (the
        query forward passes are most of an evaluation's cost) and its other rows are NaN.

        Adapts with the algorithm's own inner rule (first-order, no meta graph), for evaluation:
        the model runs in evaluation mode (``eval()``; e.g. per-step batch norm then normalises
        with its running statistics); steps from ``guard_from`` on (a learned rule's horizon) are
        :meth:`guarded_step` s. A ``TRANSFER`` learner fits a fresh head per task instead (its
        ``head_curves``), a step being one of its own.
        """
        training = self.algo.training
        self.algo.eval()
        try:
            return self._query_curves(batch, max_steps, score, guard_from, record)
        finally:
            self.algo.train(training)

    def _query_curves(self, batch, max_steps, score, guard_from, record) -> dict:
        start = {name: p.detach() for name, p in self.algo.module.named_parameters()}

        def measure(prediction, y):
            values = [self.loss_fn(prediction, y)]
            if score is not None:
                values.append(score(prediction, y).to(values[0].dtype))
            return torch.stack(values)

        if self.algo.objective is Objective.TRANSFER:  # a fresh head per task, the body frozen
            logits = self.algo.head_curves(batch.x_support, batch.y_support, batch.x_query, max_steps)
            values = vmap(vmap(measure), in_dims=(0, None))(logits, batch.y_query)  # [steps + 1, tasks, 1|2]
            return {"loss": values[..., 0], "score": values[..., 1] if score is not None else None}

        if self.algo.objective is Objective.METRIC:  # no gradient steps: the same at every count

            def curve(*task):
                task = TaskBatch(*task)
                prediction = self.algo.predict(lambda x: self.forward(start, x), *task[:3])
                return measure(prediction, task.y_query).expand(max_steps + 1, -1)

        else:
            measured = range(max_steps + 1) if record is None else sorted(set(record))

            def curve(*task):
                at = lambda params, x, y, s: measure(self.forward(params, x, s), y)  # noqa: E731
                return self.unroll(start, TaskBatch(*task), max_steps, True, measured, at, guard_from)[1]

        values = vmap(curve)(*batch)  # [tasks, recorded steps, 1 or 2]
        if self.algo.objective is not Objective.METRIC and record is not None:
            every = values.new_full((values.shape[0], max_steps + 1, values.shape[2]), float("nan"))
            every[:, measured] = values
            values = every
        return {"loss": values[..., 0].T, "score": values[..., 1].T if score is not None else None}

    @torch.no_grad()
    def step_moments(self, batch: TaskBatch, steps: int) -> torch.Tensor:
        """What a model with per-step running statistics records from a meta-batch: the mean over
        tasks of ``model(x, step=s, moments=True)`` on each task's support and query images
        together, with the parameters adapted to the task for ``s`` = 0, 1, …, ``steps`` inner
        steps (the algorithm's own rule, first order, no meta graph): ``[steps + 1, ...]``.

        The model's ``record_moments`` takes the result (see
        :class:`~metakit.experiments.tasks.vision.convnet.PerStepConvNet`); the forward values,
        hence the moments, are the same whichever engine computed the meta-gradient. Tasks are
        taken as many at a time as a first-order meta-gradient fits (:meth:`task_chunk`).
        """
        start = {name: p.detach() for name, p in self.algo.module.named_parameters()}
        module = self.algo.module

        def curve(*task):
            task = TaskBatch(*task)
            images = torch.cat([task.x_support, task.x_query])
            at = lambda params, x, y, s: functional_call(module, params, (images, s, True))  # noqa: E731
            return self.unroll(start, task, steps, True, range(steps + 1), at)[1]

        batch = TaskBatch(*batch)
        chunks = batch.chunks(self.task_chunk(batch, steps, True))  # of equal sizes
        return torch.stack([vmap(curve)(*chunk).mean(0) for chunk in chunks]).mean(0)
