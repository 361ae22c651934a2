"""The ``metakit`` command line: parses and validates options, then calls ``metakit.experiments``."""

import json
import sys
from datetime import datetime
from pathlib import Path

import click

from metakit.experiments.config import BACKENDS, METHODS, TrainConfig

DEFAULTS = TrainConfig()


class OneLineErrors(click.Group):
    """A group whose usage errors are one line on stderr with exit code 2 (no usage banner)."""

    def main(self, args=None, prog_name="metakit", **kwargs):
        """Run the CLI; errors become ``Error: ...`` and an exit code."""
        try:
            code = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except click.ClickException as err:
            click.echo(f"Error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


class IntList(click.ParamType):
    """Comma-separated integers, each at least ``minimum``."""

    name = "INTS"

    def __init__(self, minimum: int):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        """Parse ``"5,10,20"`` into ``[5, 10, 20]``."""
        if isinstance(value, list):
            return value
        try:
            items = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        if not items:
            self.fail("give at least one value", param, ctx)
        if min(items) < self.minimum:
            self.fail(f"{value!r}: every value must be >= {self.minimum}", param, ctx)
        return sorted(set(items))


def usage_error(message: str):
    """Exit with a one-line usage error (exit code 2)."""
    raise click.UsageError(message)


@click.group(
    cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "show_default": True}
)
def cli():
    """metakit: gradient-based meta-learning (MAML, first-order MAML, Reptile, MAML Enhanced).

    Train with `metakit train`, evaluate a run with `metakit eval RUN_DIR`.
    """


