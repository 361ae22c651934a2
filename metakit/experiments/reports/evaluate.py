"""Evaluation: adapt to held-out tasks and report the family's metric with a 95% confidence interval."""

import math
from typing import Optional, Sequence

import torch

from metakit.experiments.methods import METHODS
from metakit.experiments.training.config import ConfigError
from metakit.wrappers.engines.batch import TaskBatch
from metakit.wrappers.engines.vectorized import VectorizedEngine


def mean_ci95(values: torch.Tensor):
    """Mean and the half-width of its 95% confidence interval, 1.96·std/√n."""
    values = values.double()
    n = values.numel()
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


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


def training_horizon(config) -> Optional[int]:
    """The inner steps a run's learned per-step inner rule was trained for (``config.inner_steps``),
    or ``None`` for a method without one (see ``MethodSpec.learned_inner_rule``)."""
    return config.inner_steps if METHODS.get(config.method).learned_inner_rule else None


def evaluate_algorithm(
    algo,
    family,
    tasks: int,
    shots: Sequence[int],
    steps: Sequence[int],
    seed: int,
    horizon: Optional[int] = None,
) -> list:
    """The family's metric (mean ± 95% CI over tasks) for every (shots, steps) pair on the same
    held-out tasks; classification rows also carry ``ways`` and the mean query ``loss``.

    Every row also gives the ``median`` of the metric over tasks, how many tasks ended ``worse``
    than before adapting and how many ``diverged`` (see :func:`task_statistics`). Where adaptation
    diverged on some task (a non-finite loss), the metric, CI and loss are ``None``. With a
    ``horizon`` (:func:`training_horizon`), rows with more steps than it carry
    ``"beyond_horizon": True``. Tasks are adapted ``family.eval_chunk`` at a time (each task is
    independent, so the numbers do not depend on it; it bounds the memory), on the device of the
    algorithm's parameters.

    Reinforcement-learning families (``family.kind == "rl"``) take no ``shots`` (pass none, or
    ``None``): see :func:`evaluate_returns`.
    """
    if family.kind == "rl":
        return evaluate_returns(algo, family, tasks, shots, steps, seed, horizon)
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
            stats = task_statistics(curves["loss"][s], curves["score"][s], curves["loss"][0], classification)
            row = {"ways": family.ways} if classification else {}
            row.update({"shots": k, "steps": s, family.metric: stats["mean"], "ci95": stats["ci95"]})
            row["median"] = stats["median"]
            if classification:
                row["loss"] = stats["loss"]
            row.update({"worse": stats["worse"], "diverged": stats["diverged"], "tasks": tasks})
            if horizon is not None and s > horizon:
                row["beyond_horizon"] = True
            results.append(row)
    return results


def evaluate_returns(algo, family, tasks: int, shots, steps: Sequence[int], seed: int, horizon=None) -> list:
    """Rows ``{"steps", "return", "ci95", "tasks"}`` of a reinforcement-learning family: the mean
    return per episode after that many policy-gradient steps, ± the 95% CI over the held-out tasks
    (:meth:`~metakit.experiments.tasks.rl.meta_rl.RLFamily.adaptation_returns`); ``beyond_horizon`` as
    in :func:`evaluate_algorithm`. Any ``shots`` is a :class:`ConfigError`."""
    if any(k is not None for k in shots):
        raise ConfigError(
            "--shots does not apply to reinforcement-learning runs (they adapt on sampled episodes)"
        )
    family.prepare()
    curves = family.adaptation_returns(algo, tasks, max(steps), seed)
    results = []
    for s in steps:
        mean, ci = mean_ci95(curves[s])
        row = {"steps": s, family.metric: mean, "ci95": ci, "tasks": tasks}
        if horizon is not None and s > horizon:
            row["beyond_horizon"] = True
        results.append(row)
    return results


