"""Tables, plots, help and progress that answer at a glance (issue #22): which checkpoint an
evaluation used, what training ended at and what to run next, figures that say what they show,
help that lists what is accepted, and progress on stderr that suits a terminal or a log."""

import contextlib
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import StopAfter

import metakit.experiments.training.trainer as trainer_module
import metakit.experiments.util.figures as figures_module
import metakit.experiments.util.progress as progress_module
from metakit.cli import cli
from metakit.experiments.methods import METHODS, MethodSpec, register_method
from metakit.experiments.reports import bench
from metakit.experiments.reports.plots import plot_metric_vs_steps, plot_training_curves
from metakit.experiments.tasks import FAMILIES
from metakit.experiments.tasks.family import ACCURACY, MSE
from metakit.experiments.tasks.regression.sinusoid import Sinusoid
from metakit.experiments.tasks.vision import glyph_set
from metakit.experiments.training.runs import load_run
from metakit.wrappers.base import Objective

TINY = ["--iterations", "3", "--meta-batch", "2", "--log-every", "1"]


def invoke(*args, **extra):
    """``metakit ARGS`` in-process; stdout and stderr apart (stderr is not a terminal here)."""
    return CliRunner().invoke(cli, [str(a) for a in args], **extra)


@pytest.fixture
def terminal(monkeypatch):
    """Make stderr count as a terminal (for the trainer's bar and for every progress bar)."""
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    monkeypatch.setattr(trainer_module, "on_terminal", lambda: True)


@pytest.fixture
def drawn(monkeypatch):
    """``{file name: figure}`` of every figure saved while the test runs, drawn before saving."""
    figures, save = {}, figures_module.save

    def keep(fig, path):
        fig.canvas.draw()
        figures[path.name] = fig
        save(fig, path)

    monkeypatch.setattr(figures_module, "save", keep)
    return figures


@pytest.fixture(scope="module")
def sinusoid_runs(tmp_path_factory):
    """A 3-iteration MAML run and a 1-iteration pretraining run (one logged point)."""
    root = tmp_path_factory.mktemp("glance")
    for name, args in {"maml": TINY, "pretrain": ["--iterations", "1", "--meta-batch", "2"]}.items():
        result = invoke("train", "--method", name, *args, "--quiet", "--out", root / name)
        assert result.exit_code == 0, result.output
    return root


# --- what eval evaluated, what training ended at -------------------------------------------


def test_eval_names_the_checkpoint_it_evaluated_and_whether_training_finished(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(trainer_module, "_stop_requests", lambda: contextlib.nullcontext(StopAfter(2)))
    stopped = invoke("train", *TINY, "--iterations", 5, "--checkpoint-every", 1, "--quiet", "--out", run)
    assert stopped.exit_code == 130, stopped.output
    monkeypatch.undo()
    args = ["--tasks", 4, "--shots", 5, "--steps", "0,1", "--seed", 7]
    report = json.loads(invoke("eval", run, *args, "--json").stdout)
    assert (report["iteration"], report["iterations"], report["finished"]) == (3, 5, False)
    assert (report["seed"], report["tasks"]) == (7, 4)
    table = invoke("eval", run, *args)
    assert table.exit_code == 0 and table.stderr == "", table.output
    expected = "checkpoint of iteration 3 of 5 (training not finished); 4 held-out tasks, seed 7"
    assert table.stdout.splitlines()[0] == f"maml — {run}, {expected}"
    # The iteration is the one of the checkpoint whose parameters were evaluated: with the newest
    # checkpoint unreadable, the previous one (iteration 2) is used, and the table says so.
    (run / "checkpoint.pt").write_bytes(b"truncated")
    older = invoke("eval", run, *args)
    assert older.exit_code == 0 and "checkpoint of iteration 2 of 5" in older.stdout.splitlines()[0]
    (run / "checkpoint.pt").unlink()
    assert invoke("train", "--resume", run, "--quiet").exit_code == 0
    done = json.loads(invoke("eval", run, *args, "--json").stdout)
    assert (done["iteration"], done["finished"]) == (5, True)
    assert "(training finished)" in invoke("eval", run, *args).stdout.splitlines()[0]


def test_the_end_of_training_line_gives_the_final_meta_loss_and_the_next_commands(tmp_path):
    run = tmp_path / "my runs" / "maml"  # a path the shell must quote
    result = invoke("train", *TINY, "--iterations", 5, "--log-every", 2, "--quiet", "--out", run)
    assert result.exit_code == 0 and result.stderr == "", result.output
    (line,) = result.stdout.splitlines()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["iteration"] == 5
    # The last logged window holds iteration 5 alone (log every 2 of 5).
    assert f"final meta-loss {last['meta_loss']:.4g} (mean of the last 1 meta-batch);" in line
    quoted = shlex.quote(str(run))
    assert quoted.startswith("'") and line.endswith(
        f"next: `metakit eval {quoted}` (held-out tasks), `metakit plot {quoted}` (figures)"
    )
    command = re.search(r"`(metakit eval [^`]+)`", line).group(1)
    evaluated = invoke(*shlex.split(command)[1:], "--tasks", 2, "--shots", 5, "--steps", 0, "--json")
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout)["iteration"] == 5


