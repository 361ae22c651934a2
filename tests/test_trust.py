"""Evaluation statistics people can trust: diverged tasks are counted, never averaged away; the
median and the number of tasks made worse match values computed here; steps beyond the trained
horizon are marked."""

import math
import statistics

import pytest
import torch
from helpers import GUARDED
from torch import nn

from metakit.experiments.reports.evaluate import evaluate_algorithm, format_table
from metakit.experiments.reports.reproduce import results_markdown
from metakit.experiments.tasks.family import ACCURACY, MSE, Reproduction
from metakit.experiments.tasks.regression.functions import RegressionFamily, RegressionHeldOut
from metakit.experiments.util.statistics import task_statistics
from metakit.wrappers import MAML

LR, STEPS = 0.1, 40


def test_one_non_finite_task_is_counted_and_voids_the_mean():
    loss = torch.tensor([0.5, float("inf"), 0.2, 0.9, float("nan"), 0.4])
    before = torch.tensor([1.0, 1.0, 0.1, 1.0, 1.0, 0.3])
    stats = task_statistics(loss, loss, before)
    assert stats["mean"] is None and stats["ci95"] is None and stats["loss"] is None
    assert stats["diverged"] == 2
    # Diverged tasks rank last: 0.2, 0.4, [0.5, 0.9], ∞, ∞ → the mean of the two middle values.
    assert stats["median"] == pytest.approx((0.5 + 0.9) / 2)
    # Worse than before: 0.2 > 0.1, 0.4 > 0.3, and both diverged tasks.
    assert stats["worse"] == 4
    # A metric where higher is better ranks a diverged task lowest instead.
    accuracy = torch.tensor([0.8, 0.1, 0.6, 0.4, 0.9, 1.0])
    ranked = task_statistics(loss, accuracy, before, higher_is_better=True)
    assert ranked["median"] == pytest.approx((0.4 + 0.6) / 2)  # −∞, −∞, [0.4, 0.6], 0.8, 1.0
    # More than half diverged: no median either.
    assert (
        task_statistics(torch.tensor([1.0, math.inf, math.inf]), torch.ones(3), torch.ones(3))["median"]
        is None
    )


def test_all_finite_tasks_give_mean_median_and_no_divergence():
    loss = torch.tensor([3.0, 1.0, 2.0, 10.0, 4.0])
    stats = task_statistics(loss, loss, torch.full((5,), 2.5))
    assert stats["mean"] == pytest.approx(4.0) and stats["median"] == pytest.approx(3.0)
    assert stats["diverged"] == 0 and stats["worse"] == 3  # 3, 10 and 4 are above 2.5


class FixedTasks(RegressionFamily):
    """Five hand-made linear regression tasks, for a model that starts at y = −x. Task 1's inputs
    are large, so gradient descent at rate 0.1 blows up on it alone; task 3's query set contradicts
    its support set, so adapting makes it worse; task 4's query loss falls, then rises again while
    staying below where it started."""

    def held_out(self, tasks, max_shots, seed):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(5, 6, 1, generator=g) * 2 - 1
        x[1] *= 1000
        slope = torch.tensor([1.0, 2.0, -0.5, 2.0, 2.0]).view(5, 1, 1)
        query_slope = torch.tensor([1.0, 2.0, -0.5, -2.0, 1.0]).view(5, 1, 1)
        xq = torch.rand(5, 8, 1, generator=g) * 2 - 1
        return RegressionHeldOut(
            {}, x[:tasks, :max_shots], (slope * x)[:tasks, :max_shots], xq[:tasks], (query_slope * xq)[:tasks]
        )

    def build_model(self):
        return nn.Linear(1, 1)


def line(weight: float, bias: float = 0.0) -> nn.Linear:
    """y = weight·x + bias."""
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.fill_(bias)
    return model


def hand_adapted_losses(model, batch, steps):
    """Query MSE of every task after ``steps`` steps of plain gradient descent on y = w·x + b."""
    w0, b0 = model.weight.detach().double().item(), model.bias.detach().double().item()
    out = []
    for xs, ys, xq, yq in zip(*(t.double().squeeze(-1) for t in batch)):
        w, b = w0, b0
        for _ in range(steps):
            r = w * xs + b - ys
            w, b = w - LR * (2 * r * xs).mean().item(), b - LR * (2 * r).mean().item()
        loss = ((w * xq + b - yq) ** 2).mean().item() if math.isfinite(w) and math.isfinite(b) else math.inf
        out.append(loss if math.isfinite(loss) else math.inf)
    return out


