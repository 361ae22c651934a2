"""The one meta-training loop shared by every method and backend, with checkpoints and resume."""

import contextlib
import functools
import importlib.util
import math
import re
import shutil
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from metakit.experiments.methods import METHODS, build_algorithm
from metakit.experiments.tasks import build_family
from metakit.experiments.training import distributed, runs
from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.distributed import World
from metakit.experiments.util.errors import flag
from metakit.experiments.util.progress import on_terminal, silenced
from metakit.wrappers.engines import VectorizedEngine
from metakit.wrappers.rules import multi_step_weights


class Divergence(RuntimeError):
    """The meta-loss or meta-gradient was non-finite ``max_skips`` meta-batches in a row, or a
    parameter became non-finite."""


class Interrupted(RuntimeError):
    """Training was stopped by SIGINT or SIGTERM after a checkpoint was written."""


VALIDATION_SEED = 0
"""Seed of the fixed validation episodes of ``--select-on validation``, the same for every run (so
runs of different seeds are selected on the same episodes)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else the CPU; ``cuda`` without a GPU is a :class:`ConfigError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        device = flag("device")
        raise ConfigError(
            f"{device} cuda: no CUDA device is available (use {device} cpu or auto; a saved run moves with "
            f"metakit train --resume RUN {device} cpu)"
        )
    return torch.device(name)


def compiler_available(device: torch.device) -> bool:
    """Whether ``torch.compile`` can build code for ``device``: Triton for CUDA, a C++ compiler for
    the CPU. (A compilation can still fail; the engine then warns and runs eagerly.)"""
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def choose_compile(config: TrainConfig, family, device: torch.device) -> bool:
    """Whether the run's func engine compiles its meta-gradient.

    ``--compile on`` always and ``off`` never; ``auto`` compiles a run of at least
    ``family.compile_after`` iterations when a compiler is available, so that short runs (tests,
    ``make run``) do not pay for a compilation they cannot repay. Decided from the configuration
    alone, so that a resumed run uses the engine it started with.
    """
    if config.backend != "func" or config.compile == "off":
        return False
    if config.compile == "on":
        return True
    return config.iterations >= family.compile_after and compiler_available(device)


class MetaStep:
    """``step(batch, iteration) -> loss``: fills ``.grad`` through the family's engine with the
    config's MAML++ options (multi-step loss weights, derivative-order annealing).

    Args:
        config: the run's configuration.
        engine: the family's :meth:`~metakit.experiments.tasks.family.TaskFamily.meta_engine` for
            the run's algorithm.
    """

    def __init__(self, config: TrainConfig, engine):
        self.config = config
        self.meta_engine = engine

    @property
    def engine(self) -> str:
        """What computes the meta-gradients now: ``func-compiled``, ``func``, ``l2l`` or ``higher``
        (a failed compilation turns ``func-compiled`` into ``func``)."""
        return self.meta_engine.name

    def __call__(self, batch, iteration: int) -> float:
        """Fill ``.grad`` with the meta-gradient of ``batch`` at ``iteration``; returns the query loss."""
        config, steps = self.config, self.config.inner_steps
        first_order = True if iteration < config.first_order_until else None
        weights = None
        if config.multi_step_loss:
            weights = multi_step_weights(iteration, steps, config.msl_anneal).tolist()
        return self.meta_engine.meta_backward(batch, steps, first_order=first_order, step_weights=weights)


@dataclass
class Training:
    """Everything one meta-training run steps: built by :func:`build_training` for ``train``,
    ``bench`` and the tools alike."""

    config: TrainConfig
    family: object
    device: torch.device
    algo: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[object]
    generator: torch.Generator
    meta_step: MetaStep
    world: World = World()
    validation: Optional[object] = None
    """``--select-on validation``: the fixed validation episodes (the family's ``held_out`` set of
    its validation split), else ``None``."""

    def sample(self):
        """This process's slice of the next meta-training batch of the task stream, on the run's
        device (the whole batch in a single process); labelled globally for a ``transfer`` method."""
        c = self.config
        labels = {"global_labels": True} if METHODS.get(c.method).transfer else {}
        batch = self.family.sample(c.meta_batch, c.shots, c.query, self.generator, **labels)
        start, stop = distributed.slice_bounds(c.meta_batch, self.world.rank, self.world.size)
        return type(batch)(*(t[start:stop].to(self.device, non_blocking=True) for t in batch))

    @functools.cached_property
    def meta_parameters(self) -> list:
        """The algorithm's meta-parameters, listed once (walking the modules every iteration cost
        ~30 µs of a ~0.8 ms sinusoid iteration)."""
        return list(self.algo.parameters())

    @functools.cached_property
    def moments_engine(self) -> Optional[VectorizedEngine]:
        """The engine that measures the batch moments a model with per-step running statistics
        records (``record_moments``, e.g. ``--per-step-bn``), whatever engine computes the
        meta-gradients; ``None`` for other models."""
        if not hasattr(self.algo.module, "record_moments"):
            return None
        return VectorizedEngine(self.algo, self.family.loss)

    def record_moments(self, batch) -> None:
        """Move a model's per-step running statistics towards this meta-batch's moments (the mean
        over the tasks of all processes), before the outer step; nothing for other models."""
        if self.moments_engine is None:
            return
        moments = self.moments_engine.step_moments(batch, self.config.inner_steps)
        if self.world.size > 1:
            moments = distributed.all_reduce_mean(moments, batch.num_tasks, self.config.meta_batch)
        self.algo.module.record_moments(moments)

    def step(self, iteration: int, stop: bool = False) -> tuple:
        """Meta-training iteration ``iteration``: sample the next batch, zero the gradients, fill
        ``.grad`` with the meta-gradient over all processes of the run, clip it, record per-step
        running statistics (:meth:`record_moments`), then step the optimizer and the scheduler. A
        batch whose meta-loss or gradient is non-finite is skipped: no optimizer step and no
        statistics (the scheduler still steps, so its rate stays a function of the iteration).
        ``.grad`` keeps the gradient that was stepped on, or skipped.

        Returns ``(meta-loss, stop, skipped)``; with several processes all three are agreed by all
        of them: the loss of the whole batch, whether any process was asked to ``stop``, and
        whether the batch was skipped (decided from the all-reduced loss and gradient).
        """
        batch = self.sample()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.meta_step(batch, iteration)
        if self.world.size > 1:
            loss, stop = distributed.all_reduce_grads(
                self.meta_parameters, batch.num_tasks, self.config.meta_batch, loss, stop
            )
        skipped = not (math.isfinite(loss) and _all_finite([p.grad for p in self.meta_parameters]))
        if not skipped:
            self.record_moments(batch)
            if self.config.clip_grad:  # after the all-reduce: every process clips alike
                torch.nn.utils.clip_grad_norm_(self.meta_parameters, self.config.clip_grad)
            self.optimizer.step()
        if self.scheduler is not None:
            with warnings.catch_warnings():  # skipping an optimizer step is meant: no warning for it
                warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"))
                self.scheduler.step()
        return loss, stop, skipped


def build_training(config: TrainConfig, family=None, world: World = World()) -> Training:
    """The seeded model, algorithm, optimizer, scheduler, task stream and meta-step of ``config``,
    for this process of ``world``."""
    if config.meta_batch < world.size:
        raise ConfigError(
            f"{flag('meta_batch')} {config.meta_batch} is smaller than the {world.size} processes of this "
            "run; every process needs at least one task"
        )
    family = family or build_family(config)
    family.prepare()
    device = resolve_device(config.device)
    if device.type == "cuda" and world.size > 1:
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"{flag('device')} cuda: process {world.rank} has local rank {world.local_rank} but this "
                f"machine has {torch.cuda.device_count()} GPUs; start at most one process per GPU"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(config.seed)
    algo = build_algorithm(config, family, device)
    if config.outer_optimizer == "sgd-annealed":  # Reptile's: ε_i = ε·(1 − i/N) at iteration i
        optimizer = torch.optim.SGD(algo.parameters(), lr=config.meta_lr)
        anneal = lambda i: 1 - i / config.iterations  # noqa: E731 (its state is last_epoch alone)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, anneal)
    else:
        optimizer = torch.optim.Adam(algo.parameters(), lr=config.meta_lr, fused=True)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.iterations)
            if config.cosine_lr
            else None
        )
    generator = torch.Generator().manual_seed(config.seed)
    compile = choose_compile(config, family, device)
    if compile:  # a fresh in-memory cache per run: earlier runs' entries count toward dynamo's
        torch.compiler.reset()  # recompile limit (the on-disk caches keep recompiling cheap)
    meta_step = MetaStep(config, family.meta_engine(algo, config.backend, compile))
    validation = None
    if config.select_on == "validation":  # built by every process, so a data error stops them all
        validation = family.held_out(config.select_tasks, config.shots, VALIDATION_SEED, split="validation")
    return Training(
        config, family, device, algo, optimizer, scheduler, generator, meta_step, world, validation
    )


def validation_score(setup: Training) -> Optional[float]:
    """The family's metric (mean over the fixed validation episodes) of the meta-parameters now,
    adapted as in training: the training shots and inner steps. ``None`` where adaptation diverged
    on some episode."""
    config = setup.config
    with silenced():  # no bar of its own inside the training's
        rows = setup.family.score_held_out(
            setup.algo, setup.validation, config.select_tasks, [config.shots], [config.inner_steps]
        )
    return rows[0][setup.family.metric.key]


@dataclass
class Selection:
    """``--select-on validation``: the best model on the validation episodes so far, ``best``
    (``{"iteration", "metric", "score", "algorithm"}``, the meta-parameters copied onto the CPU;
    ``None`` before the first validation). Part of a checkpoint, so that a resumed run selects on."""

    best: Optional[dict] = None

    def consider(self, iteration: int, score: Optional[float], metric, algo: torch.nn.Module) -> bool:
        """Keep ``algo``'s meta-parameters of ``iteration`` if their ``score`` beats the best so far
        (by ``metric``; a tie keeps the earlier model, a diverged score, ``None``, never wins);
        returns whether they were kept."""
        if score is None or not math.isfinite(score):
            return False
        if self.best is not None:
            best = self.best["score"]
            if not (score > best if metric.higher_is_better else score < best):
                return False
        copy = {name: t.detach().to("cpu", copy=True) for name, t in algo.state_dict().items()}
        self.best = {"iteration": iteration, "metric": metric.key, "score": score, "algorithm": copy}
        return True


def selection_interval(config: TrainConfig) -> int:
    """Iterations between validations of ``--select-on validation``: ``--select-every``, by
    default ``--checkpoint-every``."""
    return config.select_every or config.checkpoint_every


@contextlib.contextmanager
def _stop_requests():
    """Turn SIGINT/SIGTERM into a flag the loop checks between iterations."""
    received = []
    handler = lambda signum, frame: received.append(signum)  # noqa: E731
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def tensorboard_writer(run_dir: Path):
    """A TensorBoard ``SummaryWriter`` logging to ``RUN/tensorboard`` (needs the tensorboard package)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))


