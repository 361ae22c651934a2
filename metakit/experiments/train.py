"""The one meta-training loop shared by every method and backend, with checkpoints and resume."""

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from metakit.experiments import distributed, runs
from metakit.experiments.config import ConfigError, TrainConfig
from metakit.experiments.distributed import World
from metakit.experiments.families import build_family
from metakit.experiments.methods import build_algorithm
from metakit.wrappers.backends import meta_backward
from metakit.wrappers.functional import multi_step_weights
from metakit.wrappers.vectorized import VectorizedEngine


class Divergence(RuntimeError):
    """The meta-loss or meta-gradient became non-finite."""


class Interrupted(RuntimeError):
    """Training was stopped by SIGINT or SIGTERM after a checkpoint was written."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else the CPU; ``cuda`` without a GPU is a :class:`ConfigError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def make_meta_step(config: TrainConfig, algo: torch.nn.Module, loss_fn: Callable):
    """``step(batch, iteration) -> loss``: fills ``.grad`` with the config's backend, MAML++ options
    and the family's task loss."""
    engine = VectorizedEngine(algo, loss_fn, compile=config.compile) if config.backend == "func" else None
    steps = config.inner_steps

    def step(batch, iteration):
        first_order = True if iteration < config.first_order_until else None
        weights = None
        if config.multi_step_loss:
            weights = multi_step_weights(iteration, steps, config.msl_anneal).tolist()
        if engine is not None:
            return engine.meta_backward(batch, steps, first_order=first_order, step_weights=weights)
        return meta_backward(
            algo, batch, steps, config.backend, first_order=first_order, step_weights=weights, loss_fn=loss_fn
        )

    return step


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
    meta_step: Callable
    world: World = World()

    def sample(self):
        """This process's slice of the next meta-training batch of the task stream, on the run's
        device (the whole batch in a single process)."""
        c = self.config
        batch = self.family.sample(c.meta_batch, c.shots, c.query, self.generator)
        start, stop = distributed.slice_bounds(c.meta_batch, self.world.rank, self.world.size)
        return type(batch)(*(t[start:stop].to(self.device, non_blocking=True) for t in batch))

    def gradient(self, iteration: int, stop: bool = False) -> tuple:
        """Fill ``.grad`` with the meta-gradient of the next batch, over all processes of the run.

        Returns ``(meta-loss, stop)``; with several processes both are agreed by all of them: the
        loss of the whole batch, and whether any process was asked to ``stop``.
        """
        batch = self.sample()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.meta_step(batch, iteration)
        if self.world.size > 1:
            loss, stop = distributed.all_reduce_grads(
                self.algo.parameters(), batch.num_tasks, self.config.meta_batch, loss, stop
            )
        return loss, stop


def build_training(config: TrainConfig, family=None, world: World = World()) -> Training:
    """The seeded model, algorithm, optimizer, scheduler, task stream and meta-step of ``config``,
    for this process of ``world``."""
    if config.meta_batch < world.size:
        raise ConfigError(
            f"--meta-batch {config.meta_batch} is smaller than the {world.size} processes of this run; "
            "every process needs at least one task"
        )
    family = family or build_family(config)
    family.prepare()
    device = resolve_device(config.device)
    if device.type == "cuda" and world.size > 1:
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"--device cuda: process {world.rank} has local rank {world.local_rank} but this machine "
                f"has {torch.cuda.device_count()} GPUs; start at most one process per GPU"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(config.seed)
    algo = build_algorithm(config, family.build_model().to(device))
    optimizer = torch.optim.Adam(algo.parameters(), lr=config.meta_lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.iterations)
        if config.cosine_lr
        else None
    )
    generator = torch.Generator().manual_seed(config.seed)
    meta_step = make_meta_step(config, algo, family.loss)
    return Training(config, family, device, algo, optimizer, scheduler, generator, meta_step, world)


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


def _finite(loss: float, algo: torch.nn.Module) -> bool:
    grads = [p.grad for p in algo.parameters() if p.grad is not None]
    return math.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


def _state(setup: Training, done: int, window: list) -> dict:
    """The global training state after ``done`` iterations: what a checkpoint holds."""
    return {
        "config": setup.config.to_dict(),
        "algorithm": setup.algo.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": None if setup.scheduler is None else setup.scheduler.state_dict(),
        "task_rng": setup.generator.get_state(),
        "iteration": done,
        "window": list(window),
    }


def _restore(setup: Training, state: dict) -> None:
    """Load a state made by :func:`_state` (a checkpoint) into ``setup``."""
    setup.algo.load_state_dict(state["algorithm"])
    setup.optimizer.load_state_dict(state["optimizer"])
    if setup.scheduler is not None:
        setup.scheduler.load_state_dict(state["scheduler"])
    setup.generator.set_state(state["task_rng"])


