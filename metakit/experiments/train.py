"""The one meta-training loop shared by every method and backend."""

import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from metakit.experiments import runs
from metakit.experiments.config import TrainConfig, build_algorithm
from metakit.experiments.tasks import TASKS
from metakit.wrappers.backends import meta_backward
from metakit.wrappers.functional import multi_step_weights
from metakit.wrappers.vectorized import VectorizedEngine


class Divergence(RuntimeError):
    """The meta-loss or meta-gradient became non-finite."""


def make_meta_step(config: TrainConfig, algo: torch.nn.Module):
    """``step(batch, iteration) -> loss``: fills ``.grad`` with the config's backend and MAML++ options."""
    engine = VectorizedEngine(algo) if config.backend == "func" else None
    steps = config.inner_steps

    def step(batch, iteration):
        first_order = True if iteration < config.first_order_until else None
        weights = None
        if config.multi_step_loss and config.method != "reptile":
            weights = multi_step_weights(iteration, steps, config.msl_anneal).tolist()
        if engine is not None:
            return engine.meta_backward(batch, steps, first_order=first_order, step_weights=weights)
        return meta_backward(
            algo, batch, steps, config.backend, first_order=first_order, step_weights=weights
        )

    return step


def train(config: TrainConfig, run_dir: Path, progress: bool = True) -> dict:
    """Meta-train ``config`` and write the run to ``run_dir``; returns a short summary."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / runs.METRICS).unlink(missing_ok=True)
    runs.write_json_atomic(run_dir / runs.CONFIG, config.to_dict())

    torch.manual_seed(config.seed)
    algo = build_algorithm(config, runs.build_model(config))
    optimizer = torch.optim.Adam(algo.parameters(), lr=config.meta_lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.iterations)
        if config.cosine_lr
        else None
    )
    tasks = TASKS[config.task]()
    generator = torch.Generator().manual_seed(config.seed)
    meta_step = make_meta_step(config, algo)

    start, window = time.perf_counter(), []
    bar = tqdm(
        range(config.iterations), desc=config.method, disable=not progress, mininterval=0.5, leave=False
    )
    for iteration in bar:
        batch = tasks.sample(config.meta_batch, config.shots, generator)
        optimizer.zero_grad(set_to_none=True)
        loss = meta_step(batch, iteration)
        if not math.isfinite(loss) or not all(
            torch.isfinite(p.grad).all() for p in algo.parameters() if p.grad is not None
        ):
            runs.append_metrics(run_dir, {"iteration": iteration + 1, "diverged": True, "meta_loss": loss})
            raise Divergence(
                f"{config.method}: non-finite meta-loss or gradient at iteration {iteration + 1}"
            )
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        window.append(loss)
        done = iteration + 1
        if done % config.log_every == 0 or done == config.iterations:
            record = {
                "iteration": done,
                "meta_loss": sum(window) / len(window),
                "meta_lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - start, 3),
            }
            runs.append_metrics(run_dir, record)
            bar.set_postfix(meta_loss=f"{record['meta_loss']:.3f}")
            window = []
    bar.close()
    seconds = time.perf_counter() - start
    runs.save_checkpoint(
        run_dir,
        {
            "algorithm": algo.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": config.iterations,
        },
    )
    return {"run": str(run_dir), "iterations": config.iterations, "seconds": seconds}