def _all_finite(tensors) -> bool:
    """Whether every entry of every tensor (``None`` entries left out) is finite (one device sync).

    One fused check per device, the one mixed-precision's gradient scaler uses
    (``torch._amp_foreach_non_finite_check_and_unscale_``, with a scale of exactly 1, so the tensors
    keep their values bit for bit): about 2.5 µs for the sinusoid MLP's gradients, against ~38 µs
    for a check per tensor. Per entry, so nothing can overflow.
    """
    by_device = {}
    for t in tensors:
        if t is not None:
            by_device.setdefault(t.device, []).append(t)
    for device, group in by_device.items():
        found = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(group, found, torch.ones(1, device=device))
        if found.item():
            return False
    return True


@dataclass
class Skips:
    """Meta-batches skipped for a non-finite meta-loss or gradient: in all, in a row now, and since
    the last line of ``metrics.jsonl``. Part of a checkpoint, so that a resumed run counts on."""

    total: int = 0
    in_row: int = 0
    logged: int = 0

    def count(self, skipped: bool) -> None:
        """Count one iteration, skipped or not."""
        self.total += skipped
        self.logged += skipped
        self.in_row = self.in_row + 1 if skipped else 0


def _state(setup: Training, done: int, window: list, skips: Skips, selection: Selection) -> dict:
    """The global training state after ``done`` iterations: what a checkpoint holds."""
    return {
        "config": setup.config.to_dict(),
        "algorithm": setup.algo.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": None if setup.scheduler is None else setup.scheduler.state_dict(),
        "task_rng": setup.generator.get_state(),
        "iteration": done,
        "window": list(window),
        "skips": asdict(skips),
        "selection": selection.best,
    }