def _open_run(config: TrainConfig, run_dir: Path, resume: bool, held: contextlib.ExitStack) -> dict:
    """Lock the run (for as long as ``held`` lasts), then load its checkpoint or start it afresh."""
    held.enter_context(runs.lock_run(run_dir))
    if not resume:
        runs.clear_run(run_dir)
        runs.write_json_atomic(run_dir / runs.CONFIG, config.to_dict())
        return {"state": None, "note": None}
    state, note = runs.load_latest_checkpoint(run_dir)
    runs.truncate_metrics(run_dir, state["iteration"])
    return {"state": state, "note": note}


def train(config: Optional[TrainConfig], run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    """Meta-train ``config`` into ``run_dir`` (or continue it with ``resume``); returns a summary.

    A checkpoint is written atomically every ``config.checkpoint_every`` iterations, at the end,
    and when SIGINT/SIGTERM arrives (then :class:`Interrupted` is raised). Resuming restores the
    meta-parameters, optimizer, scheduler, task-stream RNG and the partial logging window, so a
    resumed run ends bit-for-bit where an uninterrupted one does. The run is locked while it
    trains (:func:`~metakit.experiments.runs.lock_run`).

    Started by ``torchrun`` (``WORLD_SIZE`` > 1), every process trains the same run on its slice
    of each meta-batch (see :mod:`metakit.experiments.distributed`). Rank 0 alone reads and writes
    ``run_dir`` and shows progress; its ``config`` and ``resume`` are the ones used (the other
    ranks may pass ``None``), and it hands the configuration and any checkpoint to the others.
    """
    run_dir = Path(run_dir)
    world = distributed.world()
    with contextlib.ExitStack() as held:
        if world.size > 1:
            held.enter_context(distributed.process_group(world))
            config = TrainConfig.from_dict(distributed.share(world, lambda: config.to_dict()))
        setup = build_training(config, world=world)
        opened = distributed.share(world, lambda: _open_run(config, run_dir, resume, held))
        start, window = 0, []
        if opened["state"] is not None:
            _restore(setup, opened["state"])
            start, window = opened["state"]["iteration"], list(opened["state"]["window"])
        if world.size > 1:
            distributed.broadcast_parameters(setup.algo.parameters())
        clock = time.perf_counter()
        _loop(setup, run_dir, start, window, progress and world.writer)
        return {
            "run": str(run_dir),
            "iterations": config.iterations,
            "resumed_from": start if opened["state"] is not None else None,
            "seconds": time.perf_counter() - clock,
            "device": str(setup.device),
            "note": opened["note"],
        }


def _loop(setup: Training, run_dir: Path, start: int, window: list, progress: bool) -> None:
    """Iterations ``start + 1 … config.iterations``; the writer logs and checkpoints them."""
    config, algo, optimizer, scheduler = setup.config, setup.algo, setup.optimizer, setup.scheduler
    writer = setup.world.writer
    board = tensorboard_writer(run_dir) if config.tensorboard and writer else None
    clock = time.perf_counter()
    bar = tqdm(
        range(start, config.iterations),
        initial=start,
        total=config.iterations,
        desc=config.method,
        disable=not progress,
        mininterval=0.5,
        leave=False,
    )
    with _stop_requests() as stop:
        for iteration in bar:
            done = iteration + 1
            loss, stopping = setup.gradient(iteration, bool(stop))
            if not _finite(loss, algo):
                if writer:
                    record = {"iteration": done, "diverged": True, "meta_loss": str(loss)}
                    runs.append_metrics(run_dir, record)
                raise Divergence(
                    f"{config.method}: non-finite meta-loss or gradient at iteration {done}; "
                    "the last checkpoint is kept"
                )
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            window.append(loss)
            if done % config.log_every == 0 or done == config.iterations:
                record = {
                    "iteration": done,
                    "meta_loss": sum(window) / len(window),
                    "meta_lr": optimizer.param_groups[0]["lr"],
                    "seconds": round(time.perf_counter() - clock, 3),
                }
                if writer:
                    runs.append_metrics(run_dir, record)
                if board is not None:
                    board.add_scalar("meta_loss", record["meta_loss"], done)
                    board.add_scalar("meta_lr", record["meta_lr"], done)
                bar.set_postfix(meta_loss=f"{record['meta_loss']:.3f}")
                window = []
            if writer and (done % config.checkpoint_every == 0 or done == config.iterations or stopping):
                runs.save_checkpoint(run_dir, _state(setup, done, window))
            if stopping and done < config.iterations:
                raise Interrupted(f"stopped by signal at iteration {done}; checkpoint saved")
    bar.close()
    if board is not None:
        board.close()
