"""``--select-on validation``: the model with the best validation score is kept in ``selected.pt``,
``eval`` uses it and says so, a resumed run selects on from where it stopped, and families without
a validation split refuse the option."""

import contextlib
import hashlib
import json
from pathlib import Path

import pytest
import torch
from helpers import StopAfter
from test_cli import invoke, snapshot

from metakit.experiments.reports.evaluate import evaluate_algorithm
from metakit.experiments.tasks import FAMILIES, register_family
from metakit.experiments.tasks.vision.episodes import ImageEpisodes
from metakit.experiments.tasks.vision.image_sets import ClassImages, DataError
from metakit.experiments.training import runs
from metakit.experiments.training import trainer as trainer_module
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.trainer import Interrupted, train

PER_CLASS = 12


def tagged(classes: int, first: int) -> ClassImages:
    """Random one-channel 8×8 images whose pixel (0, 0) names the class (``first``, ``first + 1``, …)."""
    g = torch.Generator().manual_seed(first)
    images = torch.randint(0, 200, (classes, PER_CLASS, 1, 8, 8), generator=g, dtype=torch.uint8)
    images[:, :, 0, 0, 0] = torch.arange(first, first + classes, dtype=torch.uint8)[:, None]
    return ClassImages(images, tuple(f"t/{first + c}" for c in range(classes)), ("t",) * classes)


class Tiny(ImageEpisodes):
    """2-way episodes of small generated images with a one-block conv net: cheap to train."""

    channels, blocks = 2, 1
    protocol = dict(ways=2, shots=1, inner_steps=1, inner_lr=0.1, meta_batch=2, meta_lr=1e-2, iterations=10)

    def load(self):
        return {"train": tagged(4, 201), "validation": tagged(3, 211), "test": tagged(3, 221)}


class WithoutValidation(Tiny):
    """Data with no validation split."""

    def load(self):
        return {**super().load(), "validation": None}


@pytest.fixture(autouse=True)
def families():
    register_family("tiny", Tiny)
    register_family("tiny-no-validation", WithoutValidation)
    yield
    FAMILIES.unregister("tiny")
    FAMILIES.unregister("tiny-no-validation")


SCORES = [0.3, 0.6, 0.4, 0.5, 0.2]
"""Validation scores of iterations 2, 4, 6, 8 and 10: the best is iteration 4's, neither the first nor
the last, and iteration 8 is the best after it."""
SELECT = dict(task="tiny", select_on="validation", select_every=2, select_tasks=6, log_every=5)


def fingerprint(algo) -> str:
    """The meta-parameters' bytes, hashed: equal only for bit-for-bit equal parameters."""
    data = b"".join(t.detach().cpu().numpy().tobytes() for t in algo.state_dict().values())
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def scripted(monkeypatch):
    """Validation scores from :data:`SCORES` in call order; ``by_model`` maps each scored model's
    fingerprint to its score."""
    calls = {"by_model": {}}

    def score(setup):
        value = SCORES[len(calls["by_model"])]
        calls["by_model"][fingerprint(setup.algo)] = value
        return value

    monkeypatch.setattr(trainer_module, "validation_score", score)
    return calls


def metrics(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / runs.METRICS).read_text().splitlines()]


def validation_lines(run_dir: Path) -> list:
    return [
        (r["iteration"], r["validation_accuracy"], r["selected_iteration"])
        for r in metrics(run_dir)
        if "validation_accuracy" in r
    ]


