"""Figures, saved as PNG: the family's own (e.g. MAML Fig. 2 and 4), metric vs steps (Fig. 3) and
training curves; :func:`draw_figures` is what ``metakit plot`` and ``metakit reproduce`` draw."""

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from metakit.experiments.tasks.family import MSE, Metric
from metakit.experiments.util.errors import MetakitError
from metakit.experiments.util.figures import finish_line_plot, plt


def draw_figures(family, runs: Dict[str, tuple], curves: Dict[str, List[dict]], out: Path, shots, seed: int):
    """Every figure of runs of one family into ``out``; returns the paths written, in order.

    ``runs`` maps a label to ``(run_dir, algorithm)``, ``curves`` the same labels to their
    evaluation rows (:meth:`~metakit.experiments.tasks.family.TaskFamily.evaluate` at
    ``family.plot_steps``). The family's own figures come first (:meth:`TaskFamily.figures`),
    then ``<metric>_vs_steps.png`` and ``training_curves.png``.
    """
    out = Path(out)
    paths = list(family.figures({label: algo for label, (_, algo) in runs.items()}, out, shots, seed))
    paths.append(out / f"{family.metric.key}_vs_steps.png")
    plot_metric_vs_steps(curves, paths[-1], shots=shots, metric=family.metric, xlabel=family.steps_label)
    paths.append(out / "training_curves.png")
    plot_training_curves({label: run_dir for label, (run_dir, _) in runs.items()}, paths[-1])
    return paths


def plot_metric_vs_steps(
    results: Dict[str, List[dict]],
    path: Path,
    shots: Optional[int] = 5,
    metric: Metric = MSE,
    xlabel: str = "gradient steps at test time",
):
    """The metric against the number of inner steps, one line per method with its 95% CI band
    (rows without ``shots``, as RL's: pass ``shots=None``).

    Step counts where a method's adaptation diverged (the metric is ``None``) are left out; a log
    axis of a lower-is-better metric stops at 3× the highest value before adaptation."""
    key = metric.key
    fig, ax = plt.subplots(figsize=(6, 4))
    finite = [r for rows in results.values() for r in rows if r.get("shots") == shots and r[key] is not None]
    for name, rows in results.items():
        rows = sorted(
            (r for r in rows if r.get("shots") == shots and r[key] is not None), key=lambda r: r["steps"]
        )
        steps = [r["steps"] for r in rows]
        value = torch.tensor([r[key] for r in rows])
        ci = torch.tensor([r["ci95"] for r in rows])
        (line,) = ax.plot(steps, value, marker="o", ms=3, label=name)
        ax.fill_between(steps, value - ci, value + ci, color=line.get_color(), alpha=0.2)
    ylabel = metric.description if shots is None else f"{metric.description} ({shots}-shot)"
    # Keep the scale readable when a method diverges: from half the best value to 3× the worst
    # un-adapted one.
    limits = None
    before = [r[key] for r in finite if r["steps"] == 0]
    if metric.log_axis and not metric.higher_is_better and finite and before:
        limits = (0.5 * min(r[key] for r in finite), 3 * max(before))
    finish_line_plot(fig, ax, xlabel, ylabel, path, limits=limits, log=metric.log_axis)


class PlotError(MetakitError):
    """A run whose training log cannot be read."""


def training_curve(run_dir: Path) -> Tuple[List[dict], Optional[str]]:
    """``(records, warning)``: the meta-loss lines of the run's ``metrics.jsonl``, and one line
    saying which lines could not be read or that there are none (else ``None``). A log that is
    not a readable file is a :class:`PlotError`."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return [], f"{path} does not exist; the training curve of {run_dir} is empty"
    except (OSError, UnicodeDecodeError) as err:
        raise PlotError(f"cannot read {path}: {err.strerror or err}") from None
    records, garbled = [], 0
    for line in lines:
        try:
            record = json.loads(line)
            if record.get("diverged") or record.get("meta_loss") is None:  # None: every batch skipped
                continue
            records.append({"iteration": int(record["iteration"]), "meta_loss": float(record["meta_loss"])})
        except (ValueError, TypeError, KeyError, AttributeError):
            garbled += 1
    if garbled:
        return records, f"{path}: {garbled} of {len(lines)} lines are not metric records and are left out"
    if not records:
        return records, f"{path} has no meta-loss lines; the training curve of {run_dir} is empty"
    return records, None


def plot_training_curves(run_dirs: Dict[str, Path], path: Path):
    """Meta-loss against iteration from each run's ``metrics.jsonl`` (see :func:`training_curve`)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run_dir in run_dirs.items():
        records, _ = training_curve(run_dir)
        ax.plot([r["iteration"] for r in records], [r["meta_loss"] for r in records], label=name)
    finish_line_plot(fig, ax, "iteration", "meta-training loss (query loss)", path)
