"""The ``metakit`` command line, end to end through ``click.testing.CliRunner``.

Every run here is tiny (a few meta-updates on 4 tasks, evaluation on 20 held-out tasks): these tests
check the plumbing (options → config → files → evaluation report, usage errors), not learning.
"""

import hashlib
import itertools
import json
import math
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from metakit.cli import cli
from metakit.experiments.methods import METHODS
from metakit.experiments.tasks import FAMILIES
from metakit.experiments.training.config import FAMILY_DEFAULTS, TrainConfig

ROW_KEYS = {"shots", "steps", "mse", "ci95", "median", "worse", "diverged", "tasks"}
EVAL_SHOTS, EVAL_STEPS, EVAL_TASKS = [2, 5], [0, 1, 3], 20
EVAL_ARGS = ["--tasks", str(EVAL_TASKS), "--shots", "2,5", "--steps", "0,1,3"]
# A small, non-default value for every numeric training option, so the config round trip is meaningful.
TINY = dict(
    shots=4, inner_steps=2, inner_lr=0.02, meta_batch=4, meta_lr=0.002, iterations=5, seed=7, log_every=2
)
LOGGED_ITERATIONS = [2, 4, 5]  # every --log-every 2 iterations, plus the last of 5
RUN_FILES = {"config.json", "metrics.jsonl", "checkpoint.pt"}
SIX_METHODS = ("maml", "fomaml", "reptile", "mc", "lslr", "enhanced")