def _restore(setup: Training, state: dict) -> None:
    """Load a state made by :func:`_state` (a checkpoint) into ``setup``."""
    setup.algo.load_state_dict(state["algorithm"])
    setup.optimizer.load_state_dict(state["optimizer"])
    if setup.scheduler is not None:
        setup.scheduler.load_state_dict(state["scheduler"])
        if state["config"]["iterations"] != setup.config.iterations:
            _rescale_schedule(setup, state["iteration"])
    setup.generator.set_state(state["task_rng"])


def _rescale_schedule(setup: Training, done: int) -> None:
    """Put an annealed meta learning rate of a run whose ``iterations`` changed after ``done`` of
    them on the schedule of the new length: from here on the rate is the one a run of the new
    length has at each iteration (cosine: ``meta_lr·(1 + cos(π i/N))/2``; sgd-annealed:
    ``meta_lr·(1 − i/N)``), so it jumps at the resume and reaches zero at the new end."""
    config, scheduler = setup.config, setup.scheduler
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        scheduler.T_max = config.iterations
        factor = (1 + math.cos(math.pi * done / config.iterations)) / 2
    else:  # sgd-annealed: the LambdaLR of build_training reads config.iterations already
        factor = 1 - done / config.iterations
    for group in setup.optimizer.param_groups:
        group["lr"] = config.meta_lr * factor


