"""Compare two trained runs on the same held-out tasks, task by task.

    .venv/bin/python tools/paired_difference.py RUN_A RUN_B [--shots 5] [--steps 1,5,10]
        [--tasks 600] [--seed 1]

For each step count: the mean metric of A and of B, the mean of the per-task differences A − B
with its 95% confidence interval, and on how many tasks A is below B. Both runs are adapted to the
held-out tasks of RUN_A's family (seed ``--seed``, as `metakit eval` draws them); steps beyond a
learned rule's horizon are guarded as in `metakit eval`. The runs must be of the same task family.
"""

import argparse
import sys

import torch

from metakit.experiments.reports.evaluate import training_horizon
from metakit.experiments.tasks import build_family
from metakit.experiments.training import runs
from metakit.experiments.util.errors import MetakitError
from metakit.experiments.util.statistics import paired_difference


def per_task(run_dir, family, held_out, shots: int, steps) -> torch.Tensor:
    """The run's per-task metric ``[max(steps) + 1, tasks]`` on ``held_out``, measured at ``steps``
    (NaN at the other step counts)."""
    config, algo, _ = runs.load_run(run_dir)
    horizon = training_horizon(config)
    curves = family.held_out_curves(algo, held_out, shots, max(steps), horizon, record=steps)
    return curves["score"] if curves["score"] is not None else curves["loss"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--steps", default="1,5,10")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = [int(s) for s in args.steps.split(",")]
    try:
        config_a, config_b = runs.read_config(args.run_a), runs.read_config(args.run_b)
    except MetakitError as err:  # not a run, or one without a checkpoint
        print(f"error: {err}", file=sys.stderr)
        return 2
    if config_a.task != config_b.task:
        print(
            f"error: {args.run_a} is a {config_a.task} run, {args.run_b} a {config_b.task} run",
            file=sys.stderr,
        )
        return 2
    family = build_family(config_a)
    family.prepare()
    held_out = family.held_out(args.tasks, args.shots, args.seed)
    a, b = (per_task(run, family, held_out, args.shots, steps) for run in (args.run_a, args.run_b))
    name = family.metric.key
    print(f"{args.shots}-shot {name}, {args.tasks} held-out tasks (seed {args.seed})")
    print(f"A = {args.run_a}\nB = {args.run_b}")
    for s in steps:
        d = paired_difference(a[s], b[s])
        print(
            f"{s} steps: A {a[s].double().mean():.5g}, B {b[s].double().mean():.5g}, "
            f"A - B {d['difference']:.5g} ± {d['ci95']:.2g} (95% CI over tasks), "
            f"A lower on {d['a_lower']}/{d['tasks']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
