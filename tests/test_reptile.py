"""Reptile's meta step against the update written out by hand."""

import copy

import pytest
import torch
from helpers import mlp, regression_batch

from metakit.wrappers import Reptile, VectorizedEngine, meta_backward
from metakit.wrappers.functional import reptile_gradient

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
