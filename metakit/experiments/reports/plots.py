"""Figures, saved as PNG: adaptation (MAML Fig. 2; regression), metric vs steps (Fig. 3), training curves."""

import json
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from metakit.experiments.tasks.family import held_out_generator  # noqa: E402

DPI = 100


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
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_metric_vs_steps(results: Dict[str, List[dict]], path: Path, shots: int = 5, metric: str = "mse"):
    """The metric (``mse`` on a log axis, ``accuracy``, or an RL ``return``, whose rows have no
    ``shots``: pass ``shots=None``) against the number of inner steps, one line per method with its
    95% CI band.

    Step counts where a method's adaptation diverged (the metric is ``None``) are left out; an MSE
    axis stops at 3× the highest MSE before adaptation."""
    fig, ax = plt.subplots(figsize=(6, 4))
    finite = [
        r for rows in results.values() for r in rows if r.get("shots") == shots and r[metric] is not None
    ]
    for name, rows in results.items():
        rows = sorted(
            (r for r in rows if r.get("shots") == shots and r[metric] is not None), key=lambda r: r["steps"]
        )
        steps = [r["steps"] for r in rows]
        value = torch.tensor([r[metric] for r in rows])
        ci = torch.tensor([r["ci95"] for r in rows])
        (line,) = ax.plot(steps, value, marker="o", ms=3, label=name)
        ax.fill_between(steps, value - ci, value + ci, color=line.get_color(), alpha=0.2)
    xlabel = "gradient steps at test time"
    if metric == "return":
        xlabel = "policy-gradient steps at test time"
        _finish_plot(fig, ax, xlabel, "mean return per episode", path, log=False)
        return
    if metric == "accuracy":
        _finish_plot(fig, ax, xlabel, f"query accuracy ({shots}-shot)", path, log=False)
        return
    # Keep the scale readable when a method diverges: from half the best MSE to 3× the worst
    # un-adapted one.
    limits = None
    if finite:
        limits = (0.5 * min(r["mse"] for r in finite), 3 * max(r["mse"] for r in finite if r["steps"] == 0))
    _finish_plot(fig, ax, xlabel, f"query MSE ({shots}-shot)", path, limits=limits)


def plot_paths(runs: Dict[str, tuple], path: Path, tasks: int = 3, seed: int = 1, shown: int = 3):
    """2D navigation (MAML Fig. 4, left): the paths of ``shown`` episodes of each run's policy before
    adaptation and after each evaluated number of policy-gradient steps, on ``tasks`` held-out
    goals (the evaluation's goals, episodes and step sizes); one column per run, one row per goal.

    ``runs`` maps a label to ``(algorithm, family)`` (an RL family with ``position_observations``).
    """
    fig, axes = plt.subplots(tasks, len(runs), figsize=(3.2 * len(runs), 3.2 * tasks), squeeze=False)
    for col, (name, (algo, family)) in enumerate(runs.items()):
        goals = family.held_out_goals(tasks, seed)
        steps = max(family.eval_protocol["steps"])
        sampled = family.adaptation(algo, goals, steps, held_out_generator(seed, 0, 1))
        colors = plt.cm.viridis(torch.linspace(0.0, 0.9, steps + 1).tolist())
        for t in range(tasks):
            ax = axes[t][col]
            for k, episodes in enumerate(sampled.trajectories):
                for j in range(shown):
                    xy = episodes.observations[t, j, : int(episodes.valid[t, j].sum()), :2]
                    label = None
                    if j == 0:
                        label = "before adaptation" if k == 0 else f"after {k} step{'s' * (k > 1)}"
                    ax.plot(xy[:, 0], xy[:, 1], color=colors[k], lw=1, alpha=0.8, label=label)
            ax.scatter(*goals[t, :2].tolist(), marker="*", s=120, color="tab:red", zorder=3, label="goal")
            ax.set_aspect("equal", adjustable="datalim")
            if t == 0:
                ax.set_title(name)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_training_curves(run_dirs: Dict[str, Path], path: Path):
    """Meta-loss against iteration from each run's ``metrics.jsonl``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run_dir in run_dirs.items():
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        records = [r for r in records if "meta_loss" in r and not r.get("diverged")]
        ax.plot([r["iteration"] for r in records], [r["meta_loss"] for r in records], label=name)
    _finish_plot(fig, ax, "iteration", "meta-training loss (query loss)", path)


def _finish_plot(fig, ax, xlabel: str, ylabel: str, path: Path, limits=None, log: bool = True) -> None:
    """Label, log-scale (within ``limits`` if given), legend and grid a line chart; save and free it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if limits is not None:
        ax.set_ylim(*limits)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
