"""``metakit reproduce sinusoid``: every method on the MAML paper's protocol, beside the published numbers."""

import csv
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

from metakit.experiments import runs
from metakit.experiments.config import METHODS, TrainConfig
from metakit.experiments.evaluate import evaluate_algorithm
from metakit.experiments.plots import plot_adaptation, plot_mse_vs_steps, plot_training_curves
from metakit.experiments.train import train

SHOTS = (5, 10, 20)
STEPS = tuple(range(11))
REPORTED_STEPS = (0, 1, 5, 10)
METHOD_OVERRIDES = {"reptile": {"inner_steps": 5}}
"""Reptile's inner loop needs several steps to differ from joint training (Nichol et al. use 5+)."""
PUBLISHED = {  # MAML paper, App. C Table 2: 5-shot sinusoid, model trained at K = 10
    "maml": {1: 0.67, 5: 0.38, 10: 0.35},
    "pretrain": {1: 2.41, 5: 2.23, 10: 2.19},
}
CSV_COLUMNS = ("method", "seed", "shots", "steps", "mse", "ci95", "tasks")


def run_config(method: str, seed: int, iterations: int, compile: bool = False) -> TrainConfig:
    """The paper protocol for one method and seed."""
    overrides = METHOD_OVERRIDES.get(method, {})
    return TrainConfig(method=method, seed=seed, iterations=iterations, compile=compile, **overrides)


def _same_run(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two configs train the same run; compiling changes speed, not the experiment."""
    return {**a.to_dict(), "compile": False} == {**b.to_dict(), "compile": False}


def _train_or_resume(run_dir: Path, config: TrainConfig, progress: bool) -> str:
    """Train a run, continue it from its checkpoint, or leave it if it is complete."""
    try:
        state = (
            runs.load_latest_checkpoint(run_dir)[0] if _same_run(runs.read_config(run_dir), config) else None
        )
    except runs.RunError:
        state = None
    if state is not None and state["iteration"] == config.iterations:
        return "done earlier"
    train(config, run_dir, progress=progress, resume=state is not None)
    return "trained" if state is None else f"resumed at {state['iteration']}"


def _evaluate_cached(run_dir: Path, tasks: int, seed: int) -> List[dict]:
    """Evaluate a finished run once; the result is kept in ``RUN/eval.json`` for the same settings."""
    key = {"tasks": tasks, "shots": list(SHOTS), "steps": list(STEPS), "seed": seed}
    cache = run_dir / "eval.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("settings") == key:
            return data["results"]
    config, algo, _ = runs.load_run(run_dir)
    results = evaluate_algorithm(algo, config.task, tasks, SHOTS, STEPS, seed)
    runs.write_json_atomic(cache, {"settings": key, "results": results})
    return results


def reproduce_sinusoid(
    out: Path,
    seeds: int,
    iterations: int,
    tasks: int = 600,
    eval_seed: int = 1,
    methods=METHODS,
    compile: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Dict[str, Path]:
    """Train (or resume), evaluate and report every method; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, run_dirs = [], {}
    for method in methods:
        for seed in range(seeds):
            run_dir = out / "runs" / f"{method}-it{iterations}-seed{seed}"
            started = time.perf_counter()
            status = _train_or_resume(run_dir, run_config(method, seed, iterations, compile), progress)
            results = _evaluate_cached(run_dir, tasks, eval_seed)
            five = {r["steps"]: _number(r["mse"]) for r in results if r["shots"] == 5}
            echo(
                f"[{method} seed {seed}] {status} in {time.perf_counter() - started:.0f}s; "
                f"5-shot MSE after 0/1/10 steps: {five[0]} / {five[1]} / {five[10]}"
            )
            rows += [{"method": method, "seed": seed, **r} for r in results]
            run_dirs.setdefault(method, run_dir)
    paths = {"csv": out / "results.csv", "markdown": out / "results.md"}
    _write_csv(paths["csv"], rows)
    paths["markdown"].write_text(results_markdown(rows, seeds, iterations, tasks))
    paths.update(_plots(out, rows, run_dirs))
    return paths


def _number(value, digits: int = 3) -> str:
    """A result for people: ``diverged`` where adaptation blew up (``None``)."""
    return "diverged" if value is None else f"{value:.{digits}f}"


def _write_csv(path: Path, rows: List[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in CSV_COLUMNS} for r in rows)


def summarise(rows: List[dict]) -> Dict[tuple, dict]:
    """Per (method, shots, steps): mean MSE and mean 95% CI over seeds, and std across seeds."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["shots"], r["steps"]), []).append(r)
    summary = {}
    for key, group in groups.items():
        mses = [g["mse"] for g in group]
        if None in mses:
            summary[key] = {"mse": None, "ci95": None, "seed_std": None}
            continue
        summary[key] = {
            "mse": statistics.fmean(mses),
            "ci95": statistics.fmean(g["ci95"] for g in group),
            "seed_std": statistics.stdev(mses) if len(mses) > 1 else 0.0,
        }
    return summary


def results_markdown(rows: List[dict], seeds: int, iterations: int, tasks: int) -> str:
    """The results tables: MSE ± 95% CI over tasks (mean over seeds), and ± std across seeds."""
    summary = summarise(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        f"Sinusoid regression, MAML protocol, {iterations} meta-iterations, {seeds} seed(s), "
        f"{tasks} held-out tasks. Cell: query MSE ± 95% CI over tasks (averaged over seeds) "
        "[± std across seeds].",
        "",
    ]
    for shots in SHOTS:
        lines += [f"### {shots}-shot", ""]
        header = "| method | " + " | ".join(f"{s} steps" for s in REPORTED_STEPS) + " |"
        lines += [header, "|---" * (len(REPORTED_STEPS) + 1) + "|"]
        for method in methods:
            cells = []
            for steps in REPORTED_STEPS:
                s = summary[(method, shots, steps)]
                if s["mse"] is None:
                    cells.append("diverged")
                else:
                    cells.append(f"{s['mse']:.3f} ± {s['ci95']:.3f} [± {s['seed_std']:.3f}]")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if shots == 5:
            for method, published in PUBLISHED.items():
                cells = [f"{published[s]:.2f}" if s in published else "—" for s in REPORTED_STEPS]
                lines.append(f"| {method} (published) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _plots(out: Path, rows: List[dict], run_dirs: Dict[str, Path]) -> Dict[str, Path]:
    paths = {
        "adaptation": out / "adaptation.png",
        "mse_vs_steps": out / "mse_vs_steps.png",
        "training": out / "training_curves.png",
    }
    algos = {method: runs.load_run(run_dir)[1] for method, run_dir in run_dirs.items()}
    plot_adaptation(algos, paths["adaptation"])
    seed0 = {m: [r for r in rows if r["method"] == m and r["seed"] == 0] for m in run_dirs}
    plot_mse_vs_steps(seed0, paths["mse_vs_steps"])
    plot_training_curves(run_dirs, paths["training"])
    return paths
