"""Second-order and first-order MAML meta-gradients against independent references."""

import copy

import pytest
import torch
from helpers import assert_close_lists, grads_of, mlp, regression_batch, unrolled_meta_loss
from torch import nn

from metakit._l2l import learn2learn as l2l
from metakit.wrappers import MAML, VectorizedEngine, meta_backward

ALPHA = 0.3


def closed_form_maml_grad(w, b, batch, steps, alpha):
    """MAML's meta-gradient for a linear model y = Xw + b under MSE, in closed form.

    With Z = [X, 1] and v = [w; b], the support loss is (1/n)|Zv − y|², its gradient
    g(v) = (2/n) Zᵀ(Zv − y) and Hessian H = (2/n) ZᵀZ (constant). Each inner step is the affine map
    v ← (I − αH) v + (2α/n) Zᵀy, so the Jacobian of k steps is (I − αH)^k, and the meta-gradient
    of the query loss is (I − αH)^k ∇L_q(v_k), averaged over tasks.
    """
    v0 = torch.cat([w.reshape(-1), b.reshape(-1)])
    total = torch.zeros_like(v0)
    tasks = batch.x_support.shape[0]
    for i in range(tasks):
        zs = torch.cat([batch.x_support[i], torch.ones(batch.x_support.shape[1], 1, dtype=v0.dtype)], 1)
        zq = torch.cat([batch.x_query[i], torch.ones(batch.x_query.shape[1], 1, dtype=v0.dtype)], 1)
        ys, yq = batch.y_support[i].reshape(-1), batch.y_query[i].reshape(-1)
        n, m = zs.shape[0], zq.shape[0]
        hess = 2.0 / n * zs.T @ zs
        v = v0.clone()
        for _ in range(steps):
            v = v - alpha * 2.0 / n * zs.T @ (zs @ v - ys)
        query_grad = 2.0 / m * zq.T @ (zq @ v - yq)
        jac = torch.linalg.matrix_power(torch.eye(len(v0), dtype=v0.dtype) - alpha * hess, steps)
        total += jac.T @ query_grad
    total /= tasks
    return [total[:-1].reshape(w.shape), total[-1:].reshape(b.shape)]


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("backend", ["l2l", "higher", "func"])
def test_maml_matches_closed_form_for_linear_model(steps, backend):
    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    batch = regression_batch(tasks=3, points=5, seed=1)
    expected = closed_form_maml_grad(model.weight.detach(), model.bias.detach(), batch, steps, ALPHA)
    maml = MAML(model, lr=ALPHA)
    if backend == "func":
        VectorizedEngine(maml).meta_backward(batch, steps)
    else:
        meta_backward(maml, batch, steps, backend)
    assert_close_lists(grads_of(model), expected)


def reference_maml_grads(model, batch, steps, first_order=False):
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    loss = unrolled_meta_loss(
        model, params, batch, steps, lambda grads, s: [ALPHA * g for g in grads], first_order
    )
    return loss.item(), list(torch.autograd.grad(loss, params))


def learn2learn_direct_grads(model, batch, steps, first_order=False):
    """learn2learn's own MAML, used exactly as its examples do."""
    maml = l2l.algorithms.MAML(model, lr=ALPHA, first_order=first_order)
    tasks = batch.x_support.shape[0]
    for i in range(tasks):
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(((learner(batch.x_support[i]) - batch.y_support[i]) ** 2).mean())
        (((learner(batch.x_query[i]) - batch.y_query[i]) ** 2).mean() / tasks).backward()
    return grads_of(model)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_matches_unroll_learn2learn_and_all_backends(steps, first_order):
    torch.manual_seed(1)
    base = mlp()
    batch = regression_batch(tasks=4, points=6, seed=2)
    ref_loss, expected = reference_maml_grads(base, batch, steps, first_order)
    assert_close_lists(learn2learn_direct_grads(copy.deepcopy(base), batch, steps, first_order), expected)
    for backend in ("l2l", "higher", "func"):
        maml = MAML(copy.deepcopy(base), lr=ALPHA, first_order=first_order)
        if backend == "func":
            loss = VectorizedEngine(maml).meta_backward(batch, steps)
        else:
            loss = meta_backward(maml, batch, steps, backend)
        assert loss == pytest.approx(ref_loss, rel=1e-12)
        assert_close_lists(grads_of(maml), expected)


def test_first_order_maml_gradient_is_query_gradient_at_adapted_parameters():
    torch.manual_seed(2)
    model = mlp()
    batch = regression_batch(tasks=1, points=6, seed=3)
    task = batch.task(0)
    fast = [p.detach().clone().requires_grad_() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    for _ in range(2):
        pred = torch.func.functional_call(model, dict(zip(names, fast)), task.x_support)
        grads = torch.autograd.grad(((pred - task.y_support) ** 2).mean(), fast)
        fast = [(p - ALPHA * g).detach().requires_grad_() for p, g in zip(fast, grads)]
    pred = torch.func.functional_call(model, dict(zip(names, fast)), task.x_query)
    expected = torch.autograd.grad(((pred - task.y_query) ** 2).mean(), fast)
    maml = MAML(model, lr=ALPHA, first_order=True)
    meta_backward(maml, batch, steps=2)
    assert_close_lists(grads_of(maml), list(expected))
    second_order = MAML(copy.deepcopy(model), lr=ALPHA)
    meta_backward(second_order, batch, steps=2)
    assert not torch.allclose(grads_of(second_order)[0], expected[0])


def test_derivative_order_override_switches_to_first_order():
    torch.manual_seed(3)
    base = mlp()
    batch = regression_batch(tasks=2, points=5, seed=4)
    _, expected = reference_maml_grads(base, batch, 2, first_order=True)
    for backend in ("l2l", "higher"):
        maml = MAML(copy.deepcopy(base), lr=ALPHA)
        meta_backward(maml, batch, 2, backend, first_order=True)
        assert_close_lists(grads_of(maml), expected)
    maml = MAML(copy.deepcopy(base), lr=ALPHA)
    VectorizedEngine(maml).meta_backward(batch, 2, first_order=True)
    assert_close_lists(grads_of(maml), expected)


def test_multi_step_loss_matches_weighted_unroll():
    torch.manual_seed(4)
    base = mlp()
    batch = regression_batch(tasks=3, points=5, seed=5)
    weights = [0.2, 0.3, 0.5]
    params = [p.detach().clone().requires_grad_() for p in base.parameters()]
    ref = sum(
        w * unrolled_meta_loss(base, params, batch, s + 1, lambda grads, _: [ALPHA * g for g in grads])
        for s, w in enumerate(weights)
    )
    expected = torch.autograd.grad(ref, params)
    for backend in ("l2l", "higher", "func"):
        maml = MAML(copy.deepcopy(base), lr=ALPHA)
        if backend == "func":
            VectorizedEngine(maml).meta_backward(batch, 3, step_weights=weights)
        else:
            meta_backward(maml, batch, 3, backend, step_weights=weights)
        assert_close_lists(grads_of(maml), list(expected))


def test_clone_keeps_learn2learn_surface():
    model = mlp()
    maml = MAML(model, lr=ALPHA)
    learner = maml.clone()
    assert isinstance(learner, MAML) and isinstance(learner, l2l.algorithms.MAML)
    x = torch.randn(4, 2, dtype=torch.float64)
    before = [p.detach().clone() for p in learner.parameters()]
    learner.adapt((learner(x) ** 2).mean())
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