# --- progress: a bar on a terminal, a line per logged iteration in a log, --quiet quiet ----


def test_training_in_a_log_prints_one_line_per_logged_iteration(tmp_path):
    result = invoke("train", *TINY, "--iterations", 4, "--log-every", 2, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(",")[0] for line in lines] == ["maml: iteration 2/4", "maml: iteration 4/4"], lines
    assert all(re.search(r", meta-loss \d+\.\d{4}, 0 skipped, \d+\.\ds$", line) for line in lines), lines


def test_training_on_a_terminal_draws_a_bar_and_quiet_draws_nothing(tmp_path, terminal, monkeypatch):
    def prepare(self):  # a family whose data preparation takes long enough to show progress
        with progress_module.bar(3, "preparing the data") as shown:
            shown.update(3)

    monkeypatch.setattr(Sinusoid, "prepare", prepare, raising=False)
    loud = invoke("train", *TINY, "--out", tmp_path / "loud")
    assert loud.exit_code == 0, loud.output
    assert "preparing the data" in loud.stderr and "\rmaml:" in loud.stderr
    assert "iteration 1/3" not in loud.stderr  # frames, not log lines
    quiet = invoke("train", *TINY, "--quiet", "--out", tmp_path / "quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


def test_eval_and_plot_show_progress_on_a_terminal_only(sinusoid_runs, terminal, tmp_path):
    run = sinusoid_runs / "maml"
    shown = invoke("eval", run, "--tasks", 150, "--shots", "5,10", "--steps", "0,1")
    assert shown.exit_code == 0, shown.output
    frames = shown.stderr.split("\r")
    assert any(f.startswith("adapting to held-out tasks:") and "/300 " in f for f in frames), frames
    plotted = invoke("plot", run, "--tasks", 4, "--out", tmp_path / "plots")
    assert plotted.exit_code == 0 and "adapting to held-out tasks" in plotted.stderr, plotted.output


def test_eval_in_a_log_prints_no_progress(sinusoid_runs):
    result = invoke("eval", sinusoid_runs / "maml", "--tasks", 150, "--shots", 5, "--steps", "0,1")
    assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_reproduce_quiet_draws_no_bar_on_a_terminal(tmp_path, terminal):
    args = ["--seeds", 1, "--iterations", 2, "--tasks", 2, "--methods", "maml", "--out", tmp_path / "r"]
    result = invoke("reproduce", "sinusoid", *args, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stderr == "", result.stderr


def test_rendering_the_glyph_set_shows_progress(monkeypatch, terminal, capsys):
    classes = (("Basic Latin", "A"), ("Basic Latin", "B"))
    monkeypatch.setattr(glyph_set, "glyph_classes", lambda: classes)
    images = glyph_set.render_glyphs(size=8)
    assert images.images.shape[:2] == (2, glyph_set.DRAWINGS)
    err = capsys.readouterr().err
    assert "\rrendering the glyph set (once):" in err and "/2 [" in err, err
    with progress_module.silenced():
        glyph_set.render_glyphs(size=8)
    assert capsys.readouterr().err == ""


# --- figures ---------------------------------------------------------------------------------


def rows(metric, values, beyond_from=None, **fields):
    """Evaluation rows at steps 0, 1, 2, ... with ``values`` as the metric."""
    made = []
    for steps, value in enumerate(values):
        row = {**fields, "steps": steps, metric.key: value, "ci95": 0.01, "tasks": 30}
        if beyond_from is not None and steps >= beyond_from:
            row["beyond_horizon"] = True
        made.append(row)
    return made


def lines_of(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_metric_vs_steps_marks_steps_beyond_the_horizon_and_says_what_was_evaluated(tmp_path, drawn):
    results = {
        "maml": rows(MSE, [3.0, 0.6, 0.5, 0.45], shots=5),
        "lslr": rows(MSE, [3.0, 0.4, 0.35, 0.5], beyond_from=2, shots=5),
    }
    plot_metric_vs_steps(results, tmp_path / "mse.png", shots=5, seed=1, horizons={"maml": None, "lslr": 1})
    ax = drawn["mse.png"].axes[0]
    stars = [line for line in ax.get_lines() if line.get_marker() == "*" and len(line.get_xdata())]
    assert [list(line.get_xdata()) for line in stars] == [[2, 3]]  # lslr's steps 2 and 3 only
    legend = [t.get_text().replace("\n", " ") for t in ax.get_legend().get_texts()]
    assert any(t.startswith("beyond the 1 inner step the run was trained for") for t in legend)
    assert ax.get_title() == "5-shot, 30 held-out tasks, seed 1"
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True) if t.get_text()]
    assert labels and all(float(label) > 0 for label in labels), labels  # plain numbers, not 10^x
    ticks = [t.get_text().replace("−", "-") for t in ax.get_xticklabels() if t.get_text()]
    assert ticks and all(float(t) == int(t) for t in ticks), ticks  # whole steps


def test_accuracy_is_plotted_in_percent_with_a_chance_line(tmp_path, drawn):
    results = {"maml": rows(ACCURACY, [0.2, 0.6, 0.7], ways=5, shots=1)}
    plot_metric_vs_steps(results, tmp_path / "acc.png", shots=1, metric=ACCURACY, seed=2)
    ax = drawn["acc.png"].axes[0]
    assert list(lines_of(ax)["maml"].get_ydata()) == pytest.approx([20, 60, 70])
    chance = lines_of(ax)["chance, 1/5 (20%)"]
    assert list(chance.get_ydata()) == [20, 20]
    assert (
        ax.get_ylabel() == "query accuracy (%)"
        and ax.get_title() == "5-way 1-shot, 30 held-out tasks, seed 2"
    )


def test_a_run_with_one_logged_point_still_shows(sinusoid_runs, tmp_path, drawn):
    runs = {name: sinusoid_runs / name for name in ("maml", "pretrain")}
    plot_training_curves(runs, tmp_path / "curves.png")
    lines = lines_of(drawn["curves.png"].axes[0])
    assert len(lines["pretrain"].get_xdata()) == 1 and lines["pretrain"].get_marker() == "o"


def test_training_curves_are_labelled_for_what_each_method_logs(sinusoid_runs, tmp_path, drawn):
    family = FAMILIES.get("sinusoid")()
    runs = {name: sinusoid_runs / name for name in ("maml", "pretrain")}
    objectives = {name: load_run(run)[1].objective for name, run in runs.items()}
    assert objectives == {"maml": Objective.UNROLLED, "pretrain": Objective.JOINT}
    axes = {name: family.training_curve_axis(objective) for name, objective in objectives.items()}
    plot_training_curves(
        runs, tmp_path / "curves.png", axes=axes, settings={"maml": "K = 10", "pretrain": "K = 10"}
    )
    ax = drawn["curves.png"].axes[0]
    assert set(lines_of(ax)) == {
        "maml: meta-training loss (query loss after the inner steps)",
        "pretrain: training loss (joint loss on support and query points)",
    }
    assert ax.get_title() == "trained with K = 10"
    # RL logs minus the return: the curve shows the return itself, on a linear axis.
    rl = FAMILIES.get("nav2d")().training_curve_axis(Objective.UNROLLED)
    plot_training_curves({"maml": runs["maml"]}, tmp_path / "rl.png", axes={"maml": rl})
    ax = drawn["rl.png"].axes[0]
    logged = [
        json.loads(line)["meta_loss"] for line in (runs["maml"] / "metrics.jsonl").read_text().splitlines()
    ]
    assert list(lines_of(ax)["maml"].get_ydata()) == pytest.approx([-v for v in logged])
    assert ax.get_yscale() == "linear" and ax.get_ylabel().startswith("mean return per training episode")


def test_plot_through_the_cli_labels_pretrain_and_writes_the_asked_format(sinusoid_runs, tmp_path, drawn):
    out = tmp_path / "svg"
    args = ["--tasks", 4, "--out", out]
    result = invoke("plot", sinusoid_runs / "maml", sinusoid_runs / "pretrain", *args, "--format", "svg")
    assert result.exit_code == 0, result.output
    paths = result.stdout.split()
    assert [p.rsplit("/", 1)[1] for p in paths] == [
        "adaptation.svg",
        "mse_vs_steps.svg",
        "training_curves.svg",
    ]
    assert all("<svg" in open(p).read(2000) for p in paths)
    curves = drawn["training_curves.svg"].axes[0]
    assert "pretrain: training loss (joint loss on support and query points)" in lines_of(curves)
    assert curves.get_title() == "trained with K = 10, meta-batch 2, seed 0"
    assert "K = 5 support points; 2 held-out tasks (seed 1)" == drawn["adaptation.svg"]._suptitle.get_text()
    pdf = invoke("plot", sinusoid_runs / "maml", "--tasks", 2, "--out", tmp_path / "pdf", "--format", "pdf")
    assert pdf.exit_code == 0 and all(open(p, "rb").read(4) == b"%PDF" for p in pdf.stdout.split())
    refused = invoke("plot", sinusoid_runs / "maml", "--out", tmp_path / "gif", "--format", "gif")
    assert refused.exit_code == 2 and not (tmp_path / "gif").exists()


def test_nav2d_paths_are_readable(tmp_path, drawn):
    run = tmp_path / "nav"
    trained = invoke(
        "train", "--task", "nav2d", "--iterations", 1, "--meta-batch", 2, "--quiet", "--out", run
    )
    assert trained.exit_code == 0, trained.output
    assert invoke("plot", run, "--tasks", 2, "--out", tmp_path / "plots").exit_code == 0
    fig = drawn["paths.png"]
    assert "3 held-out goals (seed 1); 2 of 40 evaluation episodes" in fig._suptitle.get_text()
    for ax in fig.axes:
        assert ax.get_aspect() == 1.0 and ax.get_xlabel() == "x position" and ax.get_ylabel() == "y position"
        assert len(ax.get_lines()) == 2 * 3  # 2 episodes before, after 1 and after 3 steps; not all 40
        markers = {c.get_label() for c in ax.collections}
        assert {"start", "goal"} <= markers
        start = next(c for c in ax.collections if c.get_label() == "start").get_offsets()[0]
        assert list(start) == pytest.approx([0.0, 0.0])  # episodes start at the origin
    curves = drawn["training_curves.png"].axes[0]
    assert curves.get_ylabel() == "mean return per training episode (after the inner steps)"
    assert torch.all(torch.tensor(curves.get_lines()[0].get_ydata()) < 0)  # returns are negative distances


# --- help --------------------------------------------------------------------------------------


def test_top_level_help_lists_every_registered_method():
    register_method("glance-test", MethodSpec(lambda c, m: None, "a method registered at run time"))
    try:
        text = invoke("--help").stdout
    finally:
        METHODS.unregister("glance-test")
    section = text.split("Methods (metakit train --method):", 1)[1]
    listed = re.findall(r"^  (\S+)\s{2,}", section, re.M)
    assert listed[: len(METHODS.names()) + 1] == [*METHODS.names(), "glance-test"]
    assert "a method registered at run time" in section
    assert ", ".join(FAMILIES.names()[:3]) in text


def test_reproduce_offers_only_the_families_it_accepts():
    accepted = [name for name in FAMILIES.names() if FAMILIES.get(name).reproduction is not None]
    assert accepted == ["sinusoid", "glyphs", "omniglot", "mini-imagenet", "nav2d"]
    usage = invoke("reproduce", "--help").stdout.splitlines()[0]
    assert usage.endswith(f" reproduce [OPTIONS] [{'|'.join(accepted)}]"), usage
    refused = invoke("reproduce", "harmonic")
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert (
        "task family 'harmonic' has no reproduction protocol; choose from sinusoid, glyphs, omniglot, "
        "mini-imagenet, nav2d" in refused.stderr
    )


def test_shell_completion_offers_registered_names():
    def complete(words):
        env = {"_METAKIT_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(words.count(" "))}
        result = CliRunner().invoke(cli, [], prog_name="metakit", env=env)
        assert result.exit_code == 0, result.output
        return [line.split(",", 1)[1] for line in result.stdout.splitlines()]

    assert complete("metakit reproduce ") == ["sinusoid", "glyphs", "omniglot", "mini-imagenet", "nav2d"]
    assert complete("metakit train --method m") == ["maml", "mc", "metasgd"]
    assert complete("metakit train --task g") == ["glyphs"]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert 'eval "$(_METAKIT_COMPLETE=bash_source metakit)"' in readme


def test_bench_header_gives_the_shots_used_and_device_help_says_where_it_applies():
    report = {
        "plan": {**bench.asdict(bench.QUICK), "task": "glyphs"},
        "baseline": "learn2learn",
        "shots": 1,
        "query": 1,
        "ways": 5,
        "results": [],
        "gemm_gflops": [30.0, 31.0],
    }
    header = bench.format_table(report).splitlines()[0]
    assert header.startswith("glyphs, 5-way 1-shot, 1 query images per class; cpu, 1 thread(s)")
    report.update(task="sinusoid", shots=10, query=10, ways=None)
    assert "K = 10 support and 10 query points per task; cpu" in bench.format_table(report)
    assert "K=default" not in bench.format_table(report)
    text = " ".join(invoke("bench", "--help").stdout.split())
    assert "--device [auto|cpu|cuda] Where every contender runs (auto: CUDA when available); not for" in text
    assert "--paper-protocol, which times `metakit train`'s default (auto)" in text
    assert "nor for the nav2d rollout bench (CPU). [default: cpu]" in text
    # The defaults the help states for image families are their bench plans.
    for name in FAMILIES.names():
        if FAMILIES.get(name).bench_plan:
            plan = bench.make_plan(task=name)
            shape = ((32,), (1,)) if name in ("glyphs", "omniglot") else ((4,), (5,))
            assert (plan.meta_batch, plan.inner_steps) == shape, name
            assert (plan.methods, plan.repeats, plan.min_time) == (("maml",), 3, 1.0), name
            assert plan.contenders == ("func", "func-compiled", "l2l", "learn2learn"), name
    assert "image families func,func-compiled,l2l,learn2learn]" in text.replace("func- ", "func-")
    for stated in ("25,100; glyphs, omniglot 32; other image families 4]", "1,5; glyphs, omniglot 1; other"):
        assert stated in text
    refused = invoke("bench", "--paper-protocol", "--device", "cpu")
    assert refused.exit_code == 2 and "drop --device" in refused.stderr
    rollouts = invoke("bench", "--task", "nav2d", "--device", "cpu")
    assert rollouts.exit_code == 2 and "drop --device" in rollouts.stderr