@cli.command()
@click.option(
    "--method", type=click.Choice(METHODS), default=DEFAULTS.method, help="Meta-learning algorithm."
)
@click.option("--task", type=click.Choice(["sinusoid"]), default=DEFAULTS.task, help="Task family.")
@click.option(
    "--shots",
    type=click.IntRange(min=1),
    default=DEFAULTS.shots,
    help="Support (and query) points per task, K.",
)
@click.option(
    "--inner-steps",
    type=click.IntRange(min=1),
    default=DEFAULTS.inner_steps,
    help="Inner-loop steps per task.",
)
@click.option(
    "--inner-lr",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.inner_lr,
    help="Inner learning rate α (initial value of learned rates).",
)
@click.option(
    "--meta-batch", type=click.IntRange(min=1), default=DEFAULTS.meta_batch, help="Tasks per meta-update."
)
@click.option(
    "--meta-lr",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.meta_lr,
    help="Adam learning rate of the meta-update.",
)
@click.option("--iterations", type=click.IntRange(min=1), default=DEFAULTS.iterations, help="Meta-updates.")
@click.option(
    "--seed", type=int, default=DEFAULTS.seed, help="Seed of the model initialisation and the task stream."
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=DEFAULTS.backend,
    help="func: vectorised torch.func engine; l2l / higher: per-task reference loops.",
)
@click.option(
    "--log-every",
    type=click.IntRange(min=1),
    default=DEFAULTS.log_every,
    help="Iterations between lines of metrics.jsonl.",
)
@click.option(
    "--multi-step-loss/--no-multi-step-loss",
    default=DEFAULTS.multi_step_loss,
    help="MAML++ multi-step loss (query loss after every inner step, annealed weights).",
)
@click.option(
    "--msl-anneal",
    type=click.IntRange(min=0),
    default=DEFAULTS.msl_anneal,
    help="Iterations over which multi-step weights move to the last step.",
)
@click.option(
    "--first-order-until",
    type=click.IntRange(min=0),
    default=DEFAULTS.first_order_until,
    help="MAML++ derivative-order annealing: first-order for the first N iterations.",
)
@click.option(
    "--cosine-lr/--no-cosine-lr",
    default=DEFAULTS.cosine_lr,
    help="MAML++ cosine annealing of the meta learning rate.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory.  [default: runs/METHOD-TIMESTAMP]",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=DEFAULTS.checkpoint_every,
    help="Iterations between checkpoints (also written at the end and on Ctrl-C/SIGTERM).",
)
@click.option("--force", is_flag=True, help="Allow writing into an existing non-empty --out.")
@click.option(
    "--resume",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Continue the run in this directory from its last checkpoint (takes no other training option).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(out, force, resume, quiet, **options):
    """Meta-train a model and save the run (config.json, metrics.jsonl, checkpoint.pt)."""
    from metakit.experiments.runs import RunError, check_new_run_dir, read_config

    if resume is not None:
        ctx = click.get_current_context()
        given = [
            f"--{name.replace('_', '-')}"
            for name in [*options, "out", "force"]
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            usage_error(f"--resume continues a run with its saved config; drop {', '.join(given)}")
        try:
            config = read_config(resume)
        except RunError as err:
            usage_error(str(err))
        out = resume
    else:
        config = TrainConfig(**options)
        _check_train_options(config)
        out = out or Path("runs") / f"{config.method}-{datetime.now():%Y%m%d-%H%M%S}"
        try:
            check_new_run_dir(out, force)
        except RunError as err:
            usage_error(str(err))

    from metakit.experiments.train import Divergence, Interrupted
    from metakit.experiments.train import train as run_training

    try:
        summary = run_training(config, out, progress=not quiet, resume=resume is not None)
    except RunError as err:
        usage_error(str(err))
    except Divergence as err:
        raise click.ClickException(f"{err}; see {out / 'metrics.jsonl'}") from None
    except Interrupted as err:
        click.echo(f"Interrupted: {err}; continue with `metakit train --resume {out}`", err=True)
        sys.exit(130)
    if summary["note"]:
        click.echo(f"Warning: {summary['note']}", err=True)
    resumed = "" if summary["resumed_from"] is None else f" (resumed at {summary['resumed_from']})"
    click.echo(
        f"trained {config.method} for {summary['iterations']} iterations{resumed} "
        f"in {summary['seconds']:.1f}s; run saved to {out}"
    )


def _check_train_options(config: TrainConfig) -> None:
    if config.method == "reptile" and config.backend == "higher":
        usage_error(
            "--method reptile does not differentiate through the inner loop; use --backend func or l2l"
        )
    if config.method in ("reptile", "pretrain") and (config.multi_step_loss or config.first_order_until):
        usage_error(
            f"--multi-step-loss and --first-order-until apply to MAML-family methods, not {config.method}"
        )
    if config.method == "fomaml" and config.first_order_until:
        usage_error("--first-order-until has no effect with --method fomaml (always first-order)")
    if config.multi_step_loss and config.inner_steps < 2:
        usage_error("--multi-step-loss needs --inner-steps of at least 2")


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--tasks", type=click.IntRange(min=2), default=600, help="Held-out tasks.")
@click.option(
    "--shots", type=IntList(1), default="5,10,20", help="Support points per task (comma-separated)."
)
@click.option("--steps", type=IntList(0), default="0,1,5,10", help="Inner steps to report (comma-separated).")
@click.option("--seed", type=int, default=1, help="Seed of the held-out task set.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate(run_dir, tasks, shots, steps, seed, as_json):
    """Adapt a trained run to held-out tasks; print query MSE ± 95% CI per (shots, steps)."""
    from metakit.experiments.evaluate import describe_learned_rates, evaluate_algorithm, format_table
    from metakit.experiments.runs import RunError, load_run

    try:
        config, algo, note = load_run(run_dir)
    except RunError as err:
        usage_error(str(err))
    if note:
        click.echo(f"Warning: {note}", err=True)
    results = evaluate_algorithm(algo, config.task, tasks, shots, steps, seed)
    report = {"run": str(run_dir), "method": config.method, "results": results}
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(format_table(report))
    summary = describe_learned_rates(algo)
    if summary:
        click.echo(summary)


main = cli.main
