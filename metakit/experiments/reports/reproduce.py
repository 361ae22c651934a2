"""``metakit reproduce TASK``: every method on a family's protocol, beside the published numbers."""

import csv
import json
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

from metakit.experiments.methods import METHODS
from metakit.experiments.reports.evaluate import evaluate_algorithm, horizon_note, training_horizon
from metakit.experiments.reports.plots import draw_figures
from metakit.experiments.tasks import FAMILIES, build_family
from metakit.experiments.tasks.family import Metric, format_number
from metakit.experiments.training import runs
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.trainer import Divergence, train
from metakit.experiments.util.errors import MetakitError, flag
from metakit.experiments.util.progress import silenced


def run_config(
    task: str,
    method: str,
    seed: int,
    iterations: Optional[int],
    overrides: dict,
    compile: str = "auto",
    data_root: Optional[str] = None,
) -> TrainConfig:
    """The family's reproduction protocol for one method, variant and seed (on the data in
    ``data_root`` for families that read a data set)."""
    reproduction = FAMILIES.get(task).reproduction
    options = {**overrides, **reproduction.method_overrides.get(method, {})}
    if data_root is not None:
        options["data_root"] = data_root
    return TrainConfig(task=task, method=method, seed=seed, iterations=iterations, compile=compile, **options)


def _train_or_resume(run_dir: Path, config: TrainConfig, progress: bool) -> str:
    """Train a run, continue it from its checkpoint, or leave it if it is complete (as
    :func:`~metakit.experiments.training.runs.start_or_resume` decides with ``resume``); returns
    which of the three it did, in words."""
    start = train(config, run_dir, progress=progress, resume=True)["resumed_from"]
    if start is None:
        return "trained"
    return "trained earlier" if start >= config.iterations else f"resumed at {start}"


def _evaluate_cached(run_dir: Path, shots, steps, tasks: int, seed: int) -> List[dict]:
    """Evaluate a finished run once; the result is kept in ``RUN/eval.json`` for the same settings
    until the run trains again (rows carry ``beyond_horizon`` past the run's
    :func:`training_horizon`)."""
    horizon = training_horizon(runs.read_config(run_dir))
    key = {"tasks": tasks, "shots": list(shots), "steps": list(steps), "seed": seed, "horizon": horizon}
    cache = run_dir / runs.EVALUATION
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("settings") == key:
            return data["results"]
    config, algo, _ = runs.load_run(run_dir)
    results = evaluate_algorithm(algo, build_family(config), tasks, shots, steps, seed, horizon)
    runs.write_json_atomic(cache, {"settings": key, "results": results})
    return results


def reproduce(
    task: str,
    out: Path,
    seeds: int,
    iterations: Optional[int] = None,
    tasks: int = 600,
    eval_seed: int = 1,
    methods=None,
    compile: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] = print,
    data_root: Optional[str] = None,
    method_seeds: Optional[Mapping[str, int]] = None,
) -> Dict[str, Path]:
    """Train (or resume), evaluate and report every method (on the data in ``data_root`` for
    families that read a data set), ``seeds`` seeds each or as many as ``method_seeds`` gives a
    method (e.g. ``{"fomaml": 1}``); returns the paths written. Without ``progress`` nothing but
    ``echo``'s lines is printed: one on the runs planned (how many are finished already, how many
    continue from a checkpoint), then one per run."""
    with silenced(not progress):
        return _reproduce(
            task,
            out,
            seeds,
            method_seeds or {},
            iterations,
            tasks,
            eval_seed,
            methods,
            compile,
            progress,
            echo,
            data_root,
        )


