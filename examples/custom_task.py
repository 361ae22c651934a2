"""A task family defined in user code, meta-trained and evaluated through metakit's public API.

The family is quadratic regression, y = a·x² + b·x + c with a new (a, b, c) per task. It is a
subclass of ``RegressionFamily``: it says how to draw a task's parameters and its points, and
inherits the rest (the 1-40-40-1 MLP, the MSE loss, the training batches and the fixed held-out
set). ``register_family`` makes it available to ``TrainConfig(task=...)``, ``train``,
``load_run`` and ``evaluate_algorithm`` in this process; the package itself is not edited.

    python examples/custom_task.py --iterations 2000 --out runs/quadratic
"""

import argparse
import os
from pathlib import Path

import torch

from metakit.experiments.methods import METHODS
from metakit.experiments.reports.evaluate import evaluate_algorithm, format_table
from metakit.experiments.tasks import build_family, register_family
from metakit.experiments.tasks.regression.functions import RegressionFamily, uniform
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.runs import load_run
from metakit.experiments.training.trainer import train

NAME = "quadratic"


class Quadratic(RegressionFamily):
    """Tasks ``y = a·x² + b·x + c`` with a ~ U[−1, 1], b ~ U[−2, 2], c ~ U[−2, 2], x ~ U[−2, 2]."""

    a = (-1.0, 1.0)
    b = (-2.0, 2.0)
    c = (-2.0, 2.0)
    x_range = (-2.0, 2.0)

    def draw_tasks(self, tasks, generator):
        """The coefficients of each task, each of shape ``[tasks, 1, 1]``."""
        shape = (tasks, 1, 1)
        return {name: uniform(getattr(self, name), shape, generator) for name in ("a", "b", "c")}

    def draw_points(self, params, points, generator):
        """Inputs drawn uniformly from ``x_range`` and their noise-free targets."""
        x = uniform(self.x_range, (params["a"].shape[0], points, 1), generator)
        return x, self.truth(params, x)

    def truth(self, params, x):
        """``a·x² + b·x + c``."""
        return params["a"] * x**2 + params["b"] * x + params["c"]

    def plot_range(self, params):
        """The input interval."""
        return self.x_range


def main():
    """Register the family, meta-train on it, reload the run and evaluate it on held-out tasks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="meta-updates (default 2000)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/quadratic"), help="run directory (its run files are replaced)"
    )
    parser.add_argument("--method", choices=METHODS.names(), default="maml", help="default maml")
    parser.add_argument("--tasks", type=int, default=600, help="held-out tasks (default 600)")
    args = parser.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # tiny operations: one thread is fastest (the metakit CLI does the same)

    register_family(NAME, Quadratic)
    config = TrainConfig(method=args.method, task=NAME, iterations=args.iterations, log_every=50)
    summary = train(config, args.out, progress=False)
    print(f"trained {config.method} on {NAME}: {config.iterations} iterations in {summary['seconds']:.1f}s")

    config, algo, _ = load_run(args.out)
    family = build_family(config)
    results = evaluate_algorithm(algo, family, args.tasks, shots=[5, 10], steps=[0, 1, 10], seed=1)
    print(format_table({"run": str(args.out), "method": config.method, "results": results}))


if __name__ == "__main__":
    main()
