"""Crash-safe checkpoints, exact resume, safe loading and the divergence guard."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from metakit.cli import cli
from metakit.experiments.training import runs
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.trainer import Divergence, train

CONFIG = dict(method="enhanced", iterations=60, meta_batch=4, inner_steps=2, log_every=5, seed=4)


def final_state(run_dir):
    return torch.load(Path(run_dir) / runs.CHECKPOINT, weights_only=True)


def assert_same_run(a, b):
    sa, sb = final_state(a), final_state(b)
    assert sa["iteration"] == sb["iteration"]
    for key in sa["algorithm"]:
        assert torch.equal(sa["algorithm"][key], sb["algorithm"][key]), key
    ma = (Path(a) / runs.METRICS).read_text().splitlines()
    mb = (Path(b) / runs.METRICS).read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]  # noqa: E731
    assert strip(ma) == strip(mb)


def cli_args(run_dir, **overrides):
    options = {**CONFIG, **overrides, "checkpoint_every": 7}
    args = [sys.executable, "-m", "metakit", "train", "--quiet", "--out", str(run_dir), "--force"]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    train(TrainConfig(**CONFIG, checkpoint_every=7), run_dir, progress=False)
    return run_dir


def kill_when(args, ready, timeout=120):
    """Start ``args``, SIGKILL it once ``ready()`` holds, and return its exit code."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def metric_lines(run_dir):
    path = Path(run_dir) / runs.METRICS
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("after_lines", [2, 7])
def test_sigkill_then_resume_matches_uninterrupted_run_bit_for_bit(tmp_path, reference_run, after_lines):
    run_dir = tmp_path / "run"
    code = kill_when(cli_args(run_dir), lambda: metric_lines(run_dir) >= after_lines)
    assert code == -signal.SIGKILL
    state, _ = runs.load_latest_checkpoint(run_dir)
    assert 0 < state["iteration"] < CONFIG["iterations"]
    result = CliRunner().invoke(cli, ["train", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"resumed at {state['iteration']}" in result.output
    assert_same_run(run_dir, reference_run)


def test_crash_between_checkpoint_renames_resumes_from_previous(tmp_path, reference_run):
    run_dir = tmp_path / "run"
    train(TrainConfig(**{**CONFIG, "iterations": 21}, checkpoint_every=7), run_dir, progress=False)
    # A crash after the current checkpoint became .prev and before .tmp was renamed leaves this:
    os.replace(run_dir / runs.CHECKPOINT, run_dir / (runs.CHECKPOINT + ".tmp"))
    with open(run_dir / (runs.CHECKPOINT + ".tmp"), "r+b") as f:
        f.truncate(100)
    config = json.loads((run_dir / runs.CONFIG).read_text())
    config["iterations"] = CONFIG["iterations"]
    (run_dir / runs.CONFIG).write_text(json.dumps(config))
    result = CliRunner().invoke(cli, ["train", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "resumed at 14" in result.output
    assert_same_run(run_dir, reference_run)


def test_sigterm_writes_a_checkpoint_and_resume_finishes(tmp_path, reference_run):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(cli_args(run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while metric_lines(run_dir) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Interrupted" in err and "--resume" in err
    stopped_at = final_state(run_dir)["iteration"]
    assert stopped_at % 7 != 0 or stopped_at >= 15  # saved at the signal, not only on schedule
    assert CliRunner().invoke(cli, ["train", "--resume", str(run_dir), "--quiet"]).exit_code == 0
    assert_same_run(run_dir, reference_run)


class CreatesFile:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


@pytest.fixture()
def small_run(tmp_path):
    run_dir = tmp_path / "run"
    train(TrainConfig(**{**CONFIG, "iterations": 14}, checkpoint_every=7), run_dir, progress=False)
    return run_dir


def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path, small_run, recwarn):
    marker = tmp_path / "pwned"
    (small_run / runs.PREVIOUS).unlink()
    with open(small_run / runs.CHECKPOINT, "wb") as f:
        pickle.dump({"format": 1, "algorithm": CreatesFile(marker)}, f)
    result = CliRunner().invoke(cli, ["eval", str(small_run), "--tasks", "5"])
    assert result.exit_code == 2
    assert str(small_run / runs.CHECKPOINT) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "refused without running" in result.stderr and "weights_only" not in result.stderr
    assert not [w for w in recwarn if "pickle" in str(w.message)]  # torch's note stays out of the output
    assert not marker.exists()


def test_truncated_checkpoint_falls_back_to_previous_with_a_warning(small_run):
    previous_iteration = torch.load(small_run / runs.PREVIOUS, weights_only=True)["iteration"]
    with open(small_run / runs.CHECKPOINT, "r+b") as f:
        f.truncate(50)
    state, note = runs.load_latest_checkpoint(small_run)
    assert state["iteration"] == previous_iteration == 7
    assert str(small_run / runs.CHECKPOINT) in note
    result = CliRunner().invoke(cli, ["eval", str(small_run), "--tasks", "5", "--json"])
    assert result.exit_code == 0
    assert "Warning" in result.stderr and json.loads(result.stdout)["results"]


def test_wrong_version_checkpoint_is_named(small_run):
    (small_run / runs.PREVIOUS).unlink()
    state = torch.load(small_run / runs.CHECKPOINT, weights_only=True)
    torch.save({**state, "format": 99}, small_run / runs.CHECKPOINT)
    with pytest.raises(runs.RunError, match="unsupported format"):
        runs.load_latest_checkpoint(small_run)


def test_forced_nan_stops_with_message_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    from metakit.experiments.training import trainer as train_module

    class Poisoned(train_module.MetaStep):
        def __call__(self, batch, iteration):
            return float("nan") if iteration == 9 else super().__call__(batch, iteration)

    monkeypatch.setattr(train_module, "MetaStep", Poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(Divergence, match="enhanced.*iteration 10"):
        train(TrainConfig(**CONFIG, checkpoint_every=7, max_skips=1), run_dir, progress=False)
    state, note = runs.load_latest_checkpoint(run_dir)
    assert state["iteration"] == 7 and note is None
    last = json.loads((run_dir / runs.METRICS).read_text().splitlines()[-1])
    assert last["diverged"] is True and last["iteration"] == 10


def test_huge_inner_lr_diverges_with_one_line_error(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--iterations", "5", "--meta-batch", "2", "--inner-lr", "1e30", "--quiet"]
    args += ["--max-skips", "1"]
    result = CliRunner().invoke(cli, [*args, "--out", str(run_dir)])
    assert result.exit_code == 1
    assert "non-finite" in result.stderr and "iteration 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("poisoned, stops_at", [(14, 14), (10, 10)])
def test_a_non_finite_gradient_with_a_finite_loss_never_reaches_a_checkpoint(
    tmp_path, monkeypatch, poisoned, stops_at
):
    from metakit.experiments.training import trainer as train_module

    class NaNGradient(train_module.MetaStep):
        def __call__(self, batch, iteration):
            loss = super().__call__(batch, iteration)
            if iteration + 1 == poisoned:
                next(self.meta_engine.algo.parameters()).grad[0] = float("nan")
            return loss

    monkeypatch.setattr(train_module, "MetaStep", NaNGradient)
    run_dir = tmp_path / "run"
    with pytest.raises(Divergence, match=f"iteration {stops_at}"):
        train(TrainConfig(**CONFIG, checkpoint_every=7, max_skips=1), run_dir, progress=False)
    state, _ = runs.load_latest_checkpoint(run_dir)
    assert state["iteration"] == 7
    assert all(torch.isfinite(v).all() for v in state["algorithm"].values())


def test_start_or_resume_starts_afresh_continues_or_finds_the_run_complete(tmp_path, small_run):
    config = runs.read_config(small_run)
    assert runs.start_or_resume(tmp_path / "new", config) == (config, None)
    assert runs.start_or_resume(small_run, None) == (config, 14)  # complete: 14 of 14 iterations
    with pytest.raises(runs.RunError, match="not empty; choose another directory or pass --force"):
        runs.start_or_resume(small_run, config)
    assert runs.start_or_resume(small_run, config, force=True) == (config, None)
    # resume continues a checkpoint of the same run; compiling changes the speed, not the run
    other_compile = TrainConfig(**{**config.to_dict(), "compile": "on"})
    assert runs.start_or_resume(small_run, other_compile, resume=True) == (other_compile, 14)
    longer = TrainConfig(**{**config.to_dict(), "iterations": 20})
    assert runs.start_or_resume(small_run, longer, resume=True, force=True) == (longer, None)
    with pytest.raises(runs.RunError, match="not empty"):
        runs.start_or_resume(small_run, longer, resume=True)
    (small_run / runs.CHECKPOINT).unlink()
    assert runs.start_or_resume(small_run, config, resume=True) == (config, 7)  # the previous one
    with open(small_run / runs.PREVIOUS, "r+b") as f:
        f.truncate(50)
    assert runs.start_or_resume(small_run, config, resume=True, force=True) == (config, None)
    with pytest.raises(runs.RunError, match="cannot load checkpoint"):
        runs.start_or_resume(small_run, None)
    with pytest.raises(runs.RunError, match="is not a metakit run"):
        runs.start_or_resume(tmp_path, None)


def test_resuming_a_complete_run_trains_and_writes_nothing(small_run):
    before = {p.name: p.read_bytes() for p in small_run.iterdir()}
    result = CliRunner().invoke(cli, ["train", "--resume", str(small_run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"{small_run} has trained enhanced on sinusoid for 14 iterations already; nothing left to do"
    )
    assert {p.name: p.read_bytes() for p in small_run.iterdir()} == before
    summary = train(TrainConfig(**{**CONFIG, "iterations": 14}, checkpoint_every=7), small_run, resume=True)
    assert summary["resumed_from"] == 14 and summary["engine"] is None
    assert {p.name: p.read_bytes() for p in small_run.iterdir()} == before


def test_training_seconds_add_up_the_sessions_of_a_resumed_run(tmp_path):
    assert runs.training_seconds(tmp_path) is None  # no metrics.jsonl
    lines = [
        {"iteration": 10, "seconds": 1.0},
        {"iteration": 20, "seconds": 2.5},
        "garbled {",
        {"iteration": 30, "seconds": 0.5},  # resumed: the clock starts again
        {"iteration": 40, "seconds": 1.5},
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    (tmp_path / runs.METRICS).write_text(text + "\n")
    assert runs.training_seconds(tmp_path) == 2.5 + 1.5
