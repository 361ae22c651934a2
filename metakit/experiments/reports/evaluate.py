"""Evaluation reports: the family's metric with a 95% confidence interval, as rows and tables."""

from typing import Optional, Sequence

from metakit.experiments.methods import METHODS
from metakit.experiments.tasks.family import METRICS, Metric, format_number


def training_horizon(config) -> Optional[int]:
    """The inner steps a run's learned per-step inner rule (see ``MethodSpec.learned_inner_rule``)
    or per-step batch norm (``--per-step-bn``) was trained for (``config.inner_steps``), or
    ``None`` for a run with neither."""
    per_step = METHODS.get(config.method).learned_inner_rule or config.per_step_bn
    return config.inner_steps if per_step else None


def evaluate_algorithm(
    algo,
    family,
    tasks: int,
    shots: Sequence,
    steps: Sequence[int],
    seed: int,
    horizon: Optional[int] = None,
) -> list:
    """The family's metric (mean ± 95% CI over tasks) for every (shots, steps) pair on the same
    held-out tasks: :meth:`~metakit.experiments.tasks.family.TaskFamily.evaluate`. With a
    ``horizon`` (:func:`training_horizon`), rows with more steps than it carry
    ``"beyond_horizon": True``. Families that take no shots (reinforcement learning) take
    ``shots=[None]``."""
    family.prepare()
    return family.evaluate(algo, tasks, shots, steps, seed, horizon)


def horizon_note(horizons) -> str:
    """The footnote of cells marked ``*`` (steps beyond those a learned per-step rule or per-step
    batch norm was trained for, where the last trained step's are reused): ``horizons`` is one
    number of inner steps or a ``{method: steps}`` dict (one line, naming each method's where they
    differ)."""
    guarded = "; there a step is taken only where it lowers the task's support loss"
    if isinstance(horizons, dict):
        distinct = set(horizons.values())
        if len(distinct) > 1:
            listed = ", ".join(f"{method} {steps}" for method, steps in horizons.items())
            return f"* beyond the inner steps the runs were trained for ({listed}){guarded}"
        horizons = distinct.pop() if distinct else None
    if horizons is None:
        return f"* beyond the inner steps the runs were trained for{guarded}"
    steps = f"{horizons} inner step{'s' * (horizons != 1)}"
    return f"* beyond the {steps} the run was trained for{guarded}"


def provenance(report: dict, metric: Metric) -> str:
    """What was evaluated, in one line: the checkpoint's iteration of the run's planned
    ``iterations`` and whether training finished, or for a model selected on validation its
    iteration and validation score (by ``metric``) and how far the run has trained; then the
    held-out ``tasks`` and ``seed``."""
    done, planned = report["iteration"], report["iterations"]
    selected = report.get("selected")
    trained = report.get("trained", done)
    state = "training finished" if trained >= planned else "training not finished"
    held_out = f"{report['tasks']} held-out tasks, seed {report['seed']}"
    if not selected:
        return f"checkpoint of iteration {done} of {planned} ({state}); {held_out}"
    steps = f"{selected['steps']} inner step{'s' * (selected['steps'] != 1)}"
    return (
        f"model selected on validation: iteration {done} (validation {metric.label} "
        f"{metric.format(selected['score'])} on {selected['tasks']} episodes, {selected['shots']}-shot, "
        f"{steps}) of a run at {trained} of {planned} iterations ({state}); {held_out}"
    )


def metric_of(rows: list) -> Metric:
    """The built-in metric whose key the rows carry (``MSE`` for none)."""
    keys = set(rows[0]) if rows else set()
    return next((m for key, m in METRICS.items() if key in keys), METRICS["mse"])


def format_table(report: dict, metric: Optional[Metric] = None) -> str:
    """A plain-text table of an evaluation report, its cells formatted by ``metric`` (default: the
    built-in metric the rows carry).

    Columns: ``ways`` and ``shots`` where the rows have them, steps, the metric ± 95% CI, ``loss``
    where the rows carry it, then ``median``, ``worse`` and ``diverged`` only where some row has
    tasks that got worse or diverged, and the task count. Steps beyond the trained horizon are
    marked ``*``, with a footnote. The first line names the method and the run; for a report with
    the checkpoint's ``iteration`` (as ``metakit eval`` makes) it also says which checkpoint was
    evaluated (or which model was selected on validation), whether the run finished its
    ``iterations``, and the held-out ``tasks`` and ``seed`` (:func:`provenance`).
    """
    rows = report["results"]
    metric = metric or metric_of(rows)
    first = rows[0] if rows else {}
    lead = [key for key in ("ways", "shots") if key in first]
    with_loss = "loss" in first
    extra = any(r.get("worse") or r.get("diverged") for r in rows)
    beyond = any(r.get("beyond_horizon") for r in rows)
    pad = " " if beyond else ""
    width = max(8, len(metric.label))
    header = [f"{key:>{4 if key == 'ways' else 5}}" for key in lead] + [f"{'steps':>5}{pad}"]
    header += [f"{metric.label:>{width}}", f"{'±95% CI':>8}"] + [f"{'loss':>8}"] * with_loss
    header += [f"{'median':>8}", f"{'worse':>5}", f"{'diverged':>8}"] * extra + [f"{'tasks':>5}"]
    title = f"{report['method']} — {report['run']}"
    if "iteration" in report:
        title += f", {provenance(report, metric)}"
    lines = [title, "  ".join(header)]
    for r in rows:
        cells = [f"{r[key]:>{4 if key == 'ways' else 5}}" for key in lead]
        cells.append(f"{r['steps']:>5}" + ("*" if r.get("beyond_horizon") else pad))
        value = r[metric.key]
        if value is None:
            cells += [f"{'diverged':>{width}}", f"{'':>8}"] + [f"{'':>8}"] * with_loss
        else:
            cells += [f"{metric.format(value):>{width}}", f"{metric.format(r['ci95']):>8}"]
            if with_loss:
                cells.append(f"{format_number(r['loss'], 4):>8}")
        if extra:
            median = "—" if r.get("median") is None else metric.format(r["median"])
            cells.append(f"{median:>8}")
            cells += [f"{r.get('worse', 0):>5}", f"{r.get('diverged', 0):>8}"]
        cells.append(f"{r['tasks']:>5}")
        lines.append("  ".join(cells))
    if beyond:
        lines.append(horizon_note(report.get("horizon")))
    return "\n".join(lines)