def _reproduce(
    task, out, seeds, method_seeds, iterations, tasks, eval_seed, methods, compile, progress, echo, data_root
):
    family_class = FAMILIES.get(task)
    reproduction = family_class.reproduction
    if reproduction is None:
        raise ValueError(f"task {task!r} has no reproduction protocol")
    classification = "ways" in family_class.options  # methods for classification only skip the others
    every = [m for m in METHODS.names() if classification or not METHODS.get(m).classification]
    methods = methods or reproduction.methods or every
    plan = [  # (label, overrides, the methods this variant trains)
        (v.label, v.overrides, [m for m in methods if v.methods is None or m in v.methods])
        for v in reproduction.variants
    ]
    if min([seeds, *method_seeds.values()]) < 1:
        raise MetakitError(f"{flag('seeds')}: every count must be at least 1")
    unused = sorted(set(method_seeds) - set(methods))
    if unused:
        raise MetakitError(
            f"{flag('seeds')} gives seeds to {', '.join(unused)}, which this reproduction does not run "
            f"(it runs {', '.join(methods)})"
        )
    for _, overrides, chosen in plan:  # every invalid combination is refused before any run
        for method in chosen:
            run_config(task, method, 0, iterations, overrides, compile, data_root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metric = family_class.metric
    every_run = []  # (variant label, method, seed, config, name, run folder)
    for label, overrides, chosen in plan:
        for method in chosen:
            for seed in range(method_seeds.get(method, seeds)):
                config = run_config(task, method, seed, iterations, overrides, compile, data_root)
                name = "-".join(part for part in (method, label) if part)
                folder = name.replace(" ", "-")  # e.g. maml-20-way-1-shot-it1000-seed0: no spaces
                run_dir = out / "runs" / f"{folder}-it{config.iterations}-seed{seed}"
                every_run.append((label, method, seed, config, name, run_dir))
    echo(_plan_line(task, out / "runs", [(config, run_dir) for *_, config, _, run_dir in every_run]))
    rows, run_dirs, horizons, failures = [], {}, {}, []
    for label, method, seed, config, name, run_dir in every_run:
        if training_horizon(config) is not None:
            horizons.setdefault(label, {})[method] = training_horizon(config)
        try:
            status = _train_or_resume(run_dir, config, progress)
        except Divergence as err:  # reported, and the other runs go on
            failures.append(f"{name} seed {seed}: {err}")
            echo(f"[{name} seed {seed}] training diverged: {err}")
            continue
        shots = reproduction.eval_shots or (config.shots,)
        results = _evaluate_cached(run_dir, shots, evaluated_steps(reproduction, method), tasks, eval_seed)
        first = {
            r["steps"]: metric.format(r[metric.key], 1 if metric.percent else 3)
            for r in results
            if r.get("shots") == shots[0]
        }
        shot = "" if shots[0] is None else f"{shots[0]}-shot "  # RL rows have no shots
        steps = reproduction.reported_steps
        seconds = runs.training_seconds(run_dir)  # all its sessions', as in the table
        took = "training time not recorded" if seconds is None else f"{seconds:.0f} s of training"
        echo(
            f"[{name} seed {seed}] {status} ({took}); "
            f"{shot}{metric.key} after {'/'.join(map(str, steps))} steps: "
            + " / ".join(first[s] for s in steps)
        )
        trained = {"iterations": config.iterations, "train_seconds": seconds}
        rows += [{"method": method, "variant": label, "seed": seed, **r, **trained} for r in results]
        if label == plan[0][0]:
            run_dirs.setdefault(method, run_dir)
    paths = {"csv": out / "results.csv", "markdown": out / "results.md"}
    _write_csv(paths["csv"], rows, with_variant=len(reproduction.variants) > 1)
    markdown = results_markdown(rows, reproduction, metric, tasks, config.iterations, horizons)
    if failures:
        listed = "".join(f"- {failure}\n" for failure in failures)
        markdown += f"\nRuns whose training diverged (not in the table):\n\n{listed}"
    paths["markdown"].write_text(markdown)
    if rows:  # nothing to plot when every run's training diverged
        paths.update(_plots(out, family_class, rows, run_dirs))
    return paths


def _plan_line(task: str, folder: Path, planned: List[tuple]) -> str:
    """One line on what a reproduction will do with its ``planned`` ``(config, run folder)`` pairs:
    how many runs are finished already, how many continue from a checkpoint, how many start. A
    run that cannot be trained (another process is training it, its path is no folder) raises the
    :class:`~metakit.experiments.training.runs.RunError` now, before any run trains."""
    finished = resumed = 0
    for config, run_dir in planned:
        start = runs.start_or_resume(run_dir, config, resume=True, force=True)[1]
        finished += start is not None and start >= config.iterations
        resumed += start is not None and start < config.iterations
    fresh = len(planned) - finished - resumed
    return (
        f"reproduce {task}: {len(planned)} runs in {folder} — {finished} finished earlier, "
        f"{resumed} to continue from a checkpoint, {fresh} to train"
    )


def evaluated_steps(reproduction, method: str) -> tuple:
    """The step counts a method's runs are evaluated at: the reproduction's, and the method's own
    test protocol (``test_steps``, e.g. fine-tuning's 100 passes) where those leave it out."""
    extra = METHODS.get(method).test_steps
    return tuple(sorted({*reproduction.eval_steps, *([extra] if extra is not None else [])}))


def _write_csv(path: Path, rows: List[dict], with_variant: bool) -> None:
    columns = ["method"] + ["variant"] * with_variant + ["seed"]
    keys = dict.fromkeys(k for r in rows for k in r)  # e.g. beyond_horizon is in some rows only
    columns += [k for k in keys if k not in ("method", "variant", "seed")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in columns} for r in rows)


