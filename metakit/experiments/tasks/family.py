"""What a task family is: a small core every family implements (sampling, model, config rules,
protocol, evaluation, figures), the supervised layer that regression and classification share
(held-out set, loss, score), and the :class:`Metric` that tables, markdown and plots read."""

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Sequence

import torch
from torch import nn

from metakit.experiments.util import progress
from metakit.experiments.util.errors import flag
from metakit.experiments.util.statistics import task_statistics
from metakit.wrappers.base import Objective
from metakit.wrappers.engines import VectorizedEngine, make_engine
from metakit.wrappers.engines.batch import TaskBatch


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


SCIENTIFIC_FROM = 1e4
"""Magnitudes from which numbers are shown in scientific notation (``3.1e+27``)."""


def format_number(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, or in scientific notation with two significant digits
    where its magnitude is at least :data:`SCIENTIFIC_FROM` or so small (non-zero) that the decimals
    would show 0: a task whose adaptation exploded stays one readable cell."""
    size = abs(value)
    if math.isfinite(value) and (size >= SCIENTIFIC_FROM or 0 < size < 0.5 * 10.0**-digits):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


@dataclass(frozen=True)
class Metric:
    """The number a family reports, and how to show it.

    Attributes:
        key: its key in result rows (``"mse"``, ``"accuracy"``, ``"return"``).
        label: the column header of tables (``"MSE"``).
        description: what a cell holds, for markdown and axis labels (``"query MSE"``).
        percent: shown ×100 with a ``%`` sign.
        digits: decimals shown in evaluation tables.
        summary_digits: decimals in reproduction summaries (``results.md``; default ``digits``).
        higher_is_better: a diverged task ranks lowest (not highest) in medians.
        log_axis: plotted on a log axis.
        chance_is_one_in_ways: guessing scores ``1 / ways`` of a row (plots draw it as a line).
    """

    key: str
    label: str
    description: str
    percent: bool = False
    digits: int = 4
    higher_is_better: bool = False
    log_axis: bool = False
    summary_digits: Optional[int] = None
    chance_is_one_in_ways: bool = False

    def format(self, value: Optional[float], digits: Optional[int] = None) -> str:
        """``value`` for people: ``diverged`` for ``None``, percent where :attr:`percent`, huge or tiny
        values in scientific notation (:func:`format_number`)."""
        if value is None:
            return "diverged"
        digits = self.digits if digits is None else digits
        return format_number(100 * value, digits) + "%" if self.percent else format_number(value, digits)


MSE = Metric("mse", "MSE", "query MSE", digits=4, log_axis=True, summary_digits=3)
ACCURACY = Metric(
    "accuracy",
    "accuracy",
    "query accuracy",
    percent=True,
    digits=2,
    higher_is_better=True,
    chance_is_one_in_ways=True,
)
RETURN = Metric("return", "return", "mean return per episode", digits=2, higher_is_better=True)
METRICS = {m.key: m for m in (MSE, ACCURACY, RETURN)}
"""The built-in metrics by key (a report that names none is read with the one its rows carry)."""


class Variant(NamedTuple):
    """One trained setting of a reproduction: a label ("" for a family's single setting), the
    config overrides it applies, and the methods it trains (``None``: every method run)."""

    label: str
    overrides: dict
    methods: Optional[tuple] = None


@dataclass(frozen=True)
class CurveAxis:
    """How training curves show a run's logged ``meta_loss``: the axis label, the factor that
    turns the logged value into the plotted one (−1 where it is minus a return), and whether the
    axis is logarithmic."""

    label: str
    sign: float = 1.0
    log: bool = True


@dataclass(frozen=True)
class Reproduction:
    """How ``metakit reproduce TASK`` trains and reports every method on a family.

    Attributes:
        description: the protocol in one sentence (heads ``results.md``).
        variants: the trained settings (:class:`Variant`); methods limited to some of them run in
            those only.
        eval_shots: support sizes evaluated; ``None``: each variant at its own training ``shots``.
        eval_steps: inner steps evaluated (the curves in the plots).
        reported_steps: the steps shown in the tables.
        method_overrides: config overrides per method (e.g. Reptile's inner steps).
        methods: the methods run when ``--methods`` is not given (``None``: every method).
        published: ``{shots: {label: {steps: value}}}`` rows shown under that shots table; a value
            is a number or a ``(value, ± as printed)`` pair.
        published_elsewhere: ``{variant label: text}``, published numbers printed under that
            variant's tables where they cannot be rows of them (e.g. another data set's, after the
            paper's own steps).
    """

    description: str
    variants: tuple = (Variant("", {}),)
    eval_shots: Optional[tuple] = (5, 10, 20)
    eval_steps: tuple = tuple(range(11))
    reported_steps: tuple = (0, 1, 5, 10)
    method_overrides: dict = field(default_factory=dict)
    published: dict = field(default_factory=dict)
    published_elsewhere: dict = field(default_factory=dict)
    methods: Optional[tuple] = None


class TaskFamily:
    """A task family: the core every family implements.

    A family is one file defining a subclass, plus one line in
    :data:`metakit.experiments.tasks.FAMILIES` (or a :func:`metakit.experiments.tasks.register_family`
    call from user code). Class attributes:

    * ``metric``: the :class:`Metric` its evaluation reports;
    * ``protocol``: defaults of the training options this family sets (``shots``, ``query``,
      ``inner_lr``, ``inner_steps``, ``meta_batch``, ``meta_lr``, ``iterations``, ``ways``);
    * ``eval_protocol``: default ``shots`` (if it takes any) and ``steps`` of ``metakit eval``;
    * ``plot_steps``: the step counts of ``metakit plot``'s metric-vs-steps curve;
    * ``steps_label``: what a step is, for axis labels and tables;
    * ``options``: family-specific training options it accepts (``shots``, ``query``, ``ways``,
      ``data_root``, ``rotations``); any other family-specific option is refused for it;
    * ``reproduction``: a :class:`Reproduction`, for families that ``metakit reproduce`` runs;
    * ``compile_after``: runs of at least this many iterations compile under ``--compile auto``;
    * ``bench_plan``: ``metakit bench`` plan fields this family changes (e.g. the conv net's batch);
    * ``bench``: ``None``, or a classmethod that benchmarks the family itself
      (``bench(task, quick, threads, **options) -> (report, text)``), as RL families time rollouts.

    Instances are built by :meth:`from_config` (cheap: data loads in :meth:`prepare`) and implement
    :meth:`sample`, :meth:`build_model`, :meth:`meta_engine` and :meth:`evaluate`;
    :meth:`figures` adds figures of the family's own to ``metakit plot`` and ``reproduce``.
    """

    metric: Metric = MSE
    protocol: Dict[str, object] = {}
    eval_protocol: Dict[str, tuple] = {"shots": (5, 10, 20), "steps": (0, 1, 5, 10)}
    plot_steps: tuple = tuple(range(11))
    steps_label = "gradient steps at test time"
    options: tuple = ("shots", "query")
    reproduction: Optional[Reproduction] = None
    compile_after: int = 5000
    """``--compile auto`` compiles runs of at least this many iterations: a compilation costs
    3–30 s and saves about 2.5 ms per sinusoid-sized iteration."""
    bench_plan: Dict[str, object] = {}
    bench: Optional[Callable] = None

    @classmethod
    def from_config(cls, config) -> "TaskFamily":
        """The family set up for a :class:`~metakit.experiments.training.config.TrainConfig`."""
        return cls()

    @classmethod
    def check_config(cls, config) -> None:
        """Raise ``ValueError`` (one line) if ``config`` asks for what this family cannot give.

        Called for every :class:`~metakit.experiments.training.config.TrainConfig`; must not load data.
        """

    @classmethod
    def missing_validation(cls, config) -> Optional[str]:
        """Why ``config``'s data has no validation split to select a model on (one phrase), or
        ``None`` where it has one (``--select-on validation``; the family's ``held_out`` then takes
        ``split="validation"``). Must not load data."""
        return f"{flag('task')} {config.task} has none"

    def prepare(self) -> None:
        """Load and check whatever data the family needs (a one-line ``DataError`` if it is bad).

        Called before a run writes anything.
        """

    def check_held_out(self, shots: int) -> None:
        """Raise a one-line ``DataError`` if the prepared data cannot make held-out episodes with
        ``shots`` support examples per class (asked before a run trains, so that a run is not trained
        for an evaluation its data cannot give). Nothing to check by default."""

    def sample(self, tasks: int, shots: int, query: int, generator: torch.Generator, global_labels=False):
        """A meta-training batch of ``tasks`` tasks (tensors on the CPU; a :class:`TaskBatch` for
        supervised families).

        ``global_labels`` is asked only of families with :meth:`train_classes` (by methods that
        train a classifier over all meta-train classes): the same examples, each labelled by its
        meta-train class, ``0 … train_classes() − 1``, instead of by its class's place in its task.
        """
        raise NotImplementedError

    def train_classes(self) -> Optional[int]:
        """How many meta-train classes ``sample(..., global_labels=True)`` labels and
        ``build_model(outputs)`` can classify, or ``None`` (the default) for a family whose batches
        are labelled within each task only (may load the data, see :meth:`prepare`)."""
        return None

    def build_model(self, outputs: Optional[int] = None) -> nn.Module:
        """A freshly initialised model for this family; ``outputs`` (asked only of families with
        :meth:`train_classes`) is the size of a classifier's head instead of the task's ways."""
        raise NotImplementedError

    def meta_engine(self, algo, backend: str, compile: bool):
        """The engine that computes ``algo``'s meta-gradients on this family's batches: an object
        with ``name`` and ``meta_backward(batch, steps, first_order, step_weights) -> loss``."""
        raise NotImplementedError

    def evaluate(
        self, algo, tasks: int, shots: Sequence, steps: Sequence[int], seed: int, horizon=None
    ) -> list:
        """Result rows (one per shots × steps) of ``algo`` adapted to ``tasks`` held-out tasks:
        ``{"shots" (if the family takes shots), "steps", metric.key, "ci95", "tasks", ...}``, with
        ``"beyond_horizon": True`` past a learned rule's ``horizon``."""
        raise NotImplementedError

    def figures(
        self, algos: Dict[str, nn.Module], out: Path, shots, seed: int, extension: str = "png"
    ) -> list:
        """Figures of this family's own (beyond metric vs steps and training curves) for the runs
        ``algos`` (label → algorithm), as ``extension`` files (png, pdf, svg); returns the paths
        written. None by default."""
        return []

    def training_curve_axis(self, objective: Objective) -> CurveAxis:
        """What the logged meta-loss of a learner with ``objective`` is, for training curves: the
        query loss after the inner steps, the query loss of a metric learner, or the pretraining
        baseline's joint loss on support and query points."""
        if objective is Objective.JOINT:
            return CurveAxis("training loss (joint loss on support and query points)")
        if objective is Objective.METRIC:
            return CurveAxis("meta-training loss (query loss)")
        return CurveAxis("meta-training loss (query loss after the inner steps)")


class SupervisedFamily(TaskFamily):
    """A family of supervised tasks: a fixed held-out set, a task loss and a score.

    Subclasses implement :meth:`held_out`, :meth:`loss` and :meth:`score` besides the core; the
    meta-gradients come from metakit's engines on the loss, and :meth:`evaluate` adapts the
    held-out tasks with the vectorised engine, ``eval_chunk`` tasks at a time.
    """

    eval_chunk: int = 100
    """Held-out tasks adapted at once in evaluation (bounds its memory)."""
    reports_loss: bool = False
    """Rows also carry the mean query ``loss`` (where the metric is not the loss itself)."""

    def held_out(self, tasks: int, max_shots: int, seed: int):
        """A fixed evaluation set: an object whose ``batch(shots)`` gives a :class:`TaskBatch`."""
        raise NotImplementedError

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task loss (differentiable)."""
        raise NotImplementedError

    def score(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The reported metric of one task's predictions."""
        raise NotImplementedError

    def row_fields(self) -> dict:
        """Fields that lead every result row (e.g. classification's ``ways``)."""
        return {}

    def meta_engine(self, algo, backend: str, compile: bool):
        """:func:`metakit.wrappers.engines.make_engine` on the task loss."""
        return make_engine(algo, self.loss, backend, compile)

    def evaluate(self, algo, tasks, shots, steps, seed, horizon=None) -> list:
        """The metric (mean ± 95% CI over tasks) for every (shots, steps) pair on the same held-out
        tasks.

        Every row also gives the ``median`` of the metric over tasks, how many tasks ended ``worse``
        than before adapting and how many ``diverged``
        (:func:`~metakit.experiments.util.statistics.task_statistics`). Where adaptation diverged
        on some task (a non-finite loss), the metric, CI and loss are ``None``. Tasks are adapted
        :attr:`eval_chunk` at a time (each task is independent, so the numbers do not depend on
        it), on the device of the algorithm's parameters.
        """
        self.prepare()
        return self.score_held_out(algo, self.held_out(tasks, max(shots), seed), tasks, shots, steps, horizon)

    def held_out_curves(
        self, algo, held_out, shots: int, max_steps: int, horizon=None, advance=None, record=None
    ) -> dict:
        """Per task of ``held_out`` at ``shots`` shots, the query loss and score of ``algo`` after
        0 … ``max_steps`` inner steps, ``{"loss", "score"}`` each ``[max_steps + 1, tasks]``
        (:meth:`~metakit.wrappers.engines.vectorized.VectorizedEngine.query_curves`, guarded past a
        learned rule's ``horizon``; only the step counts in ``record`` if given, NaN elsewhere),
        :attr:`eval_chunk` tasks at a time; ``advance(n)`` is called after each ``n`` tasks."""
        engine = VectorizedEngine(algo, self.loss)
        device = next(algo.parameters()).device
        batch, chunks = held_out.batch(shots), []
        for i in range(0, batch.num_tasks, self.eval_chunk):
            part = TaskBatch(*(t[i : i + self.eval_chunk].to(device) for t in batch))
            chunks.append(engine.query_curves(part, max_steps, self.score, horizon, record))
            if advance is not None:
                advance(part.num_tasks)
        return {key: torch.cat([c[key] for c in chunks], 1) for key in ("loss", "score")}

    def score_held_out(self, algo, held_out, tasks: int, shots, steps, horizon=None) -> list:
        """The rows of :meth:`evaluate` for a given ``held_out`` set of ``tasks`` tasks (the meta-test
        set, or a validation set)."""
        results, record = [], {0, *steps}  # step 0: the baseline of "worse"
        with progress.bar(tasks * len(shots), "adapting to held-out tasks", unit="task") as shown:
            for k in shots:
                curves = self.held_out_curves(algo, held_out, k, max(steps), horizon, shown.update, record)
                for s in steps:
                    stats = task_statistics(
                        curves["loss"][s], curves["score"][s], curves["loss"][0], self.metric.higher_is_better
                    )
                    row = {**self.row_fields(), "shots": k, "steps": s}
                    row.update(
                        {self.metric.key: stats["mean"], "ci95": stats["ci95"], "median": stats["median"]}
                    )
                    if self.reports_loss:
                        row["loss"] = stats["loss"]
                    row.update({"worse": stats["worse"], "diverged": stats["diverged"], "tasks": tasks})
                    if horizon is not None and s > horizon:
                        row["beyond_horizon"] = True
                    results.append(row)
        return results
