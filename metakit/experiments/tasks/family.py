"""What a task family is: the protocol every family implements, and the pieces regression and
few-shot classification families share."""

import hashlib
import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from metakit.wrappers.engines import make_engine
from metakit.wrappers.engines.batch import TaskBatch

EVAL_QUERY_POINTS = 100
"""Query points per held-out regression task (the same expected MSE as K, with less noise)."""
SUPPORT_BLOCK = 20
"""Held-out regression support points are drawn in blocks of this many, each from its own stream."""


def held_out_generator(seed: int, task: int, stream: int) -> torch.Generator:
    """The generator of one held-out task's ``stream`` (0: the task, 1: query, 2+: support blocks).

    torch's CPU generator uses the low 32 bits of its seed. Held-out seeds are a hash of
    ``(seed, task, stream)`` with bit 31 set; training streams are seeded with ``--seed`` < 2**31,
    so the two never coincide. Each task has its own streams, so a task is the same whatever
    ``--tasks``, ``--shots`` or ``--steps`` are requested.
    """
    if not (0 <= task < 2**24 and 0 <= stream < 64 and 0 <= seed < 2**32):
        raise ValueError("held-out seed, task or stream out of range")
    digest = hashlib.blake2b(f"held-out/{seed}/{task}/{stream}".encode(), digest_size=4).digest()
    return torch.Generator().manual_seed(2**31 | int.from_bytes(digest, "little") % 2**31)


@dataclass(frozen=True)
class Reproduction:
    """How ``metakit reproduce TASK`` trains and reports every method on a family.

    Attributes:
        description: the protocol in one sentence (heads ``results.md``).
        variants: ``(label, config overrides)`` per trained setting ("" for a single one).
        eval_shots: support sizes evaluated; ``None``: each variant at its own training ``shots``.
        eval_steps: inner steps evaluated (the curves in the plots).
        reported_steps: the steps shown in the tables.
        method_overrides: config overrides per method (e.g. Reptile's inner steps).
        methods: the methods run when ``--methods`` is not given (``None``: every method).
        published: ``{shots: {label: {steps: value}}}`` rows shown under that shots table.
    """

    description: str
    variants: tuple = (("", {}),)
    eval_shots: Optional[tuple] = (5, 10, 20)
    eval_steps: tuple = tuple(range(11))
    reported_steps: tuple = (0, 1, 5, 10)
    method_overrides: dict = field(default_factory=dict)
    published: dict = field(default_factory=dict)
    methods: Optional[tuple] = None


