"""A researcher's first week (issue #22): bad caches, sizes, files and interruptions are one line
(exit 2, or 130 for Ctrl-C) with nothing written or lost, through the command line."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import StopAfter

import metakit.experiments.training.trainer as trainer_module
from metakit.cli import cli

REPO = Path(__file__).resolve().parents[1]
TINY = ["--iterations", "3", "--meta-batch", "2", "--log-every", "1", "--quiet"]


def invoke(*args, **extra):
    """``metakit ARGS`` in-process (stderr apart from stdout)."""
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always separates the streams
        runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], **extra)


def one_line(text: str, start: str) -> bool:
    """Whether ``text`` is one line that begins with ``start``."""
    return text.splitlines() == [text.strip()] and text.startswith(start)


def files(folder: Path) -> set:
    """Every path under ``folder``, relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-iteration sinusoid run that tests only read."""
    run_dir = tmp_path_factory.mktemp("first-week") / "run"
    result = invoke("train", *TINY, "--out", run_dir)
    assert result.exit_code == 0, result.output
    return run_dir


def cache_env(tmp_path: Path, case: str) -> dict:
    """Environment variables that put the user cache where it cannot be written."""
    (tmp_path / "afile").write_text("a file, not a folder\n")
    env = {"METAKIT_CACHE": "", "XDG_CACHE_HOME": "", "HOME": str(tmp_path / "nowhere")}
    if case == "METAKIT_CACHE is a file":
        env["METAKIT_CACHE"] = str(tmp_path / "afile")
    elif case == "XDG_CACHE_HOME under a file":
        env["XDG_CACHE_HOME"] = str(tmp_path / "afile" / "cache")
    else:  # HOME under a file: no ~/.cache can be made
        env["HOME"] = str(tmp_path / "afile" / "home")
    return env


CACHE_CASES = ["METAKIT_CACHE is a file", "XDG_CACHE_HOME under a file", "HOME under a file"]


@pytest.mark.parametrize("case", CACHE_CASES)
def test_an_unusable_cache_folder_is_one_warning_and_eval_runs(tmp_path, tiny_run, case):
    env = {**os.environ, **cache_env(tmp_path, case), "PYTHONPATH": str(REPO)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    command = [sys.executable, "-m", "metakit", "eval", str(tiny_run), "--tasks", "4", "--json"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fallback = Path(tempfile.gettempdir()) / f"metakit-{os.getuid()}" / "torch-compile"
    assert one_line(proc.stderr, "Warning: cannot use ") and str(fallback) in proc.stderr, proc.stderr
    assert proc.stdout.startswith("{")


def test_a_read_only_cache_folder_falls_back_in_process(tmp_path, tiny_run, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("METAKIT_CACHE", str(cache))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != cache and real_access(path, mode))
    result = invoke("eval", tiny_run, "--tasks", 4, "--json")
    assert result.exit_code == 0, result.output
    assert one_line(result.stderr, "Warning: cannot use ") and f"{cache} is not writable" in result.stderr
    assert not os.environ["TORCHINDUCTOR_CACHE_DIR"].startswith(str(cache))


def test_ctrl_c_during_reproduce_says_what_train_says(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "_stop_requests", lambda: contextlib.nullcontext(StopAfter(1)))
    out = tmp_path / "repro"
    args = ["reproduce", "sinusoid", "--seeds", 1, "--iterations", 4, "--tasks", 4, "--methods", "maml"]
    result = invoke(*args, "--quiet", "--out", out)
    assert result.exit_code == 130, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert one_line(result.stderr, "Interrupted: stopped by signal at iteration 2; checkpoint saved in ")
    assert f"metakit reproduce sinusoid --out {out}" in result.stderr
    monkeypatch.undo()
    again = invoke(*args, "--quiet", "--out", out)
    assert again.exit_code == 0 and "resumed at 2" in again.output, again.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--meta-batch", 1099511627776], "--meta-batch must be at most 100000, got 1099511627776"),
        (["--iterations", 99999999999999999999], "--iterations must be at most 10000000000"),
        (["--meta-batch", 100000, "--shots", 100], "examples per meta-batch, which cannot fit in memory"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_before_anything_is_written(tmp_path, args, message):
    out = tmp_path / "run"
    for _ in range(2):  # and the same command again: nothing was left behind to refuse it
        result = invoke("train", *args, "--quiet", "--out", out)
        assert result.exit_code == 2, result.output
        assert one_line(result.stderr, "Error: ") and message in result.stderr, result.stderr
        assert not out.exists()


@pytest.fixture()
def run_copy(tmp_path, tiny_run):
    """A copy of the tiny run that a test may change."""
    shutil.copytree(tiny_run, tmp_path / "run")
    return tmp_path / "run"


def test_plot_of_a_run_whose_log_is_a_folder_is_refused_before_any_figure(run_copy):
    (run_copy / "metrics.jsonl").unlink()
    (run_copy / "metrics.jsonl").mkdir()
    result = invoke("plot", run_copy, "--tasks", 4)
    assert result.exit_code == 2, result.output
    assert one_line(result.stderr, "Error: cannot read ") and "metrics.jsonl" in result.stderr
    assert not (run_copy / "plots").exists()


@pytest.mark.parametrize(
    "text, warning",
    [
        ("", "has no meta-loss lines"),
        ('{"iteration": 1, "meta_lo\n[1]\n', "2 of 2 lines are not metric records"),
    ],
)
def test_plot_of_an_empty_or_garbled_log_warns(run_copy, text, warning):
    (run_copy / "metrics.jsonl").write_text(text)
    result = invoke("plot", run_copy, "--tasks", 4)
    assert result.exit_code == 0, result.output
    assert one_line(result.stderr, "Warning: ") and warning in result.stderr, result.stderr
    assert (run_copy / "plots" / "training_curves.png").is_file()


def test_glyphs_data_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("not a folder\n")
    for root in (tmp_path / "afile", tmp_path / "afile" / "below"):
        result = invoke("train", "--task", "glyphs", "--data-root", root, *TINY, "--out", tmp_path / "run")
        assert result.exit_code == 2, result.output
        assert one_line(result.stderr, "Error: --data-root ") and "is not a folder" in result.stderr
        assert not (tmp_path / "run").exists()


def test_a_run_that_diverged_before_its_first_checkpoint_says_what_is_missing(tmp_path):
    out = tmp_path / "run"
    args = ["--method", "fomaml", "--inner-lr", "1e30", "--max-skips", 1, *TINY, "--out", out]
    result = invoke("train", *args)
    assert result.exit_code == 1, result.output
    assert "non-finite meta-loss or gradient at iteration 1, 1 in a row" in result.stderr
    assert "; no checkpoint was written" in result.stderr
    assert "is kept" not in result.stderr
    resumed = invoke("train", "--resume", out, "--quiet")
    assert resumed.exit_code == 2, resumed.output
    assert one_line(resumed.stderr, f"Error: {out} has a config.json but no checkpoint.pt: ")
    assert f"metakit train --out {out} --force" in resumed.stderr


def test_resume_repairs_a_garbled_metrics_line_and_says_so(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(trainer_module, "_stop_requests", lambda: contextlib.nullcontext(StopAfter(1)))
    args = ["--iterations", 4, "--meta-batch", 2, "--log-every", 1, "--quiet"]
    assert invoke("train", *args, "--out", out).exit_code == 130
    monkeypatch.undo()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "meta_l')  # cut short by a crash
    result = invoke("train", "--resume", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert one_line(result.stderr, "Warning: ")
    assert "metrics.jsonl was repaired: removed unreadable line 3" in result.stderr, result.stderr
    iterations = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [1, 2, 3, 4]


def test_two_trains_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    import datetime as dt

    import metakit.cli as cli_module

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(cli_module, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result = invoke("train", *TINY)
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "maml-20260102-030405",
        "maml-20260102-030405-2",
    ]
    (tmp_path / "empty").mkdir()  # data that cannot be read: the run cannot start and leaves no folder
    refused = invoke("train", "--task", "omniglot", "--data-root", tmp_path / "empty", *TINY)
    assert refused.exit_code == 2 and len(list((tmp_path / "runs").iterdir())) == 2


def final_state(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def test_resume_with_more_iterations_continues_to_the_same_end_as_a_longer_run(tmp_path):
    import torch

    short, long = tmp_path / "short", tmp_path / "long"
    args = ["--meta-batch", 2, "--log-every", 1, "--quiet"]
    assert invoke("train", *args, "--iterations", 3, "--out", short).exit_code == 0
    assert invoke("train", *args, "--iterations", 5, "--out", long).exit_code == 0
    result = invoke("train", "--resume", short, "--iterations", 5, "--quiet")
    assert result.exit_code == 0 and "resumed at 3" in result.stdout, result.output
    assert json.loads((short / "config.json").read_text()) == json.loads((long / "config.json").read_text())
    a, b = final_state(short), final_state(long)
    assert a["iteration"] == 5
    for key, value in b["algorithm"].items():
        assert torch.equal(a["algorithm"][key], value), key
    assert (short / "metrics.jsonl").read_text().count("\n") == 5
    fewer = invoke("train", "--resume", short, "--iterations", 4, "--quiet")
    assert fewer.exit_code == 2, fewer.output
    assert one_line(fewer.stderr, "Error: ") and "has trained 5 iterations already" in fewer.stderr
    stopped = tmp_path / "stopped"  # a run stopped at 5 of 7, shortened to 5: complete, and so recorded
    shutil.copytree(short, stopped)
    config = json.loads((stopped / "config.json").read_text())
    (stopped / "config.json").write_text(json.dumps({**config, "iterations": 7}))
    done = invoke("train", "--resume", stopped, "--iterations", 5, "--quiet")
    assert done.exit_code == 0 and "nothing left to do" in done.stdout, done.output
    assert json.loads((stopped / "config.json").read_text()) == config
    other = invoke("train", "--resume", short, "--iterations", 6, "--seed", 1, "--quiet")
    assert other.exit_code == 2 and "drop --seed" in other.stderr


@pytest.mark.parametrize("schedule", ["--cosine-lr", "sgd-annealed"])
def test_an_extended_annealed_rate_follows_the_schedule_of_the_new_length(tmp_path, schedule):
    import math

    out = tmp_path / "run"
    rate = 0.01
    options = ["--cosine-lr"] if schedule == "--cosine-lr" else ["--outer-optimizer", "sgd-annealed"]
    args = [*options, "--meta-lr", rate, "--meta-batch", 2, "--log-every", 1, "--quiet"]
    assert invoke("train", *args, "--iterations", 4, "--out", out).exit_code == 0
    assert invoke("train", "--resume", out, "--iterations", 8, "--quiet").exit_code == 0
    logged = {
        r["iteration"]: r["meta_lr"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    }

    def expected(i, total):
        if schedule == "--cosine-lr":
            return rate * (1 + math.cos(math.pi * i / total)) / 2
        return rate * (1 - i / total)

    for i in range(1, 9):
        assert logged[i] == pytest.approx(expected(i, 4 if i <= 4 else 8), abs=1e-12), i


def test_results_md_of_one_seed_has_no_seed_spread_and_counts_in_words(tmp_path):
    out = tmp_path / "repro"
    args = ["reproduce", "sinusoid", "--seeds", 1, "--iterations", 1, "--tasks", 4, "--methods", "maml"]
    assert invoke(*args, "--quiet", "--out", out).exit_code == 0
    markdown = (out / "results.md").read_text()
    assert "1 meta-iteration, 1 seed, 4 held-out tasks." in markdown
    assert "| method | 0 steps | 1 step | 5 steps | 10 steps |" in markdown
    assert "[±" not in markdown and "std across seeds" not in markdown


def test_a_variant_named_as_its_shots_titles_its_table_once():
    from metakit.experiments.reports.reproduce import results_markdown
    from metakit.experiments.tasks import FAMILIES

    reproduction = FAMILIES.get("glyphs").reproduction
    row = dict(method="maml", seed=0, accuracy=0.5, ci95=0.1, median=0.5, worse=0, diverged=0, tasks=4)
    rows = [
        {**row, "variant": variant, "shots": shots, "steps": s}
        for variant, shots in (("1-shot", 1), ("5-shot", 5))
        for s in reproduction.reported_steps
    ]
    text = results_markdown(rows, reproduction, FAMILIES.get("glyphs").metric, 4, 10)
    assert "### 1-shot\n" in text and "### 5-shot\n" in text and "1-shot: 1-shot" not in text


def test_version():
    import metakit

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"metakit {metakit.__version__}\n"


def test_library_misuse_says_what_is_accepted():
    import learn2learn
    from torch import nn

    from metakit.wrappers.engines.vectorized import VectorizedEngine
    from metakit.wrappers.enhanced import MAMLEnhanced

    with pytest.raises(TypeError, match=r"takes a metakit learner \(metakit.wrappers.base.MetaLearner"):
        VectorizedEngine(learn2learn.algorithms.MAML(nn.Sequential(nn.Linear(1, 1)), lr=0.1))
    with pytest.raises(
        ValueError, match="MAMLEnhanced needs a model with parameters to adapt; ReLU has none"
    ):
        MAMLEnhanced(nn.ReLU(), lr=0.01)


def test_a_run_saved_for_cuda_moves_to_the_cpu_with_resume_device(tmp_path):
    import torch

    moved, straight = tmp_path / "moved", tmp_path / "straight"
    args = ["--meta-batch", 2, "--log-every", 1, "--checkpoint-every", 2, "--quiet"]
    assert invoke("train", *args, "--iterations", 4, "--device", "cpu", "--out", straight).exit_code == 0
    assert invoke("train", *args, "--iterations", 2, "--device", "cpu", "--out", moved).exit_code == 0
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "device": "cuda", "iterations": 4}))
    if not torch.cuda.is_available():  # as saved, the run cannot continue here; the message says how
        stuck = invoke("train", "--resume", moved, "--quiet")
        assert stuck.exit_code == 2 and one_line(stuck.stderr, "Error: --device cuda: no CUDA device")
        assert "--resume RUN --device cpu" in stuck.stderr
    result = invoke("train", "--resume", moved, "--device", "cpu", "--compile", "off", "--quiet")
    assert result.exit_code == 0, result.output
    assert "resumed at 2" in result.stdout and "on cpu" in result.stdout
    saved = json.loads((moved / "config.json").read_text())
    assert saved == {**config, "iterations": 4, "compile": "off"}  # the run now says where it trains
    a, b = final_state(moved), final_state(straight)
    for key, value in b["algorithm"].items():
        assert torch.equal(a["algorithm"][key], value), key
    still = invoke("train", "--resume", moved, "--device", "cpu", "--seed", 3, "--quiet")
    assert still.exit_code == 2 and "drop --seed" in still.stderr


def test_from_run_starts_a_variant_with_the_given_options_on_top(tmp_path):
    base, variant, other = tmp_path / "base", tmp_path / "variant", tmp_path / "other"
    args = ["--iterations", 3, "--meta-batch", 2, "--quiet"]
    assert invoke("train", "--method", "enhanced", "--meta-lr", 0.002, *args, "--out", base).exit_code == 0
    result = invoke("train", "--from", base, "--seed", 1, "--inner-steps", 2, "--quiet", "--out", variant)
    assert result.exit_code == 0, result.output
    saved, made = (json.loads((d / "config.json").read_text()) for d in (base, variant))
    changed = {k: (saved[k], made[k]) for k in saved if saved[k] != made[k]}
    # The given options, and the default that follows from them (two inner steps of a learned rule
    # clip at 10, as `train --method enhanced --inner-steps 2` would); the base's own choices stay.
    assert changed == {"seed": (0, 1), "inner_steps": (1, 2), "clip_grad": (0.0, 10.0)}
    assert made["meta_lr"] == 0.002 and made["method"] == "enhanced" and made["iterations"] == 3
    assert (variant / "checkpoint.pt").is_file()
    both = invoke("train", "--from", base, "--resume", base, "--quiet")
    assert both.exit_code == 2 and one_line(both.stderr, "Error: --resume continues a run and --from")
    empty = tmp_path / "empty"
    empty.mkdir()
    none = invoke("train", "--from", empty, "--quiet", "--out", other)
    assert none.exit_code == 2 and one_line(none.stderr, "Error: ") and "config.json" in none.stderr
    assert not other.exists()
