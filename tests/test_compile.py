"""``--compile auto|on|off``: which engine a run uses, the fallback when compiling fails, and that
the compiled engine trains the same numbers as the eager one and resumes bit for bit."""

import contextlib
import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from helpers import StopAfter
from test_per_step_bn import check_meta_gradient

from metakit.cli import cli
from metakit.experiments.tasks import build_family
from metakit.experiments.training import runs
from metakit.experiments.training import trainer as train_module
from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.trainer import Interrupted, choose_compile, train

CPU = torch.device("cpu")
# enhanced, two steps and the multi-step loss: the largest graph the compiler is asked for
COMPILED = dict(
    method="enhanced", iterations=12, meta_batch=4, inner_steps=2, multi_step_loss=True, log_every=2, seed=3
)


def decide(monkeypatch, compiler=True, **options):
    monkeypatch.setattr(train_module, "compiler_available", lambda device: compiler)
    config = TrainConfig(**options)
    return choose_compile(config, build_family(config), CPU)


def test_auto_compiles_long_runs_only(monkeypatch):
    threshold = build_family(TrainConfig()).compile_after
    assert decide(monkeypatch, iterations=threshold) is True
    assert decide(monkeypatch, iterations=threshold - 1) is False
    assert decide(monkeypatch) is True  # the 70,000-iteration default
    assert decide(monkeypatch, iterations=2000) is False  # `make run`
    # a glyph iteration costs about a second: a shorter run already repays the compilation
    assert decide(monkeypatch, task="glyphs", iterations=1000) is True


def test_auto_needs_a_compiler_and_the_func_backend(monkeypatch):
    assert decide(monkeypatch, compiler=False) is False
    assert decide(monkeypatch, backend="l2l") is False
    assert decide(monkeypatch, compile="off") is False
    assert decide(monkeypatch, compile="on", iterations=10, compiler=False) is True


def test_compile_modes_are_checked_and_old_configs_load():
    with pytest.raises(ConfigError, match="--compile on applies to --backend func only"):
        TrainConfig(compile="on", backend="higher")
    with pytest.raises(ConfigError, match="unknown --compile 'yes'"):
        TrainConfig(compile="yes")
    old = {**TrainConfig().to_dict(), "compile": True}
    assert TrainConfig.from_dict(old).compile == "on"
    assert TrainConfig.from_dict({**old, "compile": False}).compile == "off"


def test_failed_compilation_warns_once_and_trains_eagerly(tmp_path, monkeypatch):
    calls = []

    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append(1)
            raise RuntimeError("no compiler here\nsecond line of the report")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    args = ["train", "--iterations", "6", "--meta-batch", "2", "--log-every", "3", "--compile", "on"]
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # the CLI replaces it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, [*args, "--quiet", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert [str(w.message) for w in caught] == [
        "torch.compile failed (RuntimeError: no compiler here); using the eager engine"
    ]
    first = caught[0]
    printed = warnings.formatwarning(first.message, first.category, first.filename, first.lineno)
    assert printed == f"Warning: {first.message}\n"  # one line on stderr
    assert calls == [1]  # tried once, then eager
    assert "(eager func engine)" in result.stdout
    records = [json.loads(line) for line in (tmp_path / "run" / runs.METRICS).read_text().splitlines()]
    assert [r["iteration"] for r in records] == [3, 6] and {r["engine"] for r in records} == {"func"}


def final_parameters(run_dir):
    return torch.load(run_dir / runs.CHECKPOINT, weights_only=True)["algorithm"]


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("compiled")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a silent fallback to eager would fail here
        summary = train(TrainConfig(**COMPILED, compile="on", checkpoint_every=4), run_dir, progress=False)
    assert summary["engine"] == "func-compiled"
    return run_dir


def test_compiled_and_eager_training_agree(tmp_path, compiled_run):
    train(TrainConfig(**COMPILED, compile="off"), tmp_path, progress=False)
    eager, compiled = final_parameters(tmp_path), final_parameters(compiled_run)
    assert eager.keys() == compiled.keys()
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5, msg=key)
    lines = lambda run: [json.loads(x) for x in (run / runs.METRICS).read_text().splitlines()]  # noqa: E731
    assert {r["engine"] for r in lines(compiled_run)} == {"func-compiled"}
    assert {r["engine"] for r in lines(tmp_path)} == {"func"}
    for a, b in zip(lines(compiled_run), lines(tmp_path)):
        assert a["meta_loss"] == pytest.approx(b["meta_loss"], rel=1e-4)


def test_compiled_run_resumes_bit_for_bit(tmp_path, monkeypatch, compiled_run):
    config = TrainConfig(**COMPILED, compile="on", checkpoint_every=4)
    monkeypatch.setattr(train_module, "_stop_requests", lambda: contextlib.nullcontext(StopAfter(5)))
    with pytest.raises(Interrupted, match="iteration 6"):
        train(config, tmp_path, progress=False)
    monkeypatch.undo()
    summary = train(config, tmp_path, progress=False, resume=True)
    assert summary["resumed_from"] == 6 and summary["engine"] == "func-compiled"
    resumed, reference = final_parameters(tmp_path), final_parameters(compiled_run)
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key


def test_compiled_meta_gradient_with_per_step_batch_norm_equals_a_float64_unroll():
    check_meta_gradient(3, "func-compiled")  # steps 0..3 each with their own batch norm
