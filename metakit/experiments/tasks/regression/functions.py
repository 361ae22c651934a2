"""Regression families of functions R → R: task and point draws, the held-out set, the MAML
paper's MLP, and the adaptation figure."""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from metakit.experiments.tasks.family import MSE, SupervisedFamily, held_out_generator
from metakit.wrappers.engines.batch import TaskBatch

EVAL_QUERY_POINTS = 100
"""Query points per held-out regression task (the same expected MSE as K, with less noise)."""
SUPPORT_BLOCK = 20
"""Held-out regression support points are drawn in blocks of this many, each from its own stream."""


class RegressionFamily(SupervisedFamily):
    """A regression family of functions ``R → R``; subclasses draw task parameters and points.

    Subclasses implement :meth:`draw_tasks` and :meth:`draw_points`. Training batches draw the
    tasks, then ``shots + query`` points per task, from the training generator. The held-out set
    draws each task from its own streams (:func:`held_out_generator`): the task, then
    :data:`EVAL_QUERY_POINTS` query points, then support points in blocks of
    :data:`SUPPORT_BLOCK`; the K-shot support set is the first K, so every K sees the same tasks
    and query points.
    """

    metric = MSE
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

    def loss(self, prediction, target):
        """Mean squared error."""
        return F.mse_loss(prediction, target)

    def score(self, prediction, target):
        """Mean squared error."""
        return F.mse_loss(prediction, target)

    def figures(self, algos, out, shots, seed, extension="png"):
        """The MAML paper's Fig. 2: two held-out functions, their support points and each method's
        fit before and after 1 and 10 steps (``adaptation.png``)."""
        path = Path(out) / f"adaptation.{extension}"
        plot_adaptation(algos, self, path, shots=shots or 5, seed=seed)
        return [path]

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


def adaptation_curves(algo, x_support, y_support, x_grid, steps=(1, 10)) -> Dict[int, torch.Tensor]:
    """Predictions on ``x_grid`` before adaptation (key 0) and after each of ``steps`` inner steps."""
    learner = algo.clone()
    curves = {0: learner(x_grid).detach()}
    for s in range(1, max(steps) + 1):
        learner.adapt(F.mse_loss(learner(x_support), y_support))
        if s in steps:
            curves[s] = learner(x_grid).detach()
    return curves


def plot_adaptation(
    algos: Dict[str, torch.nn.Module], family, path: Path, tasks: int = 2, shots: int = 5, seed: int = 1
):
    """One column per method, one row per held-out task of a regression ``family``: truth, support,
    before / after 1 and 10 steps."""
    from metakit.experiments.util.figures import plt, save  # matplotlib only when drawing

    held_out = family.held_out(tasks, shots, seed)
    fig, axes = plt.subplots(tasks, len(algos), figsize=(3.2 * len(algos), 2.6 * tasks), squeeze=False)
    for t in range(tasks):
        params = held_out.task_params(t)
        low, high = family.plot_range(params)
        x_grid = torch.linspace(low, high, 200).reshape(-1, 1)
        xs, ys = held_out.x_support[t], held_out.y_support[t]
        truth = family.truth(params, x_grid[None])[0]
        span = max(1.0, 1.2 * truth.abs().max().item())
        for col, (name, algo) in enumerate(algos.items()):
            ax = axes[t][col]
            curves = adaptation_curves(algo, xs, ys, x_grid)
            ax.plot(x_grid, truth, color="black", lw=2, label="ground truth")
            ax.plot(x_grid, curves[0], "--", color="tab:gray", label="before adaptation")
            ax.plot(x_grid, curves[1], color="tab:blue", label="after 1 step")
            ax.plot(x_grid, curves[10], color="tab:green", label="after 10 steps")
            ax.scatter(xs, ys, color="tab:red", marker="^", zorder=3, label=f"{shots} support points")
            ax.set_ylim(-span, span)
            if t == 0:
                ax.set_title(name)
            if t == tasks - 1:
                ax.set_xlabel("x")
            if col == 0:
                ax.set_ylabel("y")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"K = {shots} support points; {tasks} held-out tasks (seed {seed})", fontsize=9)
    save(fig, path)
