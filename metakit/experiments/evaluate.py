"""Evaluation: adapt to held-out tasks and report the family's metric with a 95% confidence interval."""

import math
from typing import Sequence

import torch

from metakit.wrappers.backends import TaskBatch
from metakit.wrappers.enhanced import MAMLEnhanced
from metakit.wrappers.vectorized import VectorizedEngine


def mean_ci95(values: torch.Tensor):
    """Mean and the half-width of its 95% confidence interval, 1.96·std/√n."""
    values = values.double()
    n = values.numel()
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def evaluate_algorithm(
    algo, family, tasks: int, shots: Sequence[int], steps: Sequence[int], seed: int
) -> list:
    """The family's metric (mean ± 95% CI over tasks) for every (shots, steps) pair on the same
    held-out tasks; classification rows also carry ``ways`` and the mean query ``loss``.

    Where adaptation diverged on some task (a non-finite loss), the metric, CI and loss are ``None``.
    Tasks are adapted ``family.eval_chunk`` at a time (each task is independent, so the numbers do
    not depend on it; it bounds the memory), on the device of the algorithm's parameters.
    """
    family.prepare()
    held_out = family.held_out(tasks, max(shots), seed)
    engine = VectorizedEngine(algo, family.loss)
    device = next(algo.parameters()).device
    classification = family.kind == "classification"
    chunk = family.eval_chunk
    results = []
    for k in shots:
        batch = held_out.batch(k)
        chunks = [
            engine.query_curves(
                TaskBatch(*(t[i : i + chunk].to(device) for t in batch)), max(steps), family.score
            )
            for i in range(0, tasks, chunk)
        ]
        curves = {key: torch.cat([c[key] for c in chunks], 1) for key in ("loss", "score")}
        for s in steps:
            finite = bool(torch.isfinite(curves["loss"][s]).all())
            value, ci = mean_ci95(curves["score"][s]) if finite else (None, None)
            row = {"ways": family.ways} if classification else {}
            row.update({"shots": k, "steps": s, family.metric: value, "ci95": ci})
            if classification:
                row["loss"] = curves["loss"][s].double().mean().item() if finite else None
            row["tasks"] = tasks
            results.append(row)
    return results


def format_table(report: dict) -> str:
    """A plain-text table of an evaluation report (accuracy in percent)."""
    rows = report["results"]
    accuracy = bool(rows) and "accuracy" in rows[0]
    lines = [f"{report['method']} — {report['run']}"]
    if accuracy:
        lines.append(
            f"{'ways':>4}  {'shots':>5}  {'steps':>5}  {'accuracy':>8}  {'±95% CI':>8}  {'loss':>8}  "
            f"{'tasks':>5}"
        )
    else:
        lines.append(f"{'shots':>5}  {'steps':>5}  {'MSE':>8}  {'±95% CI':>8}  {'tasks':>5}")
    for r in rows:
        if accuracy:
            cells = (
                ("diverged", "", "")
                if r["accuracy"] is None
                else (f"{100 * r['accuracy']:.2f}%", f"{100 * r['ci95']:.2f}%", f"{r['loss']:.4f}")
            )
            lines.append(
                f"{r['ways']:>4}  {r['shots']:>5}  {r['steps']:>5}  {cells[0]:>8}  {cells[1]:>8}  "
                f"{cells[2]:>8}  {r['tasks']:>5}"
            )
        else:
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
            (p.detach() - (torch.eye(p.shape[0], device=p.device) if p.dim() == 2 else torch.ones_like(p)))
            .abs()
            .max()
            .item()
            for p in algo.curvature.parameters()
        )
        parts.append(f"curvature max |M − I| {drift:.4f}")
    return "; ".join(parts)
