"""Statistics over held-out tasks: mean with a 95% confidence interval, median, worse and diverged counts."""

import math
from typing import Optional

import torch


def mean_ci95(values: torch.Tensor):
    """Mean and the half-width of its 95% confidence interval, 1.96·std/√n."""
    values = values.double()
    n = values.numel()
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Two methods' per-task values on the same tasks: the mean of ``a − b`` with the half-width of
    its 95% confidence interval (:func:`mean_ci95` of the per-task differences, far tighter than
    the two means' own intervals when the tasks' difficulty varies more than the methods do), and
    on how many tasks ``a`` is below ``b``."""
    mean, ci = mean_ci95(a.double() - b.double())
    return {"difference": mean, "ci95": ci, "a_lower": int((a < b).sum()), "tasks": a.numel()}


def median_or_none(values: torch.Tensor) -> Optional[float]:
    """The median of ``values`` (the mean of the two middle ones for an even count), or ``None``
    where it is not a finite number (e.g. more than half of the values are infinite)."""
    ordered = values.double().sort().values
    n = ordered.numel()
    middle = ordered[(n - 1) // 2 : n // 2 + 1].mean().item()
    return middle if math.isfinite(middle) else None


def task_statistics(
    loss: torch.Tensor, score: torch.Tensor, initial_loss: torch.Tensor, higher_is_better: bool = False
) -> dict:
    """Statistics over the tasks of one (shots, steps) cell, from per-task tensors of shape ``[tasks]``.

    * ``mean``, ``ci95``: of ``score`` over all tasks (:func:`mean_ci95`); ``None`` if any task
      diverged (non-finite ``loss``): never an average of the finite tasks only;
    * ``loss``: the mean ``loss``, ``None`` under the same rule;
    * ``median``: of ``score``, a diverged task ranking as the worst (``+∞``, or ``−∞`` where
      ``higher_is_better``); ``None`` where the median lands on a diverged task;
    * ``worse``: tasks whose ``loss`` is not at or below their ``initial_loss`` (the query loss before
      adapting), diverged tasks included;
    * ``diverged``: tasks whose ``loss`` is non-finite.
    """
    finite = torch.isfinite(loss)
    diverged = int((~finite).sum())
    worst = -math.inf if higher_is_better else math.inf
    ranked = torch.where(finite, score.double(), torch.full_like(score, worst, dtype=torch.float64))
    mean, ci = mean_ci95(score) if diverged == 0 else (None, None)
    return {
        "mean": mean,
        "ci95": ci,
        "loss": loss.double().mean().item() if diverged == 0 else None,
        "median": median_or_none(ranked),
        "worse": int((~(loss <= initial_loss)).sum()),
        "diverged": diverged,
    }
