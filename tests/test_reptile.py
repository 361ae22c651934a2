"""Reptile's meta step against the update written out by hand, and Reptile as published (Nichol et
al. 2018): the inner loop on all of a task's points, annealed SGD as the outer rule."""

import copy
import json

import pytest
import torch
from helpers import mlp, regression_batch

from metakit.experiments.training import runs
from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.trainer import build_training, train
from metakit.wrappers import Reptile, TaskBatch, VectorizedEngine, meta_backward
from metakit.wrappers.rules import reptile_gradient

INNER_LR, EPSILON, STEPS = 0.1, 0.5, 3


def hand_reptile_step(model, batch):
    """θ + ε (mean φ̃ − θ), with φ̃ from plain SGD written here."""
    theta = [p.detach().clone() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    adapted = []
    for i in range(batch.x_support.shape[0]):
        fast = [t.clone().requires_grad_() for t in theta]
        for _ in range(STEPS):
            pred = torch.func.functional_call(model, dict(zip(names, fast)), batch.x_support[i])
            grads = torch.autograd.grad(((pred - batch.y_support[i]) ** 2).mean(), fast)
            fast = [(p - INNER_LR * g).detach().requires_grad_() for p, g in zip(fast, grads)]
        adapted.append([f.detach() for f in fast])
    mean = [sum(a[j] for a in adapted) / len(adapted) for j in range(len(theta))]
    return [t + EPSILON * (m - t) for t, m in zip(theta, mean)]


@pytest.mark.parametrize("backend", ["l2l", "func"])
def test_reptile_meta_step_with_sgd_is_interpolation(backend):
    torch.manual_seed(0)
    base = mlp()
    batch = regression_batch(tasks=4, points=5, seed=1)
    expected = hand_reptile_step(copy.deepcopy(base), batch)
    reptile = Reptile(copy.deepcopy(base), lr=INNER_LR)
    if backend == "func":
        VectorizedEngine(reptile).meta_backward(batch, STEPS)
    else:
        meta_backward(reptile, batch, STEPS, backend)
    torch.optim.SGD(reptile.parameters(), lr=EPSILON).step()
    for p, e in zip(reptile.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)


def test_reptile_gradient_formula():
    theta = [torch.tensor([1.0, 2.0])]
    adapted = [[torch.tensor([3.0, 2.0])], [torch.tensor([1.0, 0.0])]]
    torch.testing.assert_close(reptile_gradient(theta, adapted)[0], torch.tensor([-1.0, 1.0]))


def test_reptile_refuses_higher_backend():
    with pytest.raises(ValueError, match="reptile"):
        meta_backward(Reptile(mlp(), lr=0.1), regression_batch(1, 3, 0), 1, "higher")


def test_reptile_clone_is_detached_and_adapt_leaves_init_unchanged():
    model = mlp()
    learner = Reptile(model, lr=0.1).clone()
    x = torch.randn(5, 2, dtype=torch.float64)
    learner.adapt((learner(x) ** 2).mean())
    assert all(p.grad_fn is None for p in learner.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(learner.parameters(), model.parameters()))


# --- Reptile as published: all points in the inner loop, annealed SGD outside -----------------------


def hand_adapted(model, task, steps, lr, all_points):
    """φ̃ of one task by plain SGD written here; with ``all_points`` step s trains on the s-th block
    of K = |support| points of support + query, in turn (wrapping around)."""
    theta = [p.detach().clone() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    xs, ys, xq, yq = task
    x_all, y_all = torch.cat([xs, xq]), torch.cat([ys, yq])
    k, n = xs.shape[0], x_all.shape[0]
    fast = [t.clone().requires_grad_() for t in theta]
    for s in range(steps):
        if all_points:
            block = [(s * k + j) % n for j in range(k)]
            x, y = x_all[block], y_all[block]
        else:
            x, y = xs, ys
        pred = torch.func.functional_call(model, dict(zip(names, fast)), x)
        grads = torch.autograd.grad(((pred - y) ** 2).mean(), fast)
        fast = [(p - lr * g).detach().requires_grad_() for p, g in zip(fast, grads)]
    return [f.detach() for f in fast]


def interpolated(model, batch, steps, lr, epsilon, all_points):
    """θ + ε (mean φ̃ − θ) over the batch's tasks."""
    theta = [p.detach().clone() for p in model.parameters()]
    adapted = [hand_adapted(model, batch.task(i), steps, lr, all_points) for i in range(batch.num_tasks)]
    mean = [sum(a[j] for a in adapted) / len(adapted) for j in range(len(theta))]
    return [t + epsilon * (m - t) for t, m in zip(theta, mean)]


@pytest.mark.parametrize("backend", ["l2l", "func"])
def test_all_points_inner_loop_trains_on_support_and_query_in_blocks(backend):
    torch.manual_seed(0)
    base = mlp()
    g = torch.Generator().manual_seed(4)
    # 3 support and 2 query points: the 4 steps train on points 0-2, 3,4,0, 1-3 and 4,0,1.
    batch = TaskBatch(
        *(torch.randn(3, n, d, generator=g, dtype=torch.float64) for n, d in ((3, 2), (3, 1), (2, 2), (2, 1)))
    )
    expected = interpolated(base, batch, 4, INNER_LR, EPSILON, all_points=True)
    support_only = interpolated(base, batch, 4, INNER_LR, EPSILON, all_points=False)
    assert any(not torch.allclose(a, b) for a, b in zip(expected, support_only))
    reptile = Reptile(copy.deepcopy(base), lr=INNER_LR, all_points=True)
    if backend == "func":
        VectorizedEngine(reptile).meta_backward(batch, 4)
    else:
        meta_backward(reptile, batch, 4, backend)
    torch.optim.SGD(reptile.parameters(), lr=EPSILON).step()
    for p, e in zip(reptile.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)
    assert reptile.clone().all_points  # adaptation copies keep the setting


PUBLISHED = dict(
    method="reptile", outer_optimizer="sgd-annealed", meta_lr=0.4, iterations=8, meta_batch=3,
    inner_steps=3, shots=4, query=3, device="cpu", compile="off",
)  # fmt: skip


@pytest.mark.parametrize("backend", ["func", "l2l"])
@pytest.mark.parametrize("all_points", [False, True])
def test_annealed_sgd_step_is_interpolation_at_the_annealed_rate(backend, all_points):
    config = TrainConfig(**PUBLISHED, backend=backend, inner_all_points=all_points, seed=2)
    training = build_training(config)
    epsilon, n = config.meta_lr, config.iterations
    for i in range(n):
        # The loop's step: gradient, optimizer step, then scheduler step.
        assert training.optimizer.param_groups[0]["lr"] == pytest.approx(epsilon * (1 - i / n), abs=1e-15)
        stream = training.generator.get_state()
        before = copy.deepcopy(training.algo.module)
        training.step(i)
        if i in (0, 5):
            batch = training.family.sample(3, 4, 3, torch.Generator().set_state(stream))
            expected = interpolated(before, batch, 3, config.inner_lr, epsilon * (1 - i / n), all_points)
            for p, e in zip(training.algo.parameters(), expected):
                torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


def test_annealed_rate_is_logged_and_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    config = TrainConfig(**PUBLISHED, inner_all_points=True, log_every=1, checkpoint_every=3)
    train(config, tmp_path / "whole", progress=False)
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    # After iteration i (1-based), the rate of the next one: ε·(1 − i/N), down to 0.
    assert [r["meta_lr"] for r in records] == pytest.approx(
        [0.4 * (1 - i / 8) for i in range(1, 9)], abs=1e-12
    )
    train(config, tmp_path / "resumed", progress=False)
    (tmp_path / "resumed" / runs.CHECKPOINT).unlink()  # back to the checkpoint of iteration 6
    assert runs.load_latest_checkpoint(tmp_path / "resumed")[0]["iteration"] == 6
    train(config, tmp_path / "resumed", progress=False, resume=True)
    whole, resumed = (
        torch.load(tmp_path / d / runs.CHECKPOINT, weights_only=True) for d in ("whole", "resumed")
    )
    for key, value in whole["algorithm"].items():
        assert torch.equal(value, resumed["algorithm"][key]), key
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text().count("\n") == 8


def test_published_options_apply_only_where_meaningful():
    rules = [
        (dict(method="maml", inner_all_points=True), "--inner-all-points applies to reptile, not maml"),
        (dict(method="pretrain", inner_all_points=True), "--inner-all-points applies to reptile"),
        (dict(outer_optimizer="sgd"), "unknown outer optimizer 'sgd'; choose from adam, sgd-annealed"),
        (dict(outer_optimizer="sgd-annealed", cosine_lr=True), "both anneal --meta-lr; choose one"),
        (dict(inner_all_points=1, method="reptile"), "inner_all_points must be of type bool"),
    ]
    for options, message in rules:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**options)
    assert TrainConfig(
        method="reptile", inner_all_points=True, outer_optimizer="sgd-annealed"
    ).inner_all_points