def make_runner() -> CliRunner:
    """A runner that keeps stderr apart from stdout (the default from click 8.2; opt-in before)."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 removed mix_stderr and always separates the streams
        return CliRunner()


def invoke(*args, **extra):
    """Run ``metakit ARGS`` in-process; the result has ``exit_code``, ``stdout`` and ``stderr``."""
    return make_runner().invoke(cli, [str(a) for a in args], **extra)


def option_args(options: dict) -> list:
    """``{"inner_lr": 0.02, "cosine_lr": True}`` → ``["--inner-lr", "0.02", "--cosine-lr"]``."""
    args = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def train_ok(out: Path, **options):
    """Train a tiny run into ``out`` and check the command's own output."""
    result = invoke("train", *option_args(options), "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # --quiet: no progress bar, and no warning is expected
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and options.get("method", "maml") in lines[0]
    return result


def eval_json(run_dir: Path, *args) -> dict:
    result = invoke("eval", run_dir, "--json", *args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert len(result.stdout.strip().splitlines()) == 1, "eval --json prints exactly one line"
    return json.loads(result.stdout)


def check_report(report: dict, run_dir: Path, method: str, shots, steps, tasks: int) -> None:
    """The documented schema of ``eval --json``: one row per (shots, steps) pair, in that order."""
    assert set(report) == {
        "run", "method", "iteration", "iterations", "trained", "finished", "selected", "seed", "tasks",
        "horizon", "results"
    }  # fmt: skip
    assert report["run"] == str(run_dir)
    assert report["method"] == method
    # What was evaluated: the checkpoint of a finished run (its last iteration), the held-out set.
    config = json.loads((run_dir / "config.json").read_text())
    assert report["iteration"] == report["iterations"] == config["iterations"] and report["finished"] is True
    assert report["trained"] == report["iteration"] and report["selected"] is None  # --select-on last
    assert report["tasks"] == tasks and type(report["seed"]) is int
    # Methods whose inner rule is learned per step record the steps it was trained for.
    learned = METHODS.get(method).learned_inner_rule
    assert (type(report["horizon"]) is int) if learned else report["horizon"] is None, report["horizon"]
    rows = report["results"]
    assert isinstance(rows, list)
    assert [(r["shots"], r["steps"]) for r in rows] == list(itertools.product(shots, steps))
    for row in rows:
        beyond = learned and row["steps"] > report["horizon"]
        assert set(row) == ROW_KEYS | ({"beyond_horizon"} if beyond else set()), row
        assert row.get("beyond_horizon", False) is beyond
        for key in ("shots", "steps", "tasks", "worse", "diverged"):
            assert type(row[key]) is int, (key, row)
        for key in ("mse", "ci95", "median"):
            assert type(row[key]) is float and math.isfinite(row[key]), (key, row)
        assert row["tasks"] == tasks
        assert row["mse"] > 0 and row["ci95"] >= 0 and row["median"] > 0
        assert row["diverged"] == 0 and 0 <= row["worse"] <= tasks
        assert row["steps"] > 0 or row["worse"] == 0
    # Every K sees the same held-out tasks and query points, so before adaptation K is irrelevant.
    unadapted = {r["mse"] for r in rows if r["steps"] == 0}
    assert len(unadapted) <= 1, unadapted


def parse_table(stdout: str):
    """``{(shots, steps): (mse, ci95, tasks)}`` and the lines that are not table rows."""
    rows, other = {}, []
    for line in stdout.splitlines():
        # shots, steps (``*``: beyond the trained horizon), MSE, CI, [median, worse, diverged], tasks
        number, extra = r"(\d+\.\d+)", r"(?:\s+(?:\d+\.\d+|—)\s+\d+\s+\d+)?"
        match = re.fullmatch(rf"\s*(\d+)\s+(\d+)\*?\s+{number}\s+{number}{extra}\s+(\d+)\s*", line)
        if match:
            shots, steps, mse, ci, tasks = match.groups()
            assert (int(shots), int(steps)) not in rows, f"duplicate row: {line!r}"
            rows[int(shots), int(steps)] = (float(mse), float(ci), int(tasks))
        elif line.strip():
            other.append(line)
    return rows, other


def snapshot(root: Path) -> dict:
    """Every file and directory under ``root``, files with a hash of their bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def flat_tensors(obj, prefix=""):
    """``{path: value}`` for every leaf of a checkpoint (nested dicts and lists)."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in flat_tensors(val, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in flat_tensors(val, f"{prefix}/{i}").items()}
    return {prefix: obj}


def same_leaves(a: dict, b: dict) -> bool:
    fa, fb = flat_tensors(a), flat_tensors(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        va, vb = fa[key], fb[key]
        if isinstance(va, torch.Tensor):
            if not (va.dtype == vb.dtype and va.shape == vb.shape and torch.equal(va, vb)):
                return False
        elif va != vb:
            return False
    return True


def metrics(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- 1, 2, 3: train → eval round trips -------------------------------------------------------------

ROUND_TRIPS = [(method, "func") for method in SIX_METHODS] + [
    (method, backend) for backend in ("l2l", "higher") for method in ("maml", "enhanced")
]


@pytest.mark.parametrize("method, backend", ROUND_TRIPS, ids=[f"{m}-{b}" for m, b in ROUND_TRIPS])
def test_train_then_eval_round_trip(tmp_path, method, backend):
    run_dir = tmp_path / "run"
    options = dict(method=method, backend=backend, **TINY)
    train_ok(run_dir, **options)

    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    assert not list(run_dir.glob("*.tmp"))
    config = json.loads((run_dir / "config.json").read_text())
    assert config == TrainConfig(**options, query=options["shots"]).to_dict()

    records = metrics(run_dir)
    assert [r["iteration"] for r in records] == LOGGED_ITERATIONS
    for record in records:
        assert math.isfinite(record["meta_loss"]) and record["meta_loss"] > 0
        assert record["meta_lr"] == TINY["meta_lr"]  # constant without --cosine-lr
    assert [r["seconds"] for r in records] == sorted(r["seconds"] for r in records)

    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["iteration"] == TINY["iterations"]
    assert state["algorithm"] and all(isinstance(t, torch.Tensor) for t in state["algorithm"].values())

    report = eval_json(run_dir, *EVAL_ARGS)
    check_report(report, run_dir, method, EVAL_SHOTS, EVAL_STEPS, EVAL_TASKS)

    # The table shows the same numbers, one row per (shots, steps); LSLR / Meta-Curvature runs add
    # one summary line of what was learned.
    table = invoke("eval", run_dir, *EVAL_ARGS)
    assert table.exit_code == 0, table.output
    assert table.stderr == ""
    rows, other = parse_table(table.stdout)
    assert set(rows) == set(itertools.product(EVAL_SHOTS, EVAL_STEPS))
    for r in report["results"]:
        mse, ci, tasks = rows[r["shots"], r["steps"]]
        assert mse == pytest.approx(r["mse"], abs=6e-5) and ci == pytest.approx(r["ci95"], abs=6e-5)
        assert tasks == EVAL_TASKS
    assert method in other[0] and str(run_dir) in other[0]  # title line
    assert re.search(r"shots\s+steps\s+MSE", other[1])  # header line
    footnote = [line for line in other[2:] if line.startswith("* ")]
    summary = [line for line in other[2:] if not line.startswith("* ")]
    if method in ("mc", "lslr", "enhanced"):  # steps 3 lie beyond the 2 trained inner steps
        assert re.search(r"^\s*5\s+3\*\s", table.stdout, re.M) and not re.search(r"\s1\*", table.stdout)
        assert footnote == [
            "* beyond the 2 inner steps the run was trained for"
            "; there a step is taken only where it lowers the task's support loss"
        ], other
    else:
        assert "*" not in table.stdout and footnote == [], other
    if method in ("lslr", "enhanced"):
        assert len(summary) == 1 and summary[0].startswith("learned rates "), other
        per_step = re.findall(r"step (\d+): (\S+)\.\.(\S+) \(mean (\S+)\)", summary[0])
        assert [int(s) for s, *_ in per_step] == list(range(1, TINY["inner_steps"] + 1)), summary
        for _, low, high, mean in per_step:
            assert 0 < float(low) <= float(mean) <= float(high) < 1
    if method in ("mc", "enhanced"):
        assert len(summary) == 1 and re.search(r"curvature max \|M − I\| \d+\.\d+", summary[0]), other
    if method in ("maml", "fomaml", "reptile"):
        assert summary == [], other


@pytest.mark.parametrize("method", ["maml", "enhanced"])
def test_maml_plus_plus_options_round_trip(tmp_path, method):
    run_dir = tmp_path / "run"
    options = dict(
        method=method, **TINY, multi_step_loss=True, msl_anneal=3, first_order_until=2, cosine_lr=True
    )
    train_ok(run_dir, **options)
    expected = TrainConfig(**options, query=options["shots"]).to_dict()
    assert json.loads((run_dir / "config.json").read_text()) == expected
    lrs = [r["meta_lr"] for r in metrics(run_dir)]
    assert 0 < lrs[0] < TINY["meta_lr"] and lrs == sorted(lrs, reverse=True)
    assert lrs[-1] == pytest.approx(0, abs=1e-12)  # cosine annealing reaches zero at the last iteration
    check_report(eval_json(run_dir, *EVAL_ARGS), run_dir, method, EVAL_SHOTS, EVAL_STEPS, EVAL_TASKS)


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory):
    """One tiny trained MAML run shared by tests that only read it (or copy it first)."""
    run_dir = tmp_path_factory.mktemp("maml") / "run"
    train_ok(run_dir, method="maml", iterations=5, meta_batch=4, log_every=1)
    return run_dir


def test_eval_defaults_table_has_a_row_per_shots_and_steps(maml_run):
    result = invoke("eval", maml_run, "--tasks", EVAL_TASKS)
    assert result.exit_code == 0, result.output
    rows, other = parse_table(result.stdout)
    assert set(rows) == set(itertools.product([5, 10, 20], [0, 1, 5, 10]))  # the documented defaults
    assert {tasks for _, _, tasks in rows.values()} == {EVAL_TASKS}
    assert len(other) == 2  # title and header; MAML has no learned-rate summary


def test_eval_lists_are_sorted_and_deduplicated(maml_run):
    report = eval_json(maml_run, "--tasks", 5, "--shots", "5,2,5", "--steps", " 3, 0,1,0")
    check_report(report, maml_run, "maml", [2, 5], [0, 1, 3], 5)


def test_progress_bar_stays_off_stdout(tmp_path):
    run_dir = tmp_path / "run"
    result = invoke("train", "--iterations", 3, "--meta-batch", 2, "--out", run_dir)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 and str(run_dir) in result.stdout


def test_default_out_is_a_timestamped_dir_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--method", "fomaml", "--iterations", 1, "--meta-batch", 2, "--quiet")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"fomaml-\d{8}-\d{6}", run_dir.name)
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    assert str(Path("runs") / run_dir.name) in result.stdout


# --- 4: determinism ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["maml", "enhanced"])
def test_same_seed_same_checkpoint_and_same_eval(tmp_path, monkeypatch, method):
    options = dict(method=method, iterations=5, meta_batch=4, inner_steps=2, seed=3, log_every=1)
    reports, states, losses = [], [], []
    for name in ("a", "b", "other-seed"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)  # the same relative --out, so even "run" matches
        seed = options["seed"] + (name == "other-seed")
        train_ok(Path("run"), **{**options, "seed": seed})
        states.append(torch.load("run/checkpoint.pt", map_location="cpu", weights_only=True))
        losses.append([(r["iteration"], r["meta_loss"]) for r in metrics(Path("run"))])
        result = invoke("eval", "run", "--json", *EVAL_ARGS)
        assert result.exit_code == 0, result.output
        reports.append(result.stdout)

    assert same_leaves(states[0], states[1])
    assert losses[0] == losses[1]
    assert reports[0] == reports[1]  # byte-identical JSON
    assert not same_leaves(states[0]["algorithm"], states[2]["algorithm"]), "--seed has no effect"
    assert reports[0] != reports[2]


def test_eval_seed_picks_the_held_out_tasks(maml_run):
    first = eval_json(maml_run, *EVAL_ARGS, "--seed", 1)
    assert eval_json(maml_run, *EVAL_ARGS, "--seed", 1) == first
    assert eval_json(maml_run, *EVAL_ARGS, "--seed", 2)["results"] != first["results"]


# --- 5: usage errors -----------------------------------------------------------------------------

# Rejected training commands carry a tiny budget and a fresh --out, so a command that is wrongly
# accepted finishes fast and leaves a trace the snapshot check sees.
TRAIN = ["train", "--iterations", "2", "--meta-batch", "2", "--quiet", "--out", "new"]
BAD_INPUTS = {
    "unknown-method": [*TRAIN, "--method", "matchingnet"],
    "unknown-task": [*TRAIN, "--task", "omniglot"],
    "shots-zero": [*TRAIN, "--shots", "0"],
    "shots-negative": [*TRAIN, "--shots", "-3"],
    "iterations-not-a-number": [*TRAIN, "--iterations", "abc"],
    "iterations-fractional": [*TRAIN, "--iterations", "1.5"],
    "iterations-zero": [*TRAIN, "--iterations", "0"],
    "inner-steps-zero": [*TRAIN, "--inner-steps", "0"],
    "inner-lr-zero": [*TRAIN, "--inner-lr", "0"],
    "inner-lr-negative": [*TRAIN, "--inner-lr", "-0.1"],
    "inner-lr-nan": [*TRAIN, "--inner-lr", "nan"],
    "meta-lr-zero": [*TRAIN, "--meta-lr", "0"],
    "meta-lr-inf": [*TRAIN, "--meta-lr", "inf"],
    "meta-batch-zero": [*TRAIN, "--meta-batch", "0"],
    "log-every-zero": [*TRAIN, "--log-every", "0"],
    "seed-not-a-number": [*TRAIN, "--seed", "x"],
    "seed-out-of-range": [*TRAIN, "--seed", str(2**70)],
    "unknown-backend": [*TRAIN, "--backend", "jax"],
    "reptile-higher": [*TRAIN, "--method", "reptile", "--backend", "higher"],
    "reptile-multi-step-loss": [*TRAIN, "--method", "reptile", "--multi-step-loss", "--inner-steps", "2"],
    "reptile-first-order-until": [*TRAIN, "--method", "reptile", "--first-order-until", "3"],
    "fomaml-first-order-until": [*TRAIN, "--method", "fomaml", "--first-order-until", "3"],
    "multi-step-loss-one-inner-step": [*TRAIN, "--multi-step-loss", "--inner-steps", "1"],
    "multi-step-loss-default-inner-steps": [*TRAIN, "--multi-step-loss"],
    "outer-optimizer-unknown": [*TRAIN, "--outer-optimizer", "rmsprop"],
    "sgd-annealed-with-cosine-lr": [*TRAIN, "--outer-optimizer", "sgd-annealed", "--cosine-lr"],
    "inner-all-points-with-maml": [*TRAIN, "--inner-all-points"],
    "out-existing-run-without-force": [*TRAIN, "--out", "run"],
    "out-is-a-file": [*TRAIN, "--out", "afile"],
    "out-below-a-file": [*TRAIN, "--out", "afile/run"],
    "train-unknown-option": [*TRAIN, "--epochs", "3"],
    "train-option-missing-value": [*TRAIN, "--shots"],
    "flag-given-a-value": [*TRAIN, "--force=yes"],
    "eval-not-a-run": ["eval", "notrun", "--tasks", "2"],
    "eval-empty-dir": ["eval", "empty", "--tasks", "2"],
    "eval-nonexistent": ["eval", "missing", "--tasks", "2"],
    "eval-a-file": ["eval", "afile", "--tasks", "2"],
    "eval-missing-run-dir": ["eval"],
    "eval-corrupt-config": ["eval", "badconfig", "--tasks", "2"],
    "eval-config-unknown-method": ["eval", "badmethod", "--tasks", "2"],
    "eval-checkpoint-of-another-method": ["eval", "othermethod", "--tasks", "2"],
    "eval-corrupt-checkpoint": ["eval", "badcheckpoint", "--tasks", "2"],
    "eval-shots-zero": ["eval", "run", "--tasks", "2", "--shots", "0"],
    "eval-shots-not-a-number": ["eval", "run", "--tasks", "2", "--shots", "abc"],
    "eval-shots-partly-a-number": ["eval", "run", "--tasks", "2", "--shots", "5,x"],
    "eval-shots-empty": ["eval", "run", "--tasks", "2", "--shots", ","],
    "eval-steps-negative": ["eval", "run", "--tasks", "2", "--steps", "-1"],
    "eval-steps-one-negative": ["eval", "run", "--tasks", "2", "--steps", "0,1,-1"],
    "eval-tasks-one": ["eval", "run", "--tasks", "1"],
    "eval-tasks-not-a-number": ["eval", "run", "--tasks", "many"],
    "eval-seed-out-of-range": ["eval", "run", "--tasks", "2", "--seed", str(2**70)],
    "eval-unknown-option": ["eval", "run", "--tasks", "2", "--plot"],
    "resume-with-other-options": ["train", "--resume", "run", "--seed", "3"],
    "resume-not-a-run": ["train", "--resume", "notrun"],
    "compile-with-l2l": [*TRAIN, "--compile", "--backend", "l2l"],
    "plot-not-a-run": ["plot", "notrun", "--out", "plots"],
    "plot-no-run": ["plot"],
    "plot-shots-zero": ["plot", "run", "--shots", "0", "--out", "plots"],
    "plot-out-below-a-file": ["plot", "run", "--out", "afile/plots"],
    "reproduce-unknown-benchmark": ["reproduce", "omniglot", "--out", "repro"],
    "reproduce-unknown-method": ["reproduce", "sinusoid", "--methods", "maml,matchingnet", "--out", "repro"],
    "reproduce-seeds-zero": ["reproduce", "sinusoid", "--seeds", "0", "--out", "repro"],
    "reproduce-out-is-a-file": ["reproduce", "sinusoid", "--out", "afile", "--iterations", "1"],
    "bench-meta-batch-zero": ["bench", "--quick", "--meta-batch", "0"],
    "unknown-subcommand": ["fit", "--method", "maml"],
    "unknown-group-option": ["--verbose", "train"],
}


@pytest.fixture()
def workspace(tmp_path, maml_run, monkeypatch):
    """A directory with a trained run and things that are not runs; the current directory."""
    shutil.copytree(maml_run, tmp_path / "run")
    (tmp_path / "afile").write_text("not a run\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "notes.txt").write_text("hello\n")
    config = json.loads((maml_run / "config.json").read_text())
    for name, config_text in [
        ("badconfig", "{not json"),
        ("badmethod", json.dumps({**config, "method": "matchingnet"})),
        ("othermethod", json.dumps({**config, "method": "enhanced"})),  # checkpoint holds MAML
        ("badcheckpoint", None),
    ]:
        shutil.copytree(maml_run, tmp_path / name)
        if config_text is not None:
            (tmp_path / name / "config.json").write_text(config_text)
    (tmp_path / "badcheckpoint" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("args", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_usage_error_and_changes_nothing(workspace, args):
    before = snapshot(workspace)
    result = invoke(*args)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and len(lines[0]) > len("Error: "), lines
    assert snapshot(workspace) == before  # nothing written, created or removed (the run included)


def test_no_arguments_shows_help_not_an_error(tmp_path):
    result = invoke()
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code in (0, 2)
    assert "Commands:" in result.output and "train" in result.output and "eval" in result.output
    assert "Error:" not in result.output, result.output


# --- 6: help -------------------------------------------------------------------------------------


def help_entries(text: str) -> dict:
    """``{option name: entry text}`` for the Options section of a --help page."""
    body = text.split("Options:", 1)[1]
    entries, current = [], []
    for line in body.splitlines():
        if line.strip() and not line.startswith(" "):  # the next section
            break
        if re.match(r"^  -", line):
            current = [line.strip()]
            entries.append(current)
        elif current and line.strip():
            current.append(line.strip())
    table = {}
    for entry in entries:
        head = entry[0].split("  ")[0]
        text = " ".join(entry)
        for name in re.findall(r"--?[\w-]+", head):
            table[name] = text
    return table


def default_shown(entry: str):
    match = re.search(r"\[default: ([^;\]]*)", entry)
    return match and match.group(1)


def help_text(*args) -> str:
    result = invoke(*args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.startswith("Usage: ")
    return result.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_group_help(flag):
    text = help_text(flag)
    assert re.search(r"^\s+train\s+\S", text, re.M) and re.search(r"^\s+eval\s+\S", text, re.M)
    assert "-h, --help" in text


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_train_help_shows_every_option_with_its_default(flag):
    text = help_text("train", flag)
    entries = help_entries(text)
    shown_elsewhere = {
        "query": "--shots",
        "data_root": "~/.cache/metakit for glyphs",
        "clip_grad": "10 for a learned inner rule over more than one step, else 0",
        "per_step_bn": "off",
        "head": "linear for finetune",
        "select_every": "--checkpoint-every",
    }
    for field in fields(TrainConfig):
        option = "--" + field.name.replace("_", "-")
        value = field.default
        assert option in entries, f"{option} missing from train --help"
        if field.name in shown_elsewhere:
            expected = shown_elsewhere[field.name]
        elif field.name in FAMILY_DEFAULTS:
            expected = "the task family's protocol"
        elif isinstance(value, bool):
            expected = option[2:] if value else "no-" + option[2:]
        else:
            expected = str(value)
        assert default_shown(entries[option]) == expected, entries[option]
    assert default_shown(entries["--out"]) == "runs/METHOD-TIMESTAMP"
    for option in ("--force", "--quiet", "--help"):
        assert option in entries
    for method in METHODS.names():
        assert method in entries["--method"]
    for task in FAMILIES.names():
        assert task in entries["--task"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_eval_help_shows_every_option_with_its_default(flag):
    text = help_text("eval", flag)
    assert "RUN_DIR" in text.splitlines()[0]
    entries = help_entries(text)
    expected = {
        "--tasks": "600", "--shots": "the family's", "--steps": "the family's", "--seed": "1",
        "--ways": "the run's", "--device": "auto",
    }  # fmt: skip
    for option, default in expected.items():
        assert default_shown(entries[option]) == default, entries[option]
    assert "--json" in entries and "--help" in entries


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from metakit.cli import cli\n"
        "for args in ([], ['train'], ['eval']):\n"
        "    assert CliRunner().invoke(cli, [*args, '--help']).exit_code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --- 7: --force ----------------------------------------------------------------------------------


def test_force_overwrites_an_existing_run(tmp_path, maml_run):
    run_dir = tmp_path / "run"
    shutil.copytree(maml_run, run_dir)
    old_state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert len(metrics(run_dir)) == 5

    result = invoke(
        "train", "--method", "lslr", "--iterations", 4, "--meta-batch", 2, "--seed", 1, "--quiet",
        "--log-every", 4, "--out", run_dir, "--force",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "config.json").read_text())["method"] == "lslr"
    assert [r["iteration"] for r in metrics(run_dir)] == [4]  # the old run's lines are gone
    new_state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert new_state["iteration"] == 4 and new_state["algorithm"].keys() != old_state["algorithm"].keys()
    assert not list(run_dir.glob("*.tmp"))
    assert eval_json(run_dir, "--tasks", 5)["method"] == "lslr"


def test_empty_existing_out_needs_no_force(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train_ok(run_dir, iterations=1, meta_batch=2)
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
