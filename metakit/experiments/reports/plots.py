"""Figures, saved as PNG, PDF or SVG: the family's own (e.g. MAML Fig. 2 and 4), metric vs steps
(Fig. 3) and training curves; :func:`draw_figures` is what ``metakit plot`` and ``metakit
reproduce`` draw."""

import json
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from metakit.experiments.reports.evaluate import horizon_note, training_horizon
from metakit.experiments.tasks.family import MSE, CurveAxis, Metric
from metakit.experiments.training.runs import read_config
from metakit.experiments.util.errors import MetakitError
from metakit.experiments.util.figures import finish_line_plot, plt

MARKED_UP_TO = 25
"""Training curves with at most this many logged points mark each point (one point still shows)."""


def draw_figures(
    family,
    runs: Dict[str, tuple],
    curves: Dict[str, List[dict]],
    out: Path,
    shots,
    seed: int,
    extension="png",
):
    """Every figure of runs of one family into ``out`` as ``extension`` files (png, pdf, svg);
    returns the paths written, in order.

    ``runs`` maps a label to ``(run_dir, algorithm)``, ``curves`` the same labels to their
    evaluation rows (:meth:`~metakit.experiments.tasks.family.TaskFamily.evaluate` at
    ``family.plot_steps``, with ``beyond_horizon`` where it applies). The family's own figures come
    first (:meth:`TaskFamily.figures`), then ``<metric>_vs_steps`` and ``training_curves``.
    """
    out = Path(out)
    algos = {label: algo for label, (_, algo) in runs.items()}
    paths = list(family.figures(algos, out, shots, seed, extension))
    configs = {label: read_config(run_dir) for label, (run_dir, _) in runs.items()}
    paths.append(out / f"{family.metric.key}_vs_steps.{extension}")
    plot_metric_vs_steps(
        curves,
        paths[-1],
        shots=shots,
        metric=family.metric,
        xlabel=family.steps_label,
        seed=seed,
        horizons={label: training_horizon(config) for label, config in configs.items()},
    )
    paths.append(out / f"training_curves.{extension}")
    plot_training_curves(
        {label: run_dir for label, (run_dir, _) in runs.items()},
        paths[-1],
        axes={label: family.training_curve_axis(algo.objective) for label, algo in algos.items()},
        settings={label: training_setting(config) for label, config in configs.items()},
    )
    return paths


def training_setting(config) -> str:
    """What a run trained on, for figure titles: ``5-way, K = 1, meta-batch 32, seed 0``."""
    parts = [] if config.ways is None else [f"{config.ways}-way"]
    parts += [] if config.shots is None else [f"K = {config.shots}"]
    return ", ".join(parts + [f"meta-batch {config.meta_batch}", f"seed {config.seed}"])