def test_a_task_that_diverges_is_reported_with_median_and_worse_computed_by_hand():
    algo = MAML(line(-1.0), lr=LR)
    family = FixedTasks()
    rows = evaluate_algorithm(algo, family, tasks=5, shots=[6], steps=[0, 1, STEPS], seed=1)
    batch = family.held_out(5, 6, 1).batch(6)
    before = hand_adapted_losses(algo.module, batch, 0)
    after = hand_adapted_losses(algo.module, batch, STEPS)
    assert math.isinf(after[1]) and all(math.isfinite(v) for i, v in enumerate(after) if i != 1)
    # Task 4 got worse over the last step but not against its start: it must not count as worse.
    assert hand_adapted_losses(algo.module, batch, STEPS - 1)[4] < after[4] < before[4]
    last = rows[-1]
    assert last["steps"] == STEPS and last["tasks"] == 5  # the diverged task is not dropped
    assert last["mse"] is None and last["ci95"] is None and last["diverged"] == 1
    assert last["median"] == pytest.approx(statistics.median(after), rel=1e-4)
    assert last["worse"] == sum(a > b for a, b in zip(after, before)) == 2  # tasks 1 and 3
    first = rows[0]
    assert first["diverged"] == first["worse"] == 0
    assert first["mse"] == pytest.approx(statistics.fmean(before), rel=1e-5)
    assert first["median"] == pytest.approx(statistics.median(before), rel=1e-5)
    table = format_table({"method": "maml", "run": "r", "results": rows}).splitlines()
    assert table[1].split() == ["shots", "steps", "MSE", "±95%", "CI", "median", "worse", "diverged", "tasks"]
    assert table[-1].split()[:3] == ["6", str(STEPS), "diverged"] and table[-1].split()[-3:] == [
        "2",
        "1",
        "5",
    ]


def test_clean_tables_stay_narrow_and_marks_steps_beyond_the_horizon():
    row = dict(shots=5, mse=0.5, ci95=0.1, median=0.4, worse=0, diverged=0, tasks=9)
    rows = [{**row, "steps": 1}, {**row, "steps": 3, "beyond_horizon": True}]
    table = format_table({"method": "lslr", "run": "r", "horizon": 2, "results": rows}).splitlines()
    assert "median" not in table[1] and "worse" not in table[1]
    assert table[2].split()[:2] == ["5", "1"] and table[3].split()[:2] == ["5", "3*"]
    assert table[-1] == "* beyond the 2 inner steps the run was trained for" + GUARDED
    plain = format_table({"method": "maml", "run": "r", "results": rows[:1]}).splitlines()
    assert len(plain) == 3 and "*" not in "".join(plain)


def test_an_exploded_task_shows_in_scientific_notation_and_normal_values_as_before():
    assert [MSE.format(v) for v in (0.5, 1234.5678, 3.14e27, 2e-5, 0.0)] == [
        "0.5000",
        "1234.5678",
        "3.1e+27",
        "2.0e-05",
        "0.0000",
    ]
    assert ACCURACY.format(0.95) == "95.00%" and ACCURACY.format(1e-6) == "1.0e-04%"
    row = dict(shots=5, steps=10, mse=3.1e27, ci95=6.1e27, median=0.0185, worse=1, diverged=0, tasks=300)
    line = format_table({"method": "maml", "run": "r", "results": [row]}).splitlines()[-1]
    assert line.split() == ["5", "10", "3.1e+27", "6.1e+27", "0.0185", "1", "0", "300"]
    reproduction = Reproduction(description="d", eval_shots=(5,), eval_steps=(10,), reported_steps=(10,))
    rows = [{"method": "maml", "variant": "", "seed": 0, **row}]
    markdown = results_markdown(rows, reproduction, MSE, tasks=300, iterations=9)
    assert "| maml | 3.1e+27 ± 6.1e+27 |" in markdown


def test_rows_beyond_the_horizon_are_flagged_and_no_others():
    algo = MAML(line(0.5), lr=0.01)
    steps = [0, 1, 2, 3, 5]
    rows = evaluate_algorithm(algo, FixedTasks(), tasks=3, shots=[4], steps=steps, seed=1, horizon=2)
    assert [r.get("beyond_horizon", False) for r in rows] == [False, False, False, True, True]
    unmarked = evaluate_algorithm(algo, FixedTasks(), tasks=3, shots=[4], steps=steps, seed=1)
    assert not any("beyond_horizon" in r for r in unmarked)
