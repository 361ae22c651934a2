"""A meta-batch whose meta-loss or gradient is non-finite is skipped and counted; ``max_skips`` in a
row stop the run; a resumed run counts on and ends bit-for-bit where an uninterrupted one does."""

import json
import os
import signal
import warnings

import pytest
import torch
from test_cli import invoke
from test_resume import assert_same_run

from metakit.experiments.training import runs
from metakit.experiments.training import trainer as train_module
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.trainer import Divergence, Interrupted, train

CONFIG = dict(method="lslr", iterations=20, meta_batch=4, inner_steps=2, log_every=5, seed=3)


def exploding(monkeypatch, iterations, signal_at=None):
    """Give one task of the meta-batch of each of ``iterations`` (0-based) query targets of 1e38, so
    that its query loss, and with it the batch's meta-loss and gradient, is infinite; send this
    process SIGTERM during iteration ``signal_at``."""

    class Exploding(train_module.MetaStep):
        def __call__(self, batch, iteration):
            if iteration in iterations:
                y_query = batch.y_query.clone()
                y_query[1] = 1e38
                batch = type(batch)(batch.x_support, batch.y_support, batch.x_query, y_query)
            if iteration == signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__call__(batch, iteration)

    monkeypatch.setattr(train_module, "MetaStep", Exploding)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / runs.METRICS).read_text().splitlines()]


def test_a_batch_with_one_exploding_task_is_skipped_and_counted_and_the_run_goes_on(tmp_path, monkeypatch):
    exploding(monkeypatch, {6, 7, 13})
    summary = train(TrainConfig(**CONFIG, max_skips=3), tmp_path / "run", progress=False)
    assert summary["skipped"] == 3
    lines = metrics(tmp_path / "run")
    assert [(r["iteration"], r["skipped"]) for r in lines] == [(5, 0), (10, 2), (15, 1), (20, 0)]
    assert all(r["meta_loss"] is not None and r["meta_loss"] < 1e3 for r in lines)
    state = torch.load(tmp_path / "run" / runs.CHECKPOINT, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["algorithm"].values())
    assert state["skips"] == {"total": 3, "in_row": 0, "logged": 0}
    adam_steps = {s["step"].item() for s in state["optimizer"]["state"].values()}
    assert adam_steps == {20 - 3}  # no optimizer step for a skipped batch


def test_max_skips_in_a_row_stop_the_run_and_keep_the_last_checkpoint(tmp_path, monkeypatch):
    exploding(monkeypatch, {3, 4, 9, 10, 11})  # two in a row go on; the third in a row stops it
    run_dir = tmp_path / "run"
    with pytest.raises(Divergence, match=r"lslr: .* at iteration 12, 3 in a row \(--max-skips 3\)"):
        train(TrainConfig(**CONFIG, max_skips=3, checkpoint_every=7), run_dir, progress=False)
    state, _ = runs.load_latest_checkpoint(run_dir)
    assert state["iteration"] == 7 and state["skips"]["total"] == 2
    last = metrics(run_dir)[-1]
    assert last["diverged"] is True and last["iteration"] == 12 and last["skipped"] == 2  # since line 10


def test_a_resume_after_skips_ends_bit_for_bit_where_an_uninterrupted_run_does(tmp_path, monkeypatch):
    skipped = {2, 8, 11, 16}  # before the checkpoint at 7, in the window it cuts, and after
    exploding(monkeypatch, skipped)
    train(TrainConfig(**CONFIG, checkpoint_every=7), tmp_path / "whole", progress=False)
    exploding(monkeypatch, skipped, signal_at=8)  # seen at the next iteration: checkpoint at 10
    with pytest.raises(Interrupted, match="iteration 10"):
        train(TrainConfig(**CONFIG, checkpoint_every=7), tmp_path / "cut", progress=False)
    assert torch.load(tmp_path / "cut" / runs.CHECKPOINT, weights_only=True)["skips"]["total"] == 2
    exploding(monkeypatch, skipped)
    summary = train(None, tmp_path / "cut", progress=False, resume=True)
    assert summary["resumed_from"] == 10 and summary["skipped"] == 4
    assert_same_run(tmp_path / "cut", tmp_path / "whole")
    whole = torch.load(tmp_path / "whole" / runs.CHECKPOINT, weights_only=True)
    cut = torch.load(tmp_path / "cut" / runs.CHECKPOINT, weights_only=True)
    assert whole["skips"] == cut["skips"]


def test_the_end_of_training_line_shows_the_skips(tmp_path):
    args = ["--iterations", "3", "--meta-batch", "2", "--inner-lr", "1e30", "--cosine-lr", "--quiet"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke("train", *args, "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert not caught, [str(w.message) for w in caught]
    assert "3 non-finite meta-batches skipped; no f" in result.stdout and "run saved to" in result.stdout
    assert result.stderr == ""  # the scheduler stepped without an optimizer step on purpose
