"""Peak resident memory of the MAML training loop (func engine) after 1,000, 5,000 and 10,000 iterations.

Usage: .venv/bin/python tools/memory_soak.py   (about two minutes on 2 cores)
"""

import resource
import time

import torch

from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.trainer import build_training


def main(iterations: int = 10_000) -> None:
    """Train the paper protocol for ``iterations`` and print the peak RSS at checkpoints."""
    torch.set_num_threads(1)
    setup, start = build_training(TrainConfig(device="cpu")), time.time()
    for iteration in range(iterations):
        setup.step(iteration)
        if iteration + 1 in (1_000, 5_000, iterations):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"{iteration + 1} iterations: peak RSS {peak:.1f} MiB ({time.time() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