class TaskFamily:
    """A task family: how to sample tasks, the held-out set, the model, the loss and the metric.

    A family is one file defining a subclass, plus one line in
    :data:`metakit.experiments.tasks.FAMILIES` (or a call to
    :func:`metakit.experiments.tasks.register_family` from user code). Class attributes:

    * ``kind``: ``"regression"``, ``"classification"`` or ``"rl"`` (reinforcement learning, see
      :mod:`metakit.experiments.tasks.rl.meta_rl`);
    * ``metric``: the key of the evaluation metric in result rows (``"mse"``, ``"accuracy"``);
    * ``protocol``: defaults of the training options this family sets (``shots``, ``query``,
      ``inner_lr``, ``inner_steps``, ``meta_batch``, ``meta_lr``, ``iterations``, ``ways``);
    * ``eval_protocol``: default ``shots`` and ``steps`` lists of ``metakit eval``;
    * ``options``: family-specific training options it accepts (``shots``, ``query``, ``ways``,
      ``data_root``, ``rotations``); any other family-specific option is refused for it;
    * ``reproduction``: a :class:`Reproduction`, for families that ``metakit reproduce`` runs;
    * ``eval_chunk``: how many held-out tasks evaluation adapts at once;
    * ``compile_after``: runs of at least this many iterations compile under ``--compile auto``.

    Instances are built by :meth:`from_config` (cheap: data loads in :meth:`prepare`) and must
    implement :meth:`sample`,
    :meth:`held_out`, :meth:`build_model`, :meth:`loss` and :meth:`score`.
    """

    kind = "regression"
    metric = "mse"
    protocol: Dict[str, object] = {}
    eval_protocol: Dict[str, tuple] = {"shots": (5, 10, 20), "steps": (0, 1, 5, 10)}
    options: tuple = ("shots", "query")
    reproduction: Optional[Reproduction] = None
    eval_chunk: int = 100
    """Held-out tasks adapted at once in evaluation (bounds its memory)."""
    compile_after: int = 5000
    """``--compile auto`` compiles runs of at least this many iterations: a compilation costs
    3–30 s and saves about 2.5 ms per sinusoid-sized iteration."""

    @classmethod
    def from_config(cls, config) -> "TaskFamily":
        """The family set up for a :class:`~metakit.experiments.training.config.TrainConfig`."""
        return cls()

    @classmethod
    def check_config(cls, config) -> None:
        """Raise ``ValueError`` (one line) if ``config`` asks for what this family cannot give.

        Called for every :class:`~metakit.experiments.training.config.TrainConfig`; must not load data.
        """

    def prepare(self) -> None:
        """Load and check whatever data the family needs (a one-line ``DataError`` if it is bad).

        Called before a run writes anything; building the model must not need it.
        """

    def sample(self, tasks: int, shots: int, query: int, generator: torch.Generator) -> TaskBatch:
        """A meta-training batch of ``tasks`` tasks (tensors on the CPU)."""
        raise NotImplementedError

    def held_out(self, tasks: int, max_shots: int, seed: int):
        """A fixed evaluation set: an object whose ``batch(shots)`` gives a :class:`TaskBatch`."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """A freshly initialised model for this family."""
        raise NotImplementedError

    def meta_engine(self, algo, backend: str, compile: bool):
        """The engine that computes ``algo``'s meta-gradients on this family's batches: an object
        with ``name`` and ``meta_backward(batch, steps, first_order, step_weights) -> loss``
        (:func:`metakit.wrappers.engines.make_engine` on the task loss; families that sample their
        own data, such as reinforcement learning, bring their own)."""
        return make_engine(algo, self.loss, backend, compile)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task loss (differentiable)."""
        return F.mse_loss(prediction, target)

    def score(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The reported metric of one task's predictions."""
        return F.mse_loss(prediction, target)


class RegressionFamily(TaskFamily):
    """A regression family of functions ``R → R``; subclasses draw task parameters and points.

    Subclasses implement :meth:`draw_tasks` and :meth:`draw_points`. Training batches draw the
    tasks, then ``shots + query`` points per task, from the training generator. The held-out set
    draws each task from its own streams (:func:`held_out_generator`): the task, then
    :data:`EVAL_QUERY_POINTS` query points, then support points in blocks of
    :data:`SUPPORT_BLOCK`; the K-shot support set is the first K, so every K sees the same tasks
    and query points.
    """

    protocol = dict(shots=10, inner_lr=0.01, inner_steps=1, meta_batch=25, meta_lr=1e-3, iterations=70_000)

    def draw_tasks(self, tasks: int, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """Parameters of ``tasks`` tasks, each tensor of shape ``[tasks, 1, 1]``."""
        raise NotImplementedError

    def draw_points(self, params: Dict[str, torch.Tensor], points: int, generator: torch.Generator):
        """``(x, y)`` of shape ``[tasks, points, 1]`` each for the tasks in ``params``."""
        raise NotImplementedError

    def truth(self, params: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Noise-free targets at ``x`` (``[tasks, points, 1]``), for plots."""
        raise NotImplementedError

    def plot_range(self, params: Dict[str, torch.Tensor]) -> tuple:
        """The x interval to draw one task's function over."""
        return (-5.0, 5.0)

    def build_model(self) -> nn.Module:
        """The MAML paper's regressor: 1 → 40 → 40 → 1 with ReLU, PyTorch's default initialisation."""
        return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))

    def sample(self, tasks, shots, query, generator):
        """``shots`` support and ``query`` query points for each of ``tasks`` new tasks."""
        params = self.draw_tasks(tasks, generator)
        x, y = self.draw_points(params, shots + query, generator)
        return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])

    def held_out(self, tasks: int, max_shots: int, seed: int) -> "RegressionHeldOut":
        """``tasks`` fixed held-out tasks with up to ``max_shots`` support points each."""
        params, xs, ys, xq, yq = [], [], [], [], []
        blocks = math.ceil(max_shots / SUPPORT_BLOCK)
        for t in range(tasks):
            p = self.draw_tasks(1, held_out_generator(seed, t, 0))
            x, y = self.draw_points(p, EVAL_QUERY_POINTS, held_out_generator(seed, t, 1))
            drawn = [
                self.draw_points(p, SUPPORT_BLOCK, held_out_generator(seed, t, 2 + b)) for b in range(blocks)
            ]
            params.append(p)
            xq.append(x)
            yq.append(y)
            xs.append(torch.cat([d[0] for d in drawn], 1)[:, :max_shots])
            ys.append(torch.cat([d[1] for d in drawn], 1)[:, :max_shots])
        params = {k: torch.cat([p[k] for p in params]) for k in params[0]}
        return RegressionHeldOut(params, torch.cat(xs), torch.cat(ys), torch.cat(xq), torch.cat(yq))


@dataclass(frozen=True)
class RegressionHeldOut:
    """Held-out regression tasks; ``batch(K)`` uses the first K support points of every task."""

    params: Dict[str, torch.Tensor]
    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor

    def batch(self, shots: int) -> TaskBatch:
        """The tasks with a ``shots``-point support set."""
        return TaskBatch(self.x_support[:, :shots], self.y_support[:, :shots], self.x_query, self.y_query)

    def task_params(self, task: int) -> Dict[str, torch.Tensor]:
        """One task's parameters (keeping the task dimension)."""
        return {k: v[task : task + 1] for k, v in self.params.items()}


def uniform(bounds, shape, generator: torch.Generator) -> torch.Tensor:
    """Draws from U[low, high) of the given shape."""
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator)