def summarise(rows: List[dict], metric: Metric) -> Dict[tuple, dict]:
    """Per (variant, method, shots, steps): mean metric and mean 95% CI over seeds, std across seeds,
    the number of seeds, and whether the steps lie beyond the trained horizon."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["method"], r.get("shots"), r["steps"]), []).append(r)
    summary = {}
    for key, group in groups.items():
        values = [g[metric.key] for g in group]
        beyond = any(g.get("beyond_horizon") for g in group)
        if None in values:
            summary[key] = {
                "value": None,
                "ci95": None,
                "seed_std": None,
                "seeds": len(group),
                "beyond": beyond,
            }
            continue
        summary[key] = {
            "value": statistics.fmean(values),
            "ci95": statistics.fmean(g["ci95"] for g in group),
            "seed_std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": len(group),
            "beyond": beyond,
        }
    return summary


def results_markdown(
    rows: List[dict], reproduction, metric: Metric, tasks: int, iterations: int, horizons=None
) -> str:
    """The results tables: metric ± 95% CI over tasks (mean over seeds), and ± std across seeds
    (in cells with several seeds; the seeds are counted in ``rows``), after each reported step count
    and each method's own test steps (``test_steps``, "—" for the other methods), then the runs'
    iterations and mean training wall time.

    Cells beyond the trained horizon are marked ``*``; ``horizons`` (``{variant: {method: steps}}``)
    words the footnote.
    """
    summary = summarise(rows, metric)
    seeds = {
        m: len({r["seed"] for r in rows if r["method"] == m})
        for m in dict.fromkeys(r["method"] for r in rows)
    }
    name = metric.description + " (%)" * metric.percent
    cell = f"{name} ± 95% CI over tasks"
    if max(seeds.values(), default=1) > 1:
        several = "" if min(seeds.values()) > 1 else ", for a method with several"
        cell += f" (averaged over seeds) [± std across seeds{several}]"
    lines = [
        f"{reproduction.description}; {_count(iterations, 'meta-iteration')}, {_seed_counts(seeds)}, "
        f"{_count(tasks, 'held-out task')}. Cell: {cell}.",
        "",
    ]
    scale = 100 if metric.percent else 1
    digits = metric.digits if metric.summary_digits is None else metric.summary_digits
    tables = dict.fromkeys((r["variant"], r.get("shots")) for r in rows)
    for variant, shots in tables:
        label = "policy-gradient steps" if shots is None else f"{shots}-shot"
        title = variant if variant.endswith(label) else f"{variant}: {label}" if variant else label
        lines += [f"### {title}", ""]
        methods = list(dict.fromkeys(r["method"] for r in rows if r["variant"] == variant))
        own = {METHODS.get(m).test_steps for m in methods} - {None, *reproduction.reported_steps}
        columns = [*reproduction.reported_steps, *sorted(own)]
        header = (
            "| method | " + " | ".join(_count(s, "step") for s in columns) + " | iterations | train time |"
        )
        lines += [header, "|---" * (len(columns) + 3) + "|"]
        marked = {}
        for method in methods:
            cells = []
            for steps in columns:
                s = summary.get((variant, method, shots, steps))
                if s is None:  # another method's own test protocol
                    cells.append("—")
                elif s["value"] is None:
                    cells.append("diverged")
                else:
                    value, ci, std = (
                        format_number(scale * s[key], digits) for key in ("value", "ci95", "seed_std")
                    )
                    cells.append(f"{value} ± {ci}" + (f" [± {std}]" if s["seeds"] > 1 else ""))
                if s is not None and s["beyond"]:
                    cells[-1] += "\\*"
                    marked[method] = (horizons or {}).get(variant, {}).get(method)
            cells += _training_cells([r for r in rows if (r["variant"], r["method"]) == (variant, method)])
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        for label, published in reproduction.published.get(shots, {}).items():
            cells = [_published(published[s]) if s in published else "—" for s in columns]
            lines.append(f"| {label} (published) | " + " | ".join(cells) + " | — | — |")
        if variant in reproduction.published_elsewhere:
            lines += ["", reproduction.published_elsewhere[variant]]
        if marked:
            lines += ["", "\\" + horizon_note(marked if None not in marked.values() else None)]
        lines.append("")
    return "\n".join(lines)


def _training_cells(rows: List[dict]) -> list:
    """The iterations and the mean training wall time over seeds of one method's runs ("—" where
    the rows do not say, e.g. a table rebuilt from an older results.csv)."""
    per_seed = {r["seed"]: r for r in rows}.values()
    iterations = {r.get("iterations") for r in per_seed}
    seconds = [r.get("train_seconds") for r in per_seed]
    if None in seconds:
        wall = "—"
    else:
        mean = statistics.fmean(seconds)
        wall = f"{mean:.0f} s" if mean < 600 else f"{mean / 60:.0f} min"
    return [f"{iterations.pop():,}" if len(iterations) == 1 and None not in iterations else "—", wall]


def _published(value) -> str:
    """A published number, or a ``(value, ±)`` pair, as the paper prints it (two decimals)."""
    return f"{value[0]:.2f} ± {value[1]:.2f}" if isinstance(value, tuple) else f"{value:.2f}"


def _seed_counts(seeds: Dict[str, int]) -> str:
    """``3 seeds``, or where methods differ ``3 seeds (maml, enhanced), 1 seed (anil)``."""
    counts = sorted(set(seeds.values()), reverse=True)
    if len(counts) <= 1:
        return _count(counts[0] if counts else 0, "seed")
    return ", ".join(
        f"{_count(n, 'seed')} ({', '.join(m for m, k in seeds.items() if k == n)})" for n in counts
    )


def _count(number: int, noun: str) -> str:
    """``1 step``, ``5 steps``."""
    return f"{number} {noun}{'s' * (number != 1)}"


def _plots(out: Path, family_class, rows: List[dict], run_dirs: Dict[str, Path]) -> Dict[str, Path]:
    """The family's figures (:func:`~metakit.experiments.reports.plots.draw_figures`) of each
    method's first run, from the rows of its first seed and variant."""
    loaded = {method: runs.load_run(run_dir) for method, run_dir in run_dirs.items()}
    variant = rows[0]["variant"]
    curves = {
        m: [r for r in rows if r["method"] == m and r["seed"] == 0 and r["variant"] == variant]
        for m in run_dirs
    }
    family = build_family(next(iter(loaded.values()))[0])
    figures = {m: (run_dirs[m], algo) for m, (_, algo, _) in loaded.items()}
    paths = draw_figures(family, figures, curves, out, rows[0].get("shots"), seed=1)
    return {path.stem: path for path in paths}
