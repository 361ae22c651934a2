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

from metakit.experiments import runs
from metakit.experiments.config import ConfigError, TrainConfig
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


def make_meta_step(config: TrainConfig, algo: torch.nn.Module, loss_fn=None):
    """``step(batch, iteration) -> loss``: fills ``.grad`` with the config's backend and MAML++ options."""
    loss_fn = loss_fn or torch.nn.functional.mse_loss
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

    def sample(self):
        """The next meta-training batch of the task stream, on the run's device."""
        c = self.config
        batch = self.family.sample(c.meta_batch, c.shots, c.query, self.generator)
        return type(batch)(*(t.to(self.device, non_blocking=True) for t in batch))


def build_training(config: TrainConfig, family=None) -> Training:
    """The seeded model, algorithm, optimizer, scheduler, task stream and meta-step of ``config``."""
    family = family or build_family(config)
    family.prepare()
    device = resolve_device(config.device)
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
    return Training(config, family, device, algo, optimizer, scheduler, generator, meta_step)


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


def train(config: TrainConfig, run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    """Meta-train ``config`` into ``run_dir`` (or continue it with ``resume``); returns a summary.

    A checkpoint is written atomically every ``config.checkpoint_every`` iterations, at the end,
    and when SIGINT/SIGTERM arrives (then :class:`Interrupted` is raised). Resuming restores the
    meta-parameters, optimizer, scheduler, task-stream RNG and the partial logging window, so a
    resumed run ends bit-for-bit where an uninterrupted one does.
    """
    run_dir = Path(run_dir)
    setup = build_training(config)
    algo, optimizer, scheduler, generator = setup.algo, setup.optimizer, setup.scheduler, setup.generator
    start, window, note = 0, [], None
    if resume:
        state, note = runs.load_latest_checkpoint(run_dir)
        algo.load_state_dict(state["algorithm"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["task_rng"])
        start, window = state["iteration"], list(state["window"])
        runs.truncate_metrics(run_dir, start)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.clear_run(run_dir)
        runs.write_json_atomic(run_dir / runs.CONFIG, config.to_dict())

    def checkpoint(done):
        runs.save_checkpoint(
            run_dir,
            {
                "config": config.to_dict(),
                "algorithm": algo.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "task_rng": generator.get_state(),
                "iteration": done,
                "window": list(window),
            },
        )

    board = tensorboard_writer(run_dir) if config.tensorboard else None
    meta_step = setup.meta_step
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
            batch = setup.sample()
            optimizer.zero_grad(set_to_none=True)
            loss = meta_step(batch, iteration)
            if not _finite(loss, algo):
                runs.append_metrics(run_dir, {"iteration": done, "diverged": True, "meta_loss": str(loss)})
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
                runs.append_metrics(run_dir, record)
                if board is not None:
                    board.add_scalar("meta_loss", record["meta_loss"], done)
                    board.add_scalar("meta_lr", record["meta_lr"], done)
                bar.set_postfix(meta_loss=f"{record['meta_loss']:.3f}")
                window = []
            if done % config.checkpoint_every == 0 or done == config.iterations or stop:
                checkpoint(done)
            if stop and done < config.iterations:
                raise Interrupted(f"stopped by signal at iteration {done}; checkpoint saved")
    bar.close()
    if board is not None:
        board.close()
    return {
        "run": str(run_dir),
        "iterations": config.iterations,
        "resumed_from": start if resume else None,
        "seconds": time.perf_counter() - clock,
        "device": str(setup.device),
        "note": note,
    }