def plot_metric_vs_steps(
    results: Dict[str, List[dict]],
    path: Path,
    shots: Optional[int] = 5,
    metric: Metric = MSE,
    xlabel: str = "gradient steps at test time",
    seed: Optional[int] = None,
    horizons: Optional[Dict[str, Optional[int]]] = None,
):
    """The metric against the number of inner steps, one line per method with its 95% CI band
    (rows without ``shots``, as RL's: pass ``shots=None``); the title gives the ways, shots,
    held-out tasks and ``seed``.

    A percent metric is shown in percent, as the tables show it, with a line at chance where the
    metric has one (``1 / ways``). Steps beyond the inner steps a learned rule was trained for
    (rows with ``beyond_horizon``, ``*`` in the tables) are drawn as stars on a dashed line, with the
    tables' footnote (worded from ``horizons``, label → trained steps) in the legend. Step counts
    where a method's adaptation diverged (the metric is ``None``) are left out; a log axis of a
    lower-is-better metric stops at 3× the highest value before adaptation."""
    key, scale = metric.key, 100 if metric.percent else 1
    fig, ax = plt.subplots(figsize=(6, 4))
    finite = [r for rows in results.values() for r in rows if r.get("shots") == shots and r[key] is not None]
    marked = {}
    for name, rows in results.items():
        rows = sorted(
            (r for r in rows if r.get("shots") == shots and r[key] is not None), key=lambda r: r["steps"]
        )
        steps = [r["steps"] for r in rows]
        value = scale * torch.tensor([r[key] for r in rows], dtype=torch.float64)
        ci = scale * torch.tensor([r["ci95"] for r in rows], dtype=torch.float64)
        within = sum(1 for r in rows if not r.get("beyond_horizon"))
        (line,) = ax.plot(steps[:within], value[:within], marker="o", ms=4, label=name)
        if within < len(rows):  # the rows are sorted by steps, so those beyond the horizon come last
            color, start = line.get_color(), max(within - 1, 0)
            ax.plot(steps[start:], value[start:], ls="--", color=color)
            ax.plot(steps[within:], value[within:], ls="none", marker="*", ms=9, color=color)
            marked[name] = (horizons or {}).get(name)
        ax.fill_between(steps, value - ci, value + ci, color=line.get_color(), alpha=0.2)
    if marked:
        note = horizon_note(marked if None not in marked.values() else None).removeprefix("* ")
        ax.plot([], [], ls="--", marker="*", ms=9, color="gray", label="\n".join(textwrap.wrap(note, 60)))
    if metric.chance_is_one_in_ways:
        for ways in sorted({r["ways"] for r in finite if "ways" in r}):
            chance = metric.format(1 / ways, 0)
            ax.axhline(scale / ways, color="gray", ls=":", lw=1.2, label=f"chance, 1/{ways} ({chance})")
    ylabel = metric.description + " (%)" * metric.percent
    limits = None  # keep the scale readable when a method diverges: half the best to 3× the worst un-adapted
    before = [r[key] for r in finite if r["steps"] == 0]
    if metric.log_axis and not metric.higher_is_better and finite and before:
        limits = (0.5 * scale * min(r[key] for r in finite), 3 * scale * max(before))
    title = _evaluation_title(finite, shots, seed)
    finish_line_plot(fig, ax, xlabel, ylabel, path, limits=limits, log=metric.log_axis, title=title)


def _evaluation_title(rows: List[dict], shots, seed) -> str:
    """``5-way 1-shot, 600 held-out tasks, seed 1`` for the rows of a metric-vs-steps figure."""
    ways = sorted({r["ways"] for r in rows if "ways" in r})
    tasks = sorted({r["tasks"] for r in rows})
    setting = " ".join(
        [f"{'/'.join(map(str, ways))}-way"] * bool(ways) + [f"{shots}-shot"] * (shots is not None)
    )
    parts = [setting] * bool(setting) + [f"{'/'.join(map(str, tasks))} held-out tasks"] * bool(tasks)
    return ", ".join(parts + [f"seed {seed}"] * (seed is not None))


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


def plot_training_curves(
    run_dirs: Dict[str, Path],
    path: Path,
    axes: Optional[Dict[str, CurveAxis]] = None,
    settings: Optional[Dict[str, str]] = None,
):
    """The logged meta-loss against iteration from each run's ``metrics.jsonl`` (see
    :func:`training_curve`), shown as each run's ``axes`` entry says (its label, sign and scale;
    default: the meta-loss itself on a log axis). Runs of at most :data:`MARKED_UP_TO` points
    mark them. ``settings`` (label → :func:`training_setting`) titles the figure where the runs
    share one, and labels each run where they differ."""
    axes, settings = axes or {}, settings or {}
    shown = {name: axes.get(name, CurveAxis("meta-training loss")) for name in run_dirs}
    labels = {axis.label for axis in shown.values()}
    shared = set(settings.values()) if len(set(settings.values())) == 1 else set()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run_dir in run_dirs.items():
        records, _ = training_curve(run_dir)
        axis = shown[name]
        legend = name if len(labels) == 1 else f"{name}: {axis.label}"
        if name in settings and not shared:
            legend += f" ({settings[name]})"
        marker = "o" if len(records) <= MARKED_UP_TO else None
        values = [axis.sign * r["meta_loss"] for r in records]
        ax.plot([r["iteration"] for r in records], values, marker=marker, ms=3, label=legend)
    ylabel = labels.pop() if len(labels) == 1 else "training objective (per run: see the legend)"
    log = all(axis.log for axis in shown.values())
    title = f"trained with {shared.pop()}" if shared else ""
    finish_line_plot(fig, ax, "iteration", ylabel, path, log=log, title=title)
