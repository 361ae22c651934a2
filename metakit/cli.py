"""The ``metakit`` command line: parses and validates options, then calls ``metakit.experiments``."""

import functools
import importlib.util
import itertools
import json
import math
import os
import shlex
import sys
import warnings
from datetime import datetime
from pathlib import Path

import click
from click.shell_completion import CompletionItem

import metakit

# Meta-learning on small models is a stream of tiny tensor operations: one intra-op thread is
# faster than two on 2 cores, and much faster when the other core is busy (an OpenMP barrier then
# waits on a descheduled thread: 25× slower measured here). Set before torch is imported; an
# explicit OMP_NUM_THREADS from the user wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from metakit.experiments.methods import METHODS  # noqa: E402
from metakit.experiments.tasks import FAMILIES  # noqa: E402
from metakit.experiments.training.config import (  # noqa: E402
    COMPILE_MODES,
    DEVICES,
    OPTIONS,
    PLACEMENT,
    TrainConfig,
    choices_of,
    flag,
    value_type,
    variant_config,
)
from metakit.experiments.util.allocator import keep_freed_memory  # noqa: E402
from metakit.experiments.util.cache import compile_cache, unwritable  # noqa: E402
from metakit.experiments.util.errors import MetakitError  # noqa: E402

FROM_FAMILY = "the task family's protocol"
ENGINES = {
    "func-compiled": "compiled func engine",
    "func": "eager func engine",
    "l2l": "learn2learn backend",
    "higher": "higher backend",
}


