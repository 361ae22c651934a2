"""Meta-SGD against learn2learn's MetaSGD, and ANIL against a hand-written head-only unroll, on
every backend (float64)."""

import copy

import pytest
import torch
from helpers import conv_net, mlp, regression_batch
from torch.func import functional_call

from metakit._l2l import learn2learn as l2l
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.runs import CHECKPOINT
from metakit.experiments.training.trainer import train
from metakit.wrappers import ANIL, MetaSGD, TaskBatch, VectorizedEngine, meta_backward

ALPHA = 0.1
BACKENDS = ["func", "l2l", "higher", "func-functional"]
"""``func-functional``: the functional meta-gradient that ``--compile`` compiles, run eagerly."""


def mse(prediction, target):
    return ((prediction - target) ** 2).mean()


def run_backend(algo, batch, steps, backend, first_order=None):
    """Fill ``.grad`` of ``algo``'s meta-parameters on ``backend``; return the meta-loss."""
    if backend == "func":
        return VectorizedEngine(algo).meta_backward(batch, steps, first_order=first_order)
    if backend == "func-functional":
        engine = VectorizedEngine(algo)
        params = {f"algo.{name}": p.detach() for name, p in algo.named_parameters()}
        fo = algo.first_order if first_order is None else first_order
        grads, (loss, _) = engine.meta_gradient(params, batch, steps, fo)
        for name, p in algo.named_parameters():
            p.grad = grads[f"algo.{name}"]
        return loss.item()
    return meta_backward(algo, batch, steps, backend, first_order=first_order)


def named_grads(algo):
    return {name: p.grad for name, p in algo.named_parameters()}


def assert_grads_equal(actual, expected):
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name] is not None, name
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-9, atol=1e-12, msg=name)


# --- Meta-SGD ------------------------------------------------------------------------------------