def parameters_after(tmp_path: Path, iterations: int) -> dict:
    """The meta-parameters of the same run trained for ``iterations`` only (Adam at a constant rate)."""
    train(TrainConfig(task="tiny", iterations=iterations), tmp_path / f"first-{iterations}", progress=False)
    return runs.load_latest_checkpoint(tmp_path / f"first-{iterations}")[0]["algorithm"]


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_kept_model_is_the_one_with_the_best_validation_score(tmp_path, scripted):
    summary = train(TrainConfig(**SELECT), tmp_path / "run", progress=False)
    assert summary["selected"] == {"iteration": 4, "metric": "accuracy", "score": 0.6}
    selected = runs.load_checkpoint(tmp_path / "run" / runs.SELECTED)
    assert (selected["iteration"], selected["metric"], selected["score"]) == (4, "accuracy", 0.6)
    # selected.pt holds iteration 4's meta-parameters, not the last ones.
    assert_same_parameters(selected["algorithm"], parameters_after(tmp_path, 4))
    last = runs.load_latest_checkpoint(tmp_path / "run")[0]
    assert last["iteration"] == 10 and last["selection"]["iteration"] == 4
    assert not torch.equal(last["algorithm"]["module.0.weight"], selected["algorithm"]["module.0.weight"])
    # Every validation is recorded in metrics.jsonl: with the logged iterations (5, 10) or on its own.
    assert validation_lines(tmp_path / "run") == [
        (2, 0.3, 2),
        (4, 0.6, 4),
        (6, 0.4, 4),
        (8, 0.5, 4),
        (10, 0.2, 4),
    ]
    assert [r["iteration"] for r in metrics(tmp_path / "run") if "meta_loss" in r] == [5, 10]


def test_the_validation_score_is_the_accuracy_on_fixed_validation_episodes(tmp_path):
    """Without a scripted score: the recorded accuracy is that of ``select_tasks`` validation
    episodes (seed 0) at the training shots and inner steps, as ``eval`` would compute it on a
    family whose meta-test split were the validation split."""
    train(TrainConfig(**{**SELECT, "iterations": 2}), tmp_path / "run", progress=False)
    (_, recorded, _), *_ = validation_lines(tmp_path / "run")
    # Validating changed nothing in training: the run ends where one without selection does.
    last = runs.load_latest_checkpoint(tmp_path / "run")[0]["algorithm"]
    assert_same_parameters(last, parameters_after(tmp_path, 2))

    class ValidationAsTest(Tiny):
        def load(self):
            data = super().load()
            return {**data, "test": data["validation"]}

    loaded = runs.open_run(tmp_path / "run")
    assert loaded.selected == {"iteration": 2, "metric": "accuracy", "score": recorded}
    rows = evaluate_algorithm(loaded.algo, ValidationAsTest(ways=2), tasks=6, shots=[1], steps=[1], seed=0)
    assert rows[0]["accuracy"] == recorded
    other = evaluate_algorithm(loaded.algo, ValidationAsTest(ways=2), tasks=6, shots=[1], steps=[1], seed=1)
    test_split = evaluate_algorithm(loaded.algo, Tiny(ways=2), tasks=6, shots=[1], steps=[1], seed=0)
    assert recorded not in (other[0]["accuracy"], test_split[0]["accuracy"])  # the set is pinned


def test_eval_uses_the_selected_model_and_says_so(tmp_path, scripted):
    run = tmp_path / "run"
    args = ["--task", "tiny", "--select-on", "validation", "--select-every", 2, "--select-tasks", 6]
    result = invoke("train", *args, "--log-every", 5, "--quiet", "--out", run)
    assert result.exit_code == 0, result.output
    assert "; selected on validation: iteration 4 (accuracy 60.00%); run saved to" in result.stdout
    report = json.loads(invoke("eval", run, "--json", "--tasks", 4, "--shots", 1, "--steps", "0,1").stdout)
    assert (report["iteration"], report["trained"], report["iterations"], report["finished"]) == (
        4,
        10,
        10,
        True,
    )
    assert report["selected"] == {
        "on": "validation", "iteration": 4, "metric": "accuracy", "score": 0.6,
        "tasks": 6, "shots": 1, "steps": 1,
    }  # fmt: skip
    model = runs.open_run(run).algo
    model.load_state_dict(parameters_after(tmp_path, 4))
    expected = evaluate_algorithm(model, Tiny(ways=2), tasks=4, shots=[1], steps=[0, 1], seed=1)
    assert report["results"] == expected
    table = invoke("eval", run, "--tasks", 4, "--shots", 1, "--steps", "0,1")
    assert table.exit_code == 0 and table.stderr == "", table.output
    assert table.stdout.splitlines()[0].endswith(
        "model selected on validation: iteration 4 (validation accuracy 60.00% on 6 episodes, 1-shot, "
        "1 inner step) of a run at 10 of 10 iterations (training finished); 4 held-out tasks, seed 1"
    )


