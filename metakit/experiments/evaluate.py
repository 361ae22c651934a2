"""Evaluation: adapt to held-out tasks and report query MSE with a 95% confidence interval."""

import math
from typing import Sequence

import torch

from metakit.experiments.tasks import TASKS
from metakit.wrappers.enhanced import MAMLEnhanced
from metakit.wrappers.vectorized import VectorizedEngine


def mean_ci95(values: torch.Tensor):
    """Mean and the half-width of its 95% confidence interval, 1.96·std/√n."""
    values = values.double()
    n = values.numel()
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def evaluate_algorithm(
    algo, task: str, tasks: int, shots: Sequence[int], steps: Sequence[int], seed: int
) -> list:
    """Query MSE mean ± CI for every (shots, steps) pair on the same held-out tasks.

    Where adaptation diverged on some task (a non-finite loss), ``mse`` and ``ci95`` are ``None``.
    """
    held_out = TASKS[task]().held_out(tasks, max(shots), seed)
    engine = VectorizedEngine(algo)
    results = []
    for k in shots:
        curves = engine.query_losses(held_out.batch(k), max(steps))  # [steps + 1, tasks]
        for s in steps:
            mse, ci = mean_ci95(curves[s]) if torch.isfinite(curves[s]).all() else (None, None)
            results.append({"shots": k, "steps": s, "mse": mse, "ci95": ci, "tasks": tasks})
    return results


def format_table(report: dict) -> str:
    """A plain-text table of an evaluation report."""
    lines = [
        f"{report['method']} — {report['run']}",
        f"{'shots':>5}  {'steps':>5}  {'MSE':>8}  {'±95% CI':>8}  {'tasks':>5}",
    ]
    for r in report["results"]:
        mse, ci = ("diverged", "") if r["mse"] is None else (f"{r['mse']:.4f}", f"{r['ci95']:.4f}")
        lines.append(f"{r['shots']:>5}  {r['steps']:>5}  {mse:>8}  {ci:>8}  {r['tasks']:>5}")
    return "\n".join(lines)


def describe_learned_rates(algo) -> str:
    """One line summarising learned layerwise rates and curvature, or '' for other methods."""
    if not isinstance(algo, MAMLEnhanced):
        return ""
    parts = []
    if algo.lslr is not None:
        rates = algo.lslr.rates.detach()
        per_step = ", ".join(
            f"step {s + 1}: {rates[:, s].min():.4f}..{rates[:, s].max():.4f} (mean {rates[:, s].mean():.4f})"
            for s in range(rates.shape[1])
        )
        parts.append(f"learned rates {per_step}")
    if algo.curvature is not None:
        drift = max(
            (p.detach() - (torch.eye(p.shape[0]) if p.dim() == 2 else torch.ones_like(p))).abs().max().item()
            for p in algo.curvature.parameters()
        )
        parts.append(f"curvature max |M − I| {drift:.4f}")
    return "; ".join(parts)