def horizon_note(horizons) -> str:
    """The footnote of cells marked ``*``: ``horizons`` is one number of inner steps or a
    ``{method: steps}`` dict (one line, naming each method's where they differ)."""
    if isinstance(horizons, dict):
        distinct = set(horizons.values())
        if len(distinct) > 1:
            listed = ", ".join(f"{method} {steps}" for method, steps in horizons.items())
            return f"* beyond the inner steps the learned rates were trained for ({listed})"
        horizons = distinct.pop() if distinct else None
    if horizons is None:
        return "* beyond the inner steps the learned rates were trained for"
    return f"* beyond the {horizons} inner step{'s' * (horizons != 1)} the learned rates were trained for"


def format_table(report: dict) -> str:
    """A plain-text table of an evaluation report (accuracy in percent).

    The ``median``, ``worse`` and ``diverged`` columns appear only where some row has tasks that got
    worse or diverged; steps beyond the trained horizon are marked ``*``, with a footnote.
    """
    rows = report["results"]
    if rows and "return" in rows[0]:
        return _format_returns(report)
    accuracy = bool(rows) and "accuracy" in rows[0]
    extra = any(r.get("worse") or r.get("diverged") for r in rows)
    beyond = any(r.get("beyond_horizon") for r in rows)
    pad = " " if beyond else ""
    lines = [f"{report['method']} — {report['run']}"]
    tail = f"{'median':>8}  {'worse':>5}  {'diverged':>8}  " if extra else ""
    if accuracy:
        lines.append(
            f"{'ways':>4}  {'shots':>5}  {'steps':>5}{pad}  {'accuracy':>8}  {'±95% CI':>8}  {'loss':>8}  "
            f"{tail}{'tasks':>5}"
        )
    else:
        lines.append(f"{'shots':>5}  {'steps':>5}{pad}  {'MSE':>8}  {'±95% CI':>8}  {tail}{'tasks':>5}")
    for r in rows:
        steps = f"{r['steps']:>5}" + ("*" if r.get("beyond_horizon") else pad)
        tail = ""
        if extra:
            median = r.get("median")
            if median is None:
                median = "—"
            else:
                median = f"{100 * median:.2f}%" if accuracy else f"{median:.4f}"
            tail = f"{median:>8}  {r.get('worse', 0):>5}  {r.get('diverged', 0):>8}  "
        if accuracy:
            cells = (
                ("diverged", "", "")
                if r["accuracy"] is None
                else (f"{100 * r['accuracy']:.2f}%", f"{100 * r['ci95']:.2f}%", f"{r['loss']:.4f}")
            )
            lines.append(
                f"{r['ways']:>4}  {r['shots']:>5}  {steps}  {cells[0]:>8}  {cells[1]:>8}  "
                f"{cells[2]:>8}  {tail}{r['tasks']:>5}"
            )
        else:
            mse, ci = ("diverged", "") if r["mse"] is None else (f"{r['mse']:.4f}", f"{r['ci95']:.4f}")
            lines.append(f"{r['shots']:>5}  {steps}  {mse:>8}  {ci:>8}  {tail}{r['tasks']:>5}")
    if beyond:
        lines.append(horizon_note(report.get("horizon")))
    return "\n".join(lines)


def _format_returns(report: dict) -> str:
    """The table of a reinforcement-learning report: return per episode ± 95% CI per step count."""
    rows = report["results"]
    beyond = any(r.get("beyond_horizon") for r in rows)
    pad = " " if beyond else ""
    lines = [
        f"{report['method']} — {report['run']}",
        f"{'steps':>5}{pad}  {'return':>9}  {'±95% CI':>8}  {'tasks':>5}",
    ]
    for r in rows:
        steps = f"{r['steps']:>5}" + ("*" if r.get("beyond_horizon") else pad)
        lines.append(f"{steps}  {r['return']:>9.2f}  {r['ci95']:>8.2f}  {r['tasks']:>5}")
    if beyond:
        lines.append(horizon_note(report.get("horizon")))
    return "\n".join(lines)