def _open_run(config: TrainConfig, run_dir: Path, resume: bool, held: contextlib.ExitStack) -> dict:
    """Lock the run (for as long as ``held`` lasts), then load its checkpoint or start it afresh, as
    :func:`~metakit.experiments.training.runs.start_or_resume` decided."""
    held.enter_context(runs.lock_run(run_dir))
    if not resume:
        runs.clear_run(run_dir)
        runs.write_json_atomic(run_dir / runs.CONFIG, config.to_dict())
        return {"state": None, "note": None}
    state, note = runs.load_latest_checkpoint(run_dir)
    (run_dir / runs.EVALUATION).unlink(missing_ok=True)  # the model is about to change
    if runs.read_config(run_dir) != config:  # extended (or shortened), or moved to another device
        runs.write_json_atomic(run_dir / runs.CONFIG, config.to_dict())
    repaired = runs.truncate_metrics(run_dir, state["iteration"])
    if config.select_on == "validation":  # the selection as of the checkpoint: not one a crash left after it
        runs.save_selected(run_dir, state.get("selection"))
    return {"state": state, "note": "; ".join(n for n in (note, repaired) if n) or None}


def train(
    config: Optional[TrainConfig],
    run_dir: Path,
    progress: bool = True,
    resume: bool = False,
    force: bool = True,
    iterations: Optional[int] = None,
    placement: Optional[dict] = None,
) -> dict:
    """Meta-train ``config`` into ``run_dir``, or continue it; returns a summary.

    Whether the run starts afresh, continues from its checkpoint or is complete already is
    :func:`~metakit.experiments.training.runs.start_or_resume`'s decision with ``resume`` and
    ``force``: by default a new run replaces whatever ``run_dir`` holds; ``resume`` continues a
    checkpoint of the same run where there is one, and ``config=None`` the run's own config. A
    complete run returns at once (``resumed_from`` is its ``iterations``; ``device`` and
    ``engine`` are ``None``). With ``config=None``, ``iterations`` replaces the run's own number of
    iterations (its ``config.json`` is rewritten): a finished or stopped run continues to the new
    end, where an annealed ``meta_lr`` (``cosine_lr``, ``sgd-annealed``) now reaches zero; and
    ``placement`` (``{"device": ..., "compile": ...}``) moves it to another device or engine mode.

    A checkpoint is written atomically every ``config.checkpoint_every`` iterations, at the end,
    and when SIGINT/SIGTERM arrives (then :class:`Interrupted` is raised). A meta-batch whose loss
    or gradient is non-finite is skipped and counted (``skipped`` in the summary and on each line
    of ``metrics.jsonl``); ``config.max_skips`` of them in a row raise :class:`Divergence`.
    Resuming restores the meta-parameters, optimizer, scheduler, task-stream RNG, the partial
    logging window and the skip counts, so a resumed run ends bit-for-bit where an uninterrupted
    one does. The run is locked while it trains (:func:`~metakit.experiments.training.runs.lock_run`).
    The summary's ``meta_loss`` is that of the last line of ``metrics.jsonl`` (the mean over its
    ``meta_batches`` kept meta-batches; ``None`` where all were skipped or nothing was trained).
    With ``config.select_on == "validation"`` the model is scored on fixed validation episodes
    every :func:`selection_interval` iterations and the best is kept in ``selected.pt`` (the
    summary's ``selected``: its ``iteration``, ``metric`` and ``score``); a resume continues the
    selection from the checkpoint's.

    Without ``progress`` nothing is drawn on stderr, not even the progress of preparing data.

    Started by ``torchrun`` (``WORLD_SIZE`` > 1), every process trains the same run on its slice
    of each meta-batch (see :mod:`metakit.experiments.training.distributed`). Rank 0 alone reads and writes
    ``run_dir`` and shows progress; its ``config``, ``resume`` and ``force`` are the ones used (the
    other ranks may pass ``None``), and it hands the configuration and any checkpoint to the others.
    """
    run_dir = Path(run_dir)
    world = distributed.world()

    def decide():
        chosen, resume_from = runs.start_or_resume(
            run_dir, config, resume=resume, force=force, iterations=iterations, placement=placement
        )
        return chosen.to_dict(), resume_from

    with contextlib.ExitStack() as held:
        held.enter_context(silenced(not (progress and world.writer)))  # e.g. rendering the glyph set
        if world.size > 1:
            held.enter_context(distributed.process_group(world))
        chosen, resume_from = distributed.share(world, decide)
        config = TrainConfig.from_dict(chosen)
        summary = {
            "run": str(run_dir),
            "method": config.method,
            "task": config.task,
            "iterations": config.iterations,
        }
        if resume_from is not None and resume_from >= config.iterations:  # complete: nothing to do
            if iterations is not None and world.writer:  # shortened to where it stopped: say so on disk
                with runs.lock_run(run_dir):
                    if runs.read_config(run_dir).iterations != config.iterations:
                        runs.write_json_atomic(run_dir / runs.CONFIG, config.to_dict())
            done = {
                "resumed_from": resume_from,
                **dict.fromkeys(
                    ("device", "engine", "note", "skipped", "meta_loss", "meta_batches", "selected")
                ),
                "seconds": 0.0,
            }
            return {**summary, **done}
        setup = build_training(config, world=world)
        setup.family.check_held_out(config.shots)  # refused now, not after training for nothing
        opened = distributed.share(world, lambda: _open_run(config, run_dir, resume_from is not None, held))
        start, window, skips, selection = 0, [], Skips(), Selection()
        if opened["state"] is not None:
            _restore(setup, opened["state"])
            start, window = opened["state"]["iteration"], list(opened["state"]["window"])
            skips = Skips(**opened["state"].get("skips", {}))  # none in checkpoints written before skipping
            selection = Selection(opened["state"].get("selection"))
        if world.size > 1:
            distributed.broadcast_parameters(setup.algo.parameters())
        clock = time.perf_counter()
        last = _loop(setup, run_dir, start, window, skips, selection, progress and world.writer)
        return {
            **summary,
            "resumed_from": start if opened["state"] is not None else None,
            "seconds": time.perf_counter() - clock,
            "device": str(setup.device),
            "engine": setup.meta_step.engine,
            "note": opened["note"],
            "skipped": skips.total,
            "meta_loss": last["meta_loss"],
            "meta_batches": last["meta_batches"],
            "selected": None if selection.best is None else _selected(selection.best),
        }