class OneLineErrors(click.Group):
    """A group whose usage errors, and every :class:`MetakitError` (bad options, data or run
    folders, wherever found), are one line on stderr with exit code 2 (no usage banner)."""

    def main(self, args=None, prog_name="metakit", **kwargs):
        """Run the CLI; errors become ``Error: ...`` and an exit code, warnings one line each."""
        keep_freed_memory()
        warnings.formatwarning = lambda message, *args, **kwargs: f"Warning: {message}\n"
        _use_compile_cache()
        try:
            code = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except NO_ARGS_IS_HELP as err:  # bare `metakit`: the help, not an error
            click.echo(err.format_message())
            sys.exit(0)
        except click.ClickException as err:
            click.echo(f"Error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except MetakitError as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(2)
        sys.exit(code if isinstance(code, int) else 0)

    def format_epilog(self, ctx, formatter):
        """After the commands: every registered method with its summary, and the task families
        (read when the help is shown, so methods registered after start-up are listed too)."""
        with formatter.section("Methods (metakit train --method)"):
            formatter.write_dl([(name, METHODS.get(name).summary) for name in METHODS.names()])
        with formatter.section("Task families (metakit train --task)"):
            formatter.write_text(", ".join(FAMILIES.names()))
        super().format_epilog(ctx, formatter)


def _use_compile_cache() -> None:
    """Point torch.compile's on-disk cache at the user's cache folder (by default it is under /tmp,
    which many systems empty at boot; there a repeated setting compiles in seconds instead of half a
    minute), or at a temporary folder, with one warning, when that cannot be written. An explicit
    ``TORCHINDUCTOR_CACHE_DIR`` from the user wins."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    folder, warning = compile_cache()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    if warning:
        click.echo(f"Warning: {warning}", err=True)


FORMATS = ("png", "pdf", "svg")
"""The file formats of ``metakit plot --format`` (matplotlib writes each by the file's suffix)."""
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())
SEED = click.IntRange(0, 2**32 - 1)
DATA_ROOT_HELP = "Image families: the data folder, as for `metakit train --data-root`."
TRAIN_SEED = click.IntRange(0, 2**31 - 1)


class PositiveFloat(click.ParamType):
    """A finite number greater than zero."""

    name = "FLOAT"

    def convert(self, value, param, ctx):
        """Parse and check the number."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} must be a finite number > 0", param, ctx)
        return number


class IntList(click.ParamType):
    """Comma-separated integers, each in ``[minimum, maximum]``."""

    name = "INTS"

    def __init__(self, minimum: int, maximum: int):
        self.minimum, self.maximum = minimum, maximum

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
        if min(items) < self.minimum or max(items) > self.maximum:
            self.fail(f"{value!r}: every value must be in [{self.minimum}, {self.maximum}]", param, ctx)
        return sorted(set(items))


class SeedCounts(click.ParamType):
    """Seeds per method: ``3`` for every method, or ``1,maml=3,enhanced=3`` (a count for the methods
    not named, the default where it is left out, and ``METHOD=COUNT`` for others); each count at
    least 1. Converts to ``(count, {method: count})``."""

    name = "SEEDS"

    def __init__(self, default: int):
        self.default = default

    def convert(self, value, param, ctx):
        """Parse ``"1,maml=3"`` into ``(1, {"maml": 3})``."""
        if isinstance(value, tuple):
            return value
        count, counts = self.default, {}
        for item in (v.strip() for v in str(value).split(",") if v.strip()):
            method, _, number = (part.strip() for part in item.rpartition("="))
            if "=" in item and (not method or "=" in method):
                self.fail(f"{item!r} is not a count or METHOD=COUNT (e.g. 3 or 1,maml=3)", param, ctx)
            try:
                number = int(number)
            except ValueError:
                self.fail(f"{item!r} is not a count or METHOD=COUNT (e.g. 3 or 1,maml=3)", param, ctx)
            if number < 1:
                self.fail(f"{item!r}: a count must be at least 1", param, ctx)
            if method and method not in METHODS.names():
                self.fail(f"unknown method {method!r}; choose from {', '.join(METHODS.names())}", param, ctx)
            if method in counts:
                self.fail(f"{(method or 'the count of the others')} is given twice in {value!r}", param, ctx)
            counts[method] = number
        if not counts:
            self.fail("give a count, e.g. 3 or 1,maml=3", param, ctx)
        count = counts.pop("", count)
        return count, counts


class Registered(click.ParamType):
    """A name in a registry (task families, methods), looked up when the command runs, so that
    entries registered after start-up are accepted; with ``accepts`` (entry → bool), only the
    entries it accepts, the others refused with ``refusal`` (e.g. ``"has no reproduction protocol"``)."""

    name = "NAME"

    def __init__(self, registry, accepts=None, refusal: str = ""):
        self.registry, self.accepts, self.refusal = registry, accepts, refusal

    def names(self) -> list:
        """The names this parameter accepts."""
        names = self.registry.names()
        return names if self.accepts is None else [n for n in names if self.accepts(self.registry.get(n))]

    def get_metavar(self, param, *args, **kwargs) -> str:
        """The accepted names, as click shows choices."""
        return "[" + "|".join(self.names()) + "]"

    def shell_complete(self, ctx, param, incomplete):
        """The accepted names that start with ``incomplete`` (shell completion)."""
        return [CompletionItem(name) for name in self.names() if name.startswith(incomplete)]

    def convert(self, value, param, ctx):
        """Check that ``value`` is registered and accepted."""
        names = self.names()
        if value not in names:
            why = f"{self.registry.noun} {value!r} {self.refusal}"
            if value not in self.registry:
                why = f"unknown {self.registry.noun} {value!r}"
            self.fail(f"{why}; choose from {', '.join(names)}")
        return value


def usage_error(message: str):
    """Exit with a one-line usage error (exit code 2)."""
    raise click.UsageError(message)


@click.group(
    cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "show_default": True}
)
@click.version_option(metakit.__version__, "--version", prog_name="metakit", message="%(prog)s %(version)s")
def cli():
    """metakit: gradient-based meta-learning (the methods are listed below).

    Train with `metakit train`, evaluate a run with `metakit eval RUN_DIR`, draw its figures with
    `metakit plot RUN_DIR`.
    """


def _family_default(help_text: str) -> str:
    return f"{help_text}  [default: {FROM_FAMILY}]"


CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}
"""How ``metakit train`` parses each type of training option: parsing only, ``TrainConfig`` checks values."""


def training_options(command):
    """Give ``command`` one click option per :class:`TrainConfig` field, in the fields' order.

    A bool becomes ``--x/--no-x``; a ``None`` default is shown as the family's protocol or the field's
    ``default_text``; choices are the metavar and a minimum is noted beside the default. Values are
    checked by ``TrainConfig`` alone, so click and the config cannot disagree.
    """
    for name, declared in reversed(OPTIONS.items()):
        meta, kind, default = declared.metadata, value_type(name), declared.default
        negative = f"no-{flag(name)[2:]}"
        if default is None:
            shown = FROM_FAMILY if meta["family_default"] else meta["default_text"]
        elif kind is bool:
            shown = flag(name)[2:] if default else negative
        else:
            shown = str(default)
        low, high = meta["minimum"], meta["maximum"]
        bounds = None if low is None else f"x>={low}" if high is None else f"{low}<=x<={high}"
        note = shown if bounds is None else f"{shown}; {bounds}"
        settings = dict(default=default, show_default=False, help=f"{meta['help']}  [default: {note}]")
        if kind is bool:
            decorate = click.option(f"{flag(name)}/--{negative}", name, **settings)
        else:
            choices = choices_of(name)
            metavar = f"[{'|'.join(choices)}]" if choices else None
            decorate = click.option(
                flag(name),
                name,
                type=CLICK_TYPES[kind],
                metavar=metavar,
                shell_complete=functools.partial(_complete_choice, name) if choices else None,
                **settings,
            )
        command = decorate(command)
    return command


def _complete_choice(name: str, ctx, param, incomplete: str) -> list:
    """Shell completion of training option ``name``: its choices that start with ``incomplete``."""
    return [choice for choice in choices_of(name) if choice.startswith(incomplete)]


@cli.command()
@training_options
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory (-2, -3, ... added to a taken default).  [default: runs/METHOD-TIMESTAMP]",
)
@click.option("--force", is_flag=True, help="Allow writing into an existing non-empty --out.")
@click.option(
    "--resume",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Continue the run in this directory from its last checkpoint (takes no other training option "
    "but --iterations, which extends its schedule, and --device / --compile, which move it).",
)
@click.option(
    "--from",
    "from_run",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Start a new run with this run's config.json, the options given here on top (a variant: "
    "`--from RUN --seed 1`).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(out, force, resume, from_run, quiet, **options):
    """Meta-train a model and save the run (config.json, metrics.jsonl, checkpoint.pt).

    Under torchrun (`torchrun --nproc-per-node N -m metakit train ...`) the N processes share each
    meta-batch; rank 0 alone reads and writes the run, and a restarted job continues its run.
    """
    from metakit.experiments.training import distributed

    writer = distributed.world().writer  # the other ranks get the config and state from rank 0
    config, claimed, placement = None, False, None
    ctx = click.get_current_context()
    typed = [
        name
        for name in [*options, "out", "force"]
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    ]
    if resume is not None and from_run is not None:
        usage_error("--resume continues a run and --from starts a new one; give one of them")
    if resume is not None:
        placement = {name: options[name] for name in typed if name in PLACEMENT}
        given = [flag(name) for name in typed if name != "iterations" and name not in PLACEMENT]
        if given:
            usage_error(f"--resume continues a run with its saved config; drop {', '.join(given)}")
        if writer and not resume.is_dir():
            raise click.BadParameter(f"Directory '{resume}' does not exist.", param_hint="'--resume'")
        out = resume
    else:
        if from_run is None:
            config = TrainConfig(**options)
        else:
            from metakit.experiments.training.runs import read_config

            changes = {name: options[name] for name in typed if name in options}
            config = variant_config(read_config(from_run), changes)
        if writer and config.tensorboard and importlib.util.find_spec("tensorboard") is None:
            usage_error(f"{flag('tensorboard')} needs the tensorboard package: pip install tensorboard")
        if out is None:
            out = Path("runs") / f"{config.method}-{datetime.now():%Y%m%d-%H%M%S}"
            if writer:
                _check_writable_dir(out, "--out")
                out, claimed = _claim_new_dir(out), True
        elif writer:
            _check_writable_dir(out, "--out")

    from metakit.experiments.training.trainer import Divergence, Interrupted
    from metakit.experiments.training.trainer import train as run_training

    try:  # a new run starts afresh; --resume, or a restarted torchrun job, continues its checkpoint
        extend = options["iterations"] if resume is not None else None
        summary = run_training(
            config,
            out,
            progress=not quiet,
            resume=resume is not None,
            force=force,
            iterations=extend,
            placement=placement,
        )
    except Divergence as err:
        raise click.ClickException(f"{err}; see {out / 'metrics.jsonl'}") from None
    except Interrupted as err:
        if writer:
            click.echo(f"Interrupted: {err}; continue with `metakit train --resume {out}`", err=True)
        sys.exit(130)
    except MetakitError:  # e.g. unusable data: a default folder claimed for nothing goes again
        if claimed and not any(out.iterdir()):
            out.rmdir()
        raise
    if not writer:
        return
    trained = f"{summary['method']} on {summary['task']} for {summary['iterations']} iterations"
    if summary["engine"] is None:  # the run was complete already: nothing was built or trained
        click.echo(f"{out} has trained {trained} already; nothing left to do")
        return
    if summary["note"]:
        click.echo(f"Warning: {summary['note']}", err=True)
    resumed = "" if summary["resumed_from"] is None else f" (resumed at {summary['resumed_from']})"
    skipped, kept = summary["skipped"], summary["meta_batches"]
    if summary["meta_loss"] is None:
        final = "no final meta-loss (every meta-batch since the last log line was skipped)"
    else:
        batches = f"{kept} meta-batch{'es' * (kept != 1)}"
        final = f"final meta-loss {summary['meta_loss']:.4g} (mean of the last {batches})"
    click.echo(
        f"trained {trained}{resumed} in {summary['seconds']:.1f}s on {summary['device']} "
        f"({ENGINES[summary['engine']]}), {skipped} non-finite meta-batch{'es' * (skipped != 1)} "
        f"skipped; {final}{_selected_text(summary)}; run saved to {out}; {_next_commands(out)}"
    )


def _selected_text(summary: dict) -> str:
    """``; selected on validation: iteration 40 (accuracy 52.40%)`` for a training summary with a
    selected model, else ``""``."""
    selected = summary["selected"]
    if selected is None:
        return ""
    metric = FAMILIES.get(summary["task"]).metric
    return (
        f"; selected on validation: iteration {selected['iteration']} ({metric.label} "
        f"{metric.format(selected['score'])})"
    )


def _next_commands(run_dir: Path) -> str:
    """What to run on a trained run, for the end of ``train``'s line."""
    run = shlex.quote(str(run_dir))
    return f"next: `metakit eval {run}` (held-out tasks), `metakit plot {run}` (figures)"


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--tasks", type=click.IntRange(2, 2**24), default=600, help="Held-out tasks.")
@click.option(
    "--shots",
    type=IntList(1, 1000),
    default=None,
    help="Support examples per task or class (comma-separated; not for RL).  "
    "[default: the family's; sinusoid 5,10,20]",
)
@click.option(
    "--steps",
    type=IntList(0, 1000),
    default=None,
    help="Inner steps to report (comma-separated).  [default: the family's; sinusoid 0,1,5,10]",
)
@click.option(
    "--ways",
    type=click.IntRange(min=2),
    default=None,
    help="Classification: classes per task.  [default: the run's]",
)
@click.option("--seed", type=SEED, default=1, help="Seed of the held-out task set.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", help="auto: CUDA when available.")
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=None,
    help=DATA_ROOT_HELP + "  [default: the run's]",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate(run_dir, tasks, shots, steps, ways, seed, device, data_root, as_json):
    """Adapt a run to held-out tasks; print the family's metric (MSE, accuracy, return) ± 95% CI per
    (shots, steps)."""
    from metakit.experiments.reports.evaluate import (
        evaluate_algorithm,
        format_table,
        training_horizon,
    )

    loaded = _load_run(run_dir, device, data_root)
    config, algo = loaded.config, loaded.algo
    family = _eval_family(config, ways)
    shots = shots or list(family.eval_protocol.get("shots", ()))
    steps = steps or list(family.eval_protocol["steps"])
    horizon = training_horizon(config)
    results = evaluate_algorithm(algo, family, tasks, shots, steps, seed, horizon)
    report = {
        "run": str(run_dir),
        "method": config.method,
        "iteration": loaded.iteration,
        "iterations": config.iterations,
        "trained": loaded.trained,
        "finished": loaded.trained >= config.iterations,
        "selected": _selection_report(config, loaded.selected),
        "seed": seed,
        "tasks": tasks,
        "horizon": horizon,
        "results": results,
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(format_table(report, family.metric))
    summary = algo.describe()
    if summary:
        click.echo(summary)


def _selection_report(config, selected):
    """``eval --json``'s ``selected``: how the evaluated model was selected on validation (its
    iteration, metric and score, and the validation episodes' count, shots and steps), or ``None``."""
    if selected is None:
        return None
    episodes = {"tasks": config.select_tasks, "shots": config.shots, "steps": config.inner_steps}
    return {"on": "validation", **selected, **episodes}


def _eval_family(config, ways):
    """The run's task family, with ``--ways`` (classification only, at most the trained ways)."""
    from dataclasses import replace

    from metakit.experiments.tasks import build_family

    if ways is not None:
        if config.ways is None:
            usage_error(f"--ways applies to classification runs, not --task {config.task}")
        if ways > config.ways:
            usage_error(
                f"--ways {ways}: the run was trained for {config.ways}-way tasks; use at most {config.ways}"
            )
        config = replace(config, ways=ways)
    return build_family(config)


def _load_run(run_dir: Path, device: str = "cpu", data_root=None):
    """A run (:class:`~metakit.experiments.training.runs.LoadedRun`) on ``device``, with its data
    in ``data_root`` if given; warns when an older checkpoint is used."""
    from metakit.experiments.training.runs import open_run
    from metakit.experiments.training.trainer import resolve_device

    loaded = open_run(run_dir, data_root)
    loaded.algo.to(resolve_device(device))
    if loaded.note:
        click.echo(f"Warning: {loaded.note}", err=True)
    return loaded


def _claim_new_dir(path: Path) -> Path:
    """Create ``path``, or ``path-2``, ``path-3``, ... where it exists: a default run folder that no
    other command started in the same second can also pick (``mkdir`` either creates or fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        candidate = path if number == 1 else path.with_name(f"{path.name}-{number}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def _check_writable_dir(path: Path, option: str) -> None:
    problem = unwritable(path)
    if problem:
        usage_error(f"{option} {path} cannot be written: {problem}")


@cli.command()
@click.argument(
    "run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False)
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for the PNGs.  [default: FIRST_RUN/plots]",
)
@click.option(
    "--tasks",
    type=click.IntRange(2, 2**24),
    default=600,
    help="Held-out tasks for the metric-vs-steps curve.",
)
@click.option(
    "--shots",
    type=click.IntRange(min=1),
    default=None,
    help="Support examples per held-out task or class.  [default: the family's first eval shots]",
)
@click.option("--seed", type=SEED, default=1, help="Seed of the held-out task set.")
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=None,
    help=DATA_ROOT_HELP + "  [default: the runs']",
)
@click.option(
    "--format", "extension", type=click.Choice(FORMATS), default="png", help="File format of the figures."
)
def plot(run_dirs, out, tasks, shots, seed, data_root, extension):
    """Plot runs of one task family: adaptation (regression, MAML Fig. 2), metric vs steps (Fig. 3),
    paths on held-out goals (2D navigation, Fig. 4), training curves."""
    loaded = {run_dir: _load_run(run_dir, data_root=data_root) for run_dir in run_dirs}
    tasks_seen = sorted({run.config.task for run in loaded.values()})
    if len(tasks_seen) > 1:
        usage_error(f"plot runs of one task family at a time, got {', '.join(tasks_seen)}")
    out = out or run_dirs[0] / "plots"
    _check_writable_dir(out, "--out")

    from metakit.experiments.reports.evaluate import evaluate_algorithm, training_horizon
    from metakit.experiments.reports.plots import draw_figures, training_curve
    from metakit.experiments.tasks import build_family

    for run_dir in run_dirs:  # an unreadable log stops the command before any figure is written
        _, warning = training_curve(run_dir)
        if warning:
            click.echo(f"Warning: {warning}", err=True)

    family = build_family(loaded[run_dirs[0]].config)
    shots = shots or family.eval_protocol.get("shots", (None,))[0]  # RL families take none
    methods = [run.config.method for run in loaded.values()]
    label = {
        d: (run.config.method if methods.count(run.config.method) == 1 else f"{run.config.method} ({d.name})")
        for d, run in loaded.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    curves = {
        label[d]: evaluate_algorithm(
            run.algo,
            build_family(run.config),
            tasks,
            [shots],
            family.plot_steps,
            seed,
            training_horizon(run.config),
        )
        for d, run in loaded.items()
    }
    runs = {label[d]: (d, run.algo) for d, run in loaded.items()}
    for path in draw_figures(family, runs, curves, out, shots, seed, extension):
        click.echo(path)


@cli.command()
@click.argument(
    "benchmark",
    type=Registered(FAMILIES, lambda family: family.reproduction is not None, "has no reproduction protocol"),
)
@click.option(
    "--seeds",
    type=SeedCounts(default=3),
    default="3",
    help="Seeds per method: a count, or counts per method, e.g. 1,maml=3,enhanced=3 (3 for maml and "
    "enhanced, 1 for the others; without a lone count the others get 3).",
    show_default=True,
)
@click.option(
    "--iterations", type=click.IntRange(min=1), default=None, help=_family_default("Meta-updates per run.")
)
@click.option("--tasks", type=click.IntRange(2, 2**24), default=600, help="Held-out tasks.")
@click.option(
    "--methods",
    default=None,
    help="Methods to run (comma-separated).  [default: the family's; every method for sinusoid]",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder.  [default: runs/reproduce-TASK]",
)
@click.option(
    "--compile", type=click.Choice(COMPILE_MODES), default="auto", help="As for `metakit train --compile`."
)
@click.option("--data-root", default=None, help=DATA_ROOT_HELP)
@click.option(
    "--quiet",
    is_flag=True,
    help="No progress bars (a line on the runs planned and one per finished run are still printed).",
)
def reproduce(benchmark, seeds, iterations, tasks, methods, out, compile, data_root, quiet):
    """Train every method on the protocol of a task family that has one (the choices in the usage
    line), evaluate, and write results.csv, results.md and plots.

    Resumable: finished runs are not retrained, interrupted ones continue from their checkpoint.
    """
    chosen = None if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    unknown = sorted(set(chosen or ()) - set(METHODS.names()))
    if unknown or chosen == []:
        usage_error(
            f"--methods: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(METHODS.names())}"
        )
    if data_root is not None and "data_root" not in FAMILIES.get(benchmark).options:
        usage_error(f"--data-root does not apply to reproduce {benchmark}")
    out = out or Path("runs") / f"reproduce-{benchmark}"
    _check_writable_dir(out, "--out")

    from metakit.experiments.reports.reproduce import reproduce as run_reproduction
    from metakit.experiments.training.trainer import Interrupted

    try:
        paths = run_reproduction(
            benchmark,
            out,
            seeds[0],
            iterations,
            tasks=tasks,
            methods=chosen,
            compile=compile,
            progress=not quiet,
            echo=click.echo,
            data_root=data_root,
            method_seeds=seeds[1],
        )
    except Interrupted as err:
        click.echo(
            f"Interrupted: {err}; continue with the same command (`metakit reproduce {benchmark} --out "
            f"{out}` with the options given): finished runs are kept and this one resumes",
            err=True,
        )
        sys.exit(130)
    click.echo(f"results: {paths['markdown']} and {paths['csv']}; plots: {out}")


@cli.command()
@click.option(
    "--quick", is_flag=True, help="Seconds-long smoke run: maml, meta-batch 5, 1 step, no compiling."
)
@click.option(
    "--task",
    type=Registered(FAMILIES),
    default="sinusoid",
    help="Task family, at its protocol's shots, query and ways (image families bench the conv net: glyphs "
    "and omniglot at meta-batch 32 with 1 step, the other image families at 4 with 5; nav2d benches "
    "rollouts: batched torch episodes against one environment at a time).",
)
@click.option(
    "--methods",
    default=None,
    help="Comma-separated registered methods.  [default: maml,enhanced; image families maml]",
)
@click.option(
    "--meta-batch",
    type=IntList(1, 10_000),
    default=None,
    help="Tasks per meta-update.  [default: 25,100; glyphs, omniglot 32; other image families 4]",
)
@click.option(
    "--inner-steps",
    type=IntList(1, 100),
    default=None,
    help="Inner-loop steps.  [default: 1,5; glyphs, omniglot 1; other image families 5]",
)
@click.option(
    "--contenders",
    default=None,
    help="Comma-separated, from func, func-compiled, l2l, higher, learn2learn (the plain learn2learn "
    "loop every speed-up is relative to).  [default: all; image families func,func-compiled,l2l,learn2learn]",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=None,
    help="Interleaved timed rounds.  [default: 5; image families and --quick 3]",
)
@click.option(
    "--min-time",
    type=PositiveFloat(),
    default=None,
    help="Seconds per contender per round.  [default: 0.3; image families 1; --quick 0]",
)
@click.option(
    "--shots",
    type=int,
    default=None,
    help="Support examples per task (per class for classification).  [default: the family's protocol]",
)
@click.option(
    "--ways",
    type=int,
    default=None,
    help="Classification families: classes per task.  [default: the family's protocol]",
)
@click.option(
    "--seed", type=TRAIN_SEED, default=None, help="Seed of the models and task streams.  [default: 0]"
)
@click.option("--data-root", default=None, help=DATA_ROOT_HELP)
@click.option("--threads", type=click.IntRange(1, 256), default=1, help="torch intra-op threads.")
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default=None,
    help="Where every contender runs (auto: CUDA when available); not for --paper-protocol, which times "
    "`metakit train`'s default (auto), nor for the nav2d rollout bench (CPU).  [default: cpu]",
)
@click.option(
    "--paper-protocol",
    is_flag=True,
    help="Instead, time `metakit train --task TASK` with every other default (MAML on the family's "
    "protocol) in a temporary folder, beside the plain learn2learn loop's time for the same "
    "iterations (extrapolated from at most 500).",
)
@click.option(
    "--protocol-iterations",
    type=click.IntRange(min=1),
    default=None,
    help="Iterations for --paper-protocol.  [default: the family's protocol: 70000 for sinusoid]",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def bench(quick, task, threads, paper_protocol, protocol_iterations, as_json, **options):
    """Meta-training throughput (tasks/s) and peak memory of each backend against a plain learn2learn loop."""
    options = {name: value for name, value in options.items() if value is not None}
    extra = [name for name in options if name != "data_root"]
    if paper_protocol and (quick or extra):
        given = ["--quick"] * quick + [f"--{name.replace('_', '-')}" for name in extra]
        usage_error(f"--paper-protocol times one training run; drop {', '.join(given)}")
    if protocol_iterations is not None and not paper_protocol:
        usage_error("--protocol-iterations applies to --paper-protocol only")

    if "data_root" in options and "data_root" not in FAMILIES.get(task).options:
        usage_error(f"--data-root does not apply to --task {task}")
    family_bench = FAMILIES.get(task).bench
    if paper_protocol and family_bench is not None:
        usage_error(f"--paper-protocol times supervised families; --task {task} has a bench of its own")
    if family_bench is not None:  # a family that benchmarks itself (RL: the rollout throughput)
        try:
            report, text = family_bench(task, quick, threads, **options)
        except ValueError as err:
            usage_error(str(err))
        click.echo(json.dumps(report) if as_json else text)
        return

    from metakit.experiments.reports import bench as benchmarks

    if paper_protocol:
        try:
            config = TrainConfig(task=task, iterations=protocol_iterations, **options)
        except ValueError as err:  # e.g. a missing --data-root
            usage_error(str(err))
        report = benchmarks.time_paper_protocol(config, threads, progress=not as_json)  # bad data: one line
        click.echo(json.dumps(report) if as_json else benchmarks.format_protocol(report))
        return
    try:
        plan = benchmarks.make_plan(quick, task=task, threads=threads, **options)
    except ValueError as err:
        usage_error(str(err))
    report = benchmarks.run_bench(plan, echo=lambda line: click.echo(line, err=True))
    click.echo(json.dumps(report) if as_json else benchmarks.format_table(report))


main = cli.main