def test_a_resumed_run_selects_on_from_its_best_so_far(tmp_path, scripted, monkeypatch):
    reference = tmp_path / "reference"
    train(TrainConfig(**SELECT, checkpoint_every=3), reference, progress=False)
    scores = dict(scripted["by_model"])
    # The same run, stopped at iteration 7 (checkpoint), resumed; each model scores what the same model
    # scored in the reference run (a model that differs in any bit has no score: a KeyError).
    monkeypatch.setattr(trainer_module, "validation_score", lambda setup: scores[fingerprint(setup.algo)])
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "_stop_requests", lambda: contextlib.nullcontext(StopAfter(6)))
        with pytest.raises(Interrupted, match="iteration 7"):
            train(TrainConfig(**SELECT, checkpoint_every=3), run, progress=False)
    assert runs.load_latest_checkpoint(run)[0]["selection"]["iteration"] == 4
    # As if a crash had left a selection of a later iteration than the checkpoint's: the resume must
    # put the checkpoint's selection back, not keep this one (nor one found after it, iteration 8).
    runs.save_selected(run, {"iteration": 9, "metric": "accuracy", "score": 0.99, "algorithm": {}})
    summary = train(None, run, progress=False, resume=True)
    assert summary["resumed_from"] == 7 and summary["selected"]["iteration"] == 4
    a, b = (runs.load_checkpoint(d / runs.SELECTED) for d in (run, reference))
    assert (a["iteration"], a["score"]) == (b["iteration"], b["score"]) == (4, 0.6)
    assert_same_parameters(a["algorithm"], b["algorithm"])
    assert_same_parameters(*(runs.load_latest_checkpoint(d)[0]["algorithm"] for d in (run, reference)))
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert strip(metrics(run)) == strip(metrics(reference))


def test_a_missing_or_corrupt_selection_falls_back_to_the_checkpoints_copy(tmp_path, scripted):
    train(TrainConfig(**SELECT), tmp_path / "run", progress=False)
    path = tmp_path / "run" / runs.SELECTED
    path.write_bytes(b"not a checkpoint")
    loaded = runs.open_run(tmp_path / "run")
    assert loaded.selected["iteration"] == loaded.iteration == 4
    assert "selected.pt" in loaded.note and "using the model selected at iteration 4" in loaded.note
    path.unlink()
    assert runs.open_run(tmp_path / "run").selected["iteration"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--task sinusoid has none"),
        (["--task", "nav2d"], "--task nav2d has none"),
        (
            ["--task", "omniglot", "--data-root", "x", "--omniglot-split", "background"],
            "--omniglot-split background has none (use --omniglot-split vinyals)",
        ),
    ],
)
def test_families_without_a_validation_split_refuse_it_in_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", *args, "--select-on", "validation", "--quiet", "--out", "new")
    assert result.exit_code == 2, result.output
    assert result.stderr == f"Error: --select-on validation needs a validation split; {message}\n"
    assert snapshot(tmp_path) == {}, "nothing may be written"


def test_validation_options_without_selecting_on_validation_and_data_without_the_split_are_refused(tmp_path):
    for option, value in (("--select-every", 5), ("--select-tasks", 50)):
        result = invoke("train", "--task", "tiny", option, value, "--quiet", "--out", tmp_path / "new")
        assert (
            result.exit_code == 2 and result.stderr == f"Error: {option} applies to --select-on validation\n"
        )
    with pytest.raises(DataError, match="^the data has no validation split$"):
        train(
            TrainConfig(task="tiny-no-validation", select_on="validation"), tmp_path / "run", progress=False
        )
    assert not (tmp_path / "run").exists() and not (tmp_path / "new").exists()
