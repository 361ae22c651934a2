"""Peak resident memory of the MAML training loop (func engine) after 1,000, 5,000 and 10,000 iterations.

Usage: .venv/bin/python tools/memory_soak.py   (about two minutes on 2 cores)
"""

import resource
import time

import torch

from metakit.experiments.config import TrainConfig, build_algorithm
from metakit.experiments.models import sinusoid_mlp
from metakit.experiments.tasks import Sinusoid
from metakit.experiments.train import make_meta_step


def main(iterations: int = 10_000) -> None:
    """Train the paper protocol for ``iterations`` and print the peak RSS at checkpoints."""
    torch.set_num_threads(1)
    config = TrainConfig()
    torch.manual_seed(config.seed)
    algo = build_algorithm(config, sinusoid_mlp())
    optimizer = torch.optim.Adam(algo.parameters(), lr=config.meta_lr)
    step = make_meta_step(config, algo)
    generator = torch.Generator().manual_seed(config.seed)
    tasks, start = Sinusoid(), time.time()
    for iteration in range(iterations):
        optimizer.zero_grad()
        step(tasks.sample(config.meta_batch, config.shots, generator), iteration)
        optimizer.step()
        if iteration + 1 in (1_000, 5_000, iterations):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"{iteration + 1} iterations: peak RSS {peak:.1f} MiB ({time.time() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
