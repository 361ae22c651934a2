"""tools/paired_difference.py: two runs compared task by task on the same held-out tasks."""

import importlib.util
import math
import statistics
from pathlib import Path

import pytest
import torch

from metakit.experiments.reports.evaluate import evaluate_algorithm
from metakit.experiments.tasks import build_family
from metakit.experiments.training import runs
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.trainer import train
from metakit.experiments.util.statistics import paired_difference

TOOL = Path(__file__).resolve().parent.parent / "tools" / "paired_difference.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("paired_difference", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_difference_is_the_mean_of_per_task_differences_with_their_ci():
    a = torch.tensor([0.5, 0.2, 0.9, 0.4, 0.3])
    b = torch.tensor([0.7, 0.1, 1.0, 0.6, 0.3])
    differences = [x - y for x, y in zip(a.tolist(), b.tolist())]
    result = paired_difference(a, b)
    assert result["difference"] == pytest.approx(statistics.fmean(differences))
    assert result["ci95"] == pytest.approx(1.96 * statistics.stdev(differences) / math.sqrt(5))
    assert (result["a_lower"], result["tasks"]) == (3, 5)  # tied on the last task


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    for name, seed in (("a", 0), ("b", 1)):
        train(TrainConfig(iterations=5, seed=seed, log_every=5), root / name, progress=False)
    return root / "a", root / "b"


def test_the_tool_compares_two_runs_on_evals_held_out_tasks(two_runs, capsys):
    tool = load_tool()
    assert tool.main([str(two_runs[0]), str(two_runs[1]), "--tasks", "8", "--steps", "0,1,3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "5-shot mse, 8 held-out tasks (seed 1)"
    means = {}
    for run in two_runs:
        config, algo, _ = runs.load_run(run)
        rows = evaluate_algorithm(algo, build_family(config), 8, [5], [0, 1, 3], 1)
        means[run] = {r["steps"]: r["mse"] for r in rows}
    for line, steps in zip(lines[3:], (0, 1, 3)):
        a, b = means[two_runs[0]][steps], means[two_runs[1]][steps]
        assert line.startswith(f"{steps} steps: A {a:.5g}, B {b:.5g}, A - B {a - b:.5g} ± ")
    same = tool.main([str(two_runs[0]), str(two_runs[0]), "--tasks", "8", "--steps", "1"])
    assert same == 0 and "A - B 0 ± 0 (95% CI over tasks), A lower on 0/8" in capsys.readouterr().out


def test_runs_of_different_families_are_refused(two_runs, tmp_path, capsys):
    other = tmp_path / "line"
    train(TrainConfig(task="sinusoid-line", iterations=1, log_every=1), other, progress=False)
    assert load_tool().main([str(two_runs[0]), str(other)]) == 2
    assert "is a sinusoid run" in capsys.readouterr().err
    assert load_tool().main([str(two_runs[0]), str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path} is not a metakit run (no config.json); train one with `metakit train`\n"
    )