def perturbed_rates(algo, seed):
    """Make every rate entry different (so a scalar or per-tensor rate could not pass)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rate in algo.lrs:
            rate.mul_(0.5 + torch.rand(rate.shape, generator=g, dtype=rate.dtype))


def learn2learn_meta_sgd(base, ours, batch, steps, first_order=False):
    """learn2learn's MetaSGD at our initialisation and rates: meta-loss and meta-gradient."""
    theirs = l2l.algorithms.MetaSGD(copy.deepcopy(base), lr=ALPHA, first_order=first_order)
    theirs.load_state_dict(ours.state_dict())
    total = 0.0
    for i in range(batch.num_tasks):
        task = batch.task(i)
        learner = theirs.clone()
        for _ in range(steps):
            learner.adapt(mse(learner(task.x_support), task.y_support))
        total = total + mse(learner(task.x_query), task.y_query)
    loss = total / batch.num_tasks
    loss.backward()
    return loss.item(), named_grads(theirs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steps", [1, 3])
def test_meta_sgd_meta_gradient_equals_learn2learn(backend, steps):
    torch.manual_seed(0)
    base = mlp()
    ours = MetaSGD(copy.deepcopy(base), lr=ALPHA)
    perturbed_rates(ours, seed=1)
    batch = regression_batch(tasks=3, points=4, seed=2)
    expected_loss, expected = learn2learn_meta_sgd(base, ours, batch, steps)
    loss = run_backend(ours, batch, steps, backend)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    assert_grads_equal(named_grads(ours), expected)
    assert any(name.startswith("lrs.") for name in expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_order_meta_sgd_equals_learn2learn_first_order(backend):
    torch.manual_seed(3)
    base = mlp()
    ours = MetaSGD(copy.deepcopy(base), lr=ALPHA, first_order=True)
    perturbed_rates(ours, seed=4)
    batch = regression_batch(tasks=2, points=4, seed=5)
    _, expected = learn2learn_meta_sgd(base, ours, batch, 2, first_order=True)
    run_backend(ours, batch, 2, backend)
    assert_grads_equal(named_grads(ours), expected)


def test_meta_sgd_rates_have_parameter_shapes_and_clones_share_them():
    model = mlp()
    algo = MetaSGD(model, lr=0.05)
    for rate, param in zip(algo.lrs, model.parameters()):
        assert rate.shape == param.shape and rate.dtype == param.dtype
        assert torch.equal(rate, torch.full_like(param, 0.05))
    learner = algo.clone()
    assert learner.lrs is algo.lrs and learner.module is not algo.module
    x = torch.randn(4, 2, dtype=torch.float64)
    learner.adapt(mse(learner(x), torch.zeros(4, 1, dtype=torch.float64)))
    mse(learner(x), torch.ones(4, 1, dtype=torch.float64)).backward()
    assert all(rate.grad is not None and rate.grad.abs().sum() > 0 for rate in algo.lrs)
    assert "learned Meta-SGD rates" in algo.describe()


# --- ANIL ----------------------------------------------------------------------------------------

MODELS = {"mlp": (mlp, (2,), {"2.weight", "2.bias"}), "conv": (conv_net, (1, 5, 5), {"3.weight", "3.bias"})}


def head_only_unroll(model, batch, steps, head, first_order=False):
    """Meta-loss and its gradient for every parameter, adapting only the parameters named in
    ``head`` with plain SGD steps (nothing from metakit)."""
    names = [name for name, _ in model.named_parameters()]
    theta = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    total = 0.0
    for i in range(batch.num_tasks):
        fast = dict(theta)
        for _ in range(steps):
            loss = mse(functional_call(model, fast, (batch.x_support[i],)), batch.y_support[i])
            adapted = [n for n in names if n in head]
            grads = torch.autograd.grad(loss, [fast[n] for n in adapted], create_graph=not first_order)
            for n, g in zip(adapted, grads):
                fast[n] = fast[n] - ALPHA * g
        total = total + mse(functional_call(model, fast, (batch.x_query[i],)), batch.y_query[i])
    meta_loss = total / batch.num_tasks
    grads = torch.autograd.grad(meta_loss, [theta[n] for n in names])
    return meta_loss.item(), {f"module.{n}": g for n, g in zip(names, grads)}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steps", [1, 3])
def test_anil_meta_gradient_equals_head_only_unroll(model_name, backend, steps):
    build, features, head = MODELS[model_name]
    torch.manual_seed(6)
    algo = ANIL(build(), lr=ALPHA)
    assert set(algo.head) == head
    batch = regression_batch(tasks=3, points=4, seed=7, features=features)
    expected_loss, expected = head_only_unroll(algo.module, batch, steps, head)
    loss = run_backend(algo, batch, steps, backend)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    assert_grads_equal(named_grads(algo), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_order_anil_equals_unroll_without_inner_second_derivatives(backend):
    torch.manual_seed(8)
    algo = ANIL(mlp(), lr=ALPHA, first_order=True)
    batch = regression_batch(tasks=2, points=4, seed=9)
    _, expected = head_only_unroll(algo.module, batch, 2, {"2.weight", "2.bias"}, first_order=True)
    run_backend(algo, batch, 2, backend)
    assert_grads_equal(named_grads(algo), expected)


@pytest.mark.parametrize("backend", ["func", "l2l", "higher"])
def test_anil_with_a_user_chosen_head(backend):
    torch.manual_seed(10)
    algo = ANIL(mlp(), lr=ALPHA, head=["0"])  # a submodule's name: its weight and bias
    assert algo.head == ("0.weight", "0.bias") and algo.adapted_names == ("0.weight", "0.bias")
    batch = regression_batch(tasks=2, points=4, seed=11)
    _, expected = head_only_unroll(algo.module, batch, 2, {"0.weight", "0.bias"})
    run_backend(algo, batch, 2, backend)
    assert_grads_equal(named_grads(algo), expected)
    assert ANIL(mlp(), lr=ALPHA, head=["2.bias"]).adapted_names == ("2.bias",)
    with pytest.raises(ValueError, match="no parameters named 9"):
        ANIL(mlp(), lr=ALPHA, head=["9"])


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("make", [lambda m: ANIL(m, lr=0.2), lambda m: MetaSGD(m, lr=0.2)])
def test_func_adaptation_equals_clone_adapt_and_anil_leaves_the_body(make, steps):
    torch.manual_seed(12)
    algo = make(mlp())
    if isinstance(algo, MetaSGD):
        perturbed_rates(algo, seed=13)
    batch = regression_batch(tasks=3, points=5, seed=14)
    engine = VectorizedEngine(algo)
    theta = dict(algo.module.named_parameters())
    adapted = torch.func.vmap(
        lambda *task: engine.unroll(theta, TaskBatch(*task), steps, False, (steps,))[0]
    )(*batch)
    for i in range(3):
        learner = algo.clone()
        for _ in range(steps):
            learner.adapt(mse(learner(batch.x_support[i]), batch.y_support[i]))
        for name, reference in learner.module.named_parameters():
            torch.testing.assert_close(adapted[name][i], reference, rtol=1e-12, atol=1e-13)
            moved = not torch.equal(reference, theta[name])
            assert moved == (isinstance(algo, MetaSGD) or name in algo.adapted_names)


# --- the registry, the trainer and the three backends --------------------------------------------


@pytest.mark.parametrize("method, rates", [("metasgd", "signed"), ("metasgd", "log"), ("anil", "log")])
def test_short_training_runs_end_at_the_same_parameters_on_every_backend(tmp_path, method, rates):
    options = dict(
        method=method,
        rates=rates,
        iterations=4,
        meta_batch=3,
        inner_steps=2,
        meta_lr=1e-2,
        seed=5,
        log_every=2,
        multi_step_loss=True,
        first_order_until=2,
    )
    runs = {}
    for backend in ("func", "l2l", "higher"):
        train(TrainConfig(**options, backend=backend), tmp_path / backend, progress=False)
        runs[backend] = torch.load(tmp_path / backend / CHECKPOINT, weights_only=True)["algorithm"]
    expected = runs["func"]
    if method == "metasgd":
        assert any(key.startswith("lrs." if rates == "signed" else "log_lrs.") for key in expected)
    for backend in ("l2l", "higher"):
        assert runs[backend].keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(runs[backend][key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