def _selected(best: dict) -> dict:
    """The selected model's iteration, metric and score (its meta-parameters left out)."""
    return {key: best[key] for key in ("iteration", "metric", "score")}


def _validate(setup: Training, run_dir: Path, done: int, selection: Selection, board) -> dict:
    """Score the model of iteration ``done`` on the validation episodes, keep it in ``selection``
    and ``selected.pt`` if it is the best so far, and return what ``metrics.jsonl`` records:
    ``{"validation_<metric>": score, "selected_iteration": the best one's iteration}``."""
    score, metric = validation_score(setup), setup.family.metric
    if selection.consider(done, score, metric, setup.algo):
        runs.save_selected(run_dir, selection.best)
    if board is not None and score is not None:
        board.add_scalar(f"validation_{metric.key}", score, done)
    best = None if selection.best is None else selection.best["iteration"]
    return {f"validation_{metric.key}": score, "selected_iteration": best}


def _loop(
    setup: Training,
    run_dir: Path,
    start: int,
    window: list,
    skips: Skips,
    selection: Selection,
    progress: bool,
) -> dict:
    """Iterations ``start + 1 … config.iterations``; the writer logs and checkpoints them, and
    ``skips`` counts the skipped ones. With ``--select-on validation`` the writer also scores the
    model on the validation episodes every :func:`selection_interval` iterations and at the last,
    before that iteration's checkpoint, and keeps the best in ``selection`` and ``selected.pt``.
    Returns the last logged ``meta_loss`` and the number of ``meta_batches`` it averages.

    With ``progress``, a bar on stderr where stderr is a terminal; elsewhere (a log file) one line
    per logged iteration instead of the bar's carriage-return frames."""
    config, algo, optimizer = setup.config, setup.algo, setup.optimizer
    writer = setup.world.writer
    board = tensorboard_writer(run_dir) if config.tensorboard and writer else None
    clock = time.perf_counter()
    saved = start  # the iteration of the newest checkpoint (0: none yet)
    last = {"meta_loss": None, "meta_batches": 0}
    lines = progress and not on_terminal()
    bar = tqdm(
        range(start, config.iterations),
        initial=start,
        total=config.iterations,
        desc=config.method,
        disable=not progress or lines,
        mininterval=0.5,
        leave=False,
    )
    with _stop_requests() as stop:
        for iteration in bar:
            done = iteration + 1
            loss, stopping, skipped = setup.step(iteration, bool(stop))
            skips.count(skipped)
            checkpoint = done % config.checkpoint_every == 0 or done == config.iterations or stopping
            # A skipped batch changed no parameter; every process skips alike (the loss and the
            # gradient are the all-reduced ones), so all of them stop together. A checkpoint must
            # never hold a NaN: the parameters are checked before one is written.
            blown = skips.in_row >= config.max_skips
            if blown or (checkpoint and not _all_finite(algo.parameters())):
                if writer:
                    record = {"iteration": done, "diverged": True, "meta_loss": str(loss)}
                    runs.append_metrics(run_dir, {**record, "skipped": skips.logged})
                what = (
                    f"non-finite meta-loss or gradient at iteration {done}, {skips.in_row} in a row "
                    f"({flag('max_skips')} {config.max_skips})"
                    if blown
                    else f"a non-finite parameter at iteration {done}"
                )
                kept = f"the checkpoint of iteration {saved} is kept"
                if not saved:
                    kept = "no checkpoint was written"
                raise Divergence(f"{config.method}: {what}; {kept}")
            if not skipped:
                window.append(loss)
            validated = {}  # the metrics of a validation at this iteration
            due = done % selection_interval(config) == 0 or done == config.iterations
            if writer and setup.validation is not None and due:
                validated = _validate(setup, run_dir, done, selection, board)
            if done % config.log_every == 0 or done == config.iterations:
                record = {
                    "iteration": done,
                    "meta_loss": sum(window) / len(window) if window else None,  # None: all skipped
                    "skipped": skips.logged,
                    "meta_lr": optimizer.param_groups[0]["lr"],
                    "seconds": round(time.perf_counter() - clock, 3),
                    "engine": setup.meta_step.engine,
                    **validated,
                }
                if writer:
                    runs.append_metrics(run_dir, record)
                shown = math.nan if record["meta_loss"] is None else record["meta_loss"]
                if board is not None:
                    board.add_scalar("meta_loss", shown, done)
                    board.add_scalar("meta_lr", record["meta_lr"], done)
                bar.set_postfix(meta_loss=f"{shown:.3f}", skipped=skips.total)
                if lines:
                    measured = ""
                    if validated:
                        metric = setup.family.metric
                        score = validated[f"validation_{metric.key}"]
                        measured = f", validation {metric.label} {metric.format(score)}"
                    print(
                        f"{config.method}: iteration {done}/{config.iterations}, meta-loss {shown:.4f}, "
                        f"{skips.total} skipped{measured}, {record['seconds']:.1f}s",
                        file=sys.stderr,
                        flush=True,
                    )
                last = {"meta_loss": record["meta_loss"], "meta_batches": len(window)}
                window, skips.logged = [], 0
            elif validated:  # measured between two logged iterations: a line of its own
                runs.append_metrics(run_dir, {"iteration": done, **validated})
            if writer and checkpoint:
                runs.save_checkpoint(run_dir, _state(setup, done, window, skips, selection))
                saved = done
            if stopping and done < config.iterations:
                raise Interrupted(f"stopped by signal at iteration {done}; checkpoint saved in {run_dir}")
    bar.close()
    if board is not None:
        board.close()
    return last
