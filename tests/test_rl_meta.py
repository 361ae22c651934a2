"""The MAML-RL meta-gradient against an unroll written here (float64 autograd, torch.distributions,
hand-written inner rules) and against finite differences of first-order computations."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from metakit.experiments.tasks.family import held_out_generator
from metakit.experiments.tasks.rl.nav2d import Nav2DFamily
from metakit.experiments.tasks.rl.nav2d_env import Nav2D
from metakit.experiments.tasks.rl.objective import (
    meta_loss,
    sample_adaptation,
    sample_and_backward,
    sample_trajectories,
)
from metakit.experiments.tasks.rl.policy import GaussianMLPPolicy
from metakit.experiments.tasks.rl.policy_gradient import PGBatch, PGConfig
from metakit.wrappers import MAML, MAMLEnhanced

F64 = torch.float64
TASKS, TRAJECTORIES, HORIZON = 3, 4, 6


def tiny_policy(seed=0):
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(hidden=(5,)).double()
    with torch.no_grad():  # away from the initial zeros, so that every term is exercised
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


def stored_batch(seed):
    """Fixed trajectories of TASKS tasks, episodes of random lengths, random advantages."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, HORIZON + 1, (TASKS, TRAJECTORIES), generator=g)
    valid = (torch.arange(HORIZON) < lengths[..., None]).to(F64)
    shape = (TASKS, TRAJECTORIES, HORIZON)
    obs = torch.randn(*shape, 2, generator=g, dtype=F64) * 0.5
    actions = torch.randn(*shape, 2, generator=g, dtype=F64)
    adv = torch.randn(*shape, generator=g, dtype=F64) * valid
    return PGBatch(obs, actions, adv, valid)


def reference_log_probs(params, obs, actions):
    """log π(a|s) of the tiny policy written out: log-std first, then the two linear layers."""
    log_std, w1, b1, w2, b2 = params
    mean = F.linear(torch.relu(F.linear(obs, w1, b1)), w2, b2)
    std = log_std.clamp(min=math.log(1e-6)).exp()
    return torch.distributions.Normal(mean, std).log_prob(actions).sum(-1)


def reference_loss(params, batch, i, curvature="reinforce"):
    logp = reference_log_probs(params, batch.observations[i], batch.actions[i])
    weight = logp if curvature == "reinforce" else torch.exp(logp - logp.detach())
    return -(weight * batch.advantages[i] * batch.valid[i]).sum() / batch.valid[i].sum()


def reference_meta_loss(theta, batches, update, curvature="reinforce", first_order=False):
    """Mean over tasks of −mean(log π_{θ_S} · Â) after S explicit inner steps (its gradient is the
    meta-gradient; the library's ratio form has the same gradient)."""
    total = 0.0
    for i in range(TASKS):
        params = list(theta)
        for k, batch in enumerate(batches[:-1]):
            grads = torch.autograd.grad(
                reference_loss(params, batch, i, curvature), params, create_graph=True
            )
            if first_order:
                grads = [g.detach() for g in grads]
            params = [p - u for p, u in zip(params, update(grads, k))]
        total = total + reference_loss(params, batches[-1], i)
    return total / TASKS


def grads_of(params):
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize(
    "steps, curvature, first_order",
    [
        (1, "reinforce", False),
        (2, "reinforce", False),
        (1, "lvc", False),
        (2, "lvc", False),
        (2, "reinforce", True),
    ],
)
def test_maml_meta_gradient_matches_an_explicit_unroll(steps, curvature, first_order):
    policy = tiny_policy()
    algo = MAML(policy, lr=0.3, first_order=first_order)
    batches = [stored_batch(seed) for seed in range(steps + 1)]
    loss = meta_loss(algo, batches, curvature)
    loss.backward()
    got = grads_of(policy.parameters())

    theta = [p.detach().clone().requires_grad_() for p in policy.parameters()]
    expected_loss = reference_meta_loss(
        theta, batches, lambda g, k: [0.3 * x for x in g], curvature, first_order
    )
    expected = torch.autograd.grad(expected_loss, theta)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)
    last = batches[-1]
    value = -((last.advantages * last.valid).sum((1, 2)) / last.valid.sum((1, 2))).mean()
    torch.testing.assert_close(loss.detach(), value)


def test_second_order_term_matches_finite_differences():
    policy = tiny_policy(seed=1)
    algo = MAML(policy, lr=0.5)
    batches = [stored_batch(10), stored_batch(11)]
    meta_loss(algo, batches).backward()
    exact = grads_of(policy.parameters())
    first_order = MAML(copy.deepcopy(policy), lr=0.5, first_order=True)
    meta_loss(first_order, batches).backward()
    approx = grads_of(first_order.module.parameters())

    def objective(theta):  # values only: the inner gradient by plain first-order autograd
        total = 0.0
        for i in range(TASKS):
            params = [p.detach().clone().requires_grad_() for p in theta]
            grads = torch.autograd.grad(reference_loss(params, batches[0], i), params)
            fast = [p.detach() - 0.5 * g for p, g in zip(params, grads)]
            total += reference_loss(fast, batches[1], i).item()
        return total / TASKS

    theta = [p.detach().clone() for p in policy.parameters()]
    g = torch.Generator().manual_seed(5)
    eps = 1e-5
    for _ in range(3):
        d = [torch.randn(p.shape, generator=g, dtype=F64) for p in theta]
        plus = objective([p + eps * v for p, v in zip(theta, d)])
        minus = objective([p - eps * v for p, v in zip(theta, d)])
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((a * v).sum() for a, v in zip(exact, d)).item()
        first = sum((a * v).sum() for a, v in zip(approx, d)).item()
        assert math.isclose(analytic, numeric, rel_tol=1e-6, abs_tol=1e-8), (analytic, numeric)
        assert abs(first - numeric) > 1e-3 * max(1.0, abs(numeric))  # the second-order term matters here


def test_enhanced_meta_gradient_matches_an_explicit_unroll():
    policy = tiny_policy(seed=2)
    algo = MAMLEnhanced(policy, lr=0.2, inner_steps=2).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in list(algo.curvature.parameters()) + list(algo.lslr.parameters()):
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=F64))
    batches = [stored_batch(seed) for seed in (20, 21, 22)]
    meta_loss(algo, batches).backward()
    got = [p.grad.clone() for p in algo.parameters()]

    meta = [p.detach().clone().requires_grad_() for p in algo.parameters()]
    count = len(list(policy.parameters()))
    named = dict(zip([n for n, _ in algo.named_parameters()], meta))
    theta = meta[:count]

    def update(grads, k):
        out = []
        for i, grad in enumerate(grads):
            rate = named["lslr.rates"][i, k]
            if grad.dim() == 1:
                out.append(rate * named[f"curvature.{i}.scale"] * grad)
            else:
                out.append(rate * named[f"curvature.{i}.m_out"] @ grad @ named[f"curvature.{i}.m_in"])
        return out

    assert [n for n, _ in algo.named_parameters()][:count] == [
        f"module.{n}" for n, _ in policy.named_parameters()
    ]
    expected = torch.autograd.grad(reference_meta_loss(theta, batches, update), meta)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


def test_sampling_uses_the_adapted_policy_of_each_task():
    policy = tiny_policy(seed=3)
    algo = MAML(policy, lr=0.2)
    env = Nav2D(horizon=8)
    goals = env.sample_tasks(TASKS, torch.Generator().manual_seed(0), dtype=F64)
    config = PGConfig(trajectories=5)
    out = sample_adaptation(algo, env, goals, 2, torch.Generator().manual_seed(1), config)
    assert len(out.batches) == len(out.trajectories) == len(out.params) == 3

    theta = [p.detach() for p in policy.parameters()]
    for k in range(2):
        for i in range(TASKS):
            params = [p[i].detach().clone().requires_grad_() for p in out.params[k]]
            grads = torch.autograd.grad(reference_loss(params, out.batches[k], i), params)
            for fast, p, grad in zip(out.params[k + 1], params, grads):
                torch.testing.assert_close(fast[i], p.detach() - 0.2 * grad, rtol=1e-10, atol=1e-12)
    assert all(torch.equal(p[i], t) for p, t in zip(out.params[0], theta) for i in range(TASKS))

    # Replaying the generator: D_0 comes from θ, D_1 and D_2 from each task's adapted parameters.
    g = torch.Generator().manual_seed(1)
    names = [n for n, _ in policy.named_parameters()]
    replay = sample_trajectories(env, policy, names, theta, goals, 5, g, shared=True)
    for a, b in zip(replay, out.trajectories[0]):
        torch.testing.assert_close(a, b)
    for k in (1, 2):
        replay = sample_trajectories(env, policy, names, out.params[k], goals, 5, g)
        for a, b in zip(replay, out.trajectories[k]):
            torch.testing.assert_close(a, b)


def test_an_optimizer_steps_on_the_meta_gradient_that_meta_backward_accumulates():
    policy = tiny_policy(seed=4)
    algo = MAML(policy, lr=0.1)
    twin = MAML(copy.deepcopy(policy), lr=0.1)
    env = Nav2D(horizon=10)
    goals = env.sample_tasks(TASKS, torch.Generator().manual_seed(2), dtype=F64)
    config = PGConfig(trajectories=4)
    before = [p.detach().clone() for p in policy.parameters()]
    for p in policy.parameters():  # a stale gradient, which the caller must clear (the trainer
        p.grad = torch.ones_like(p)  # does: tests/test_rl_family.py); sample_and_backward adds to it
    sgd = torch.optim.SGD(algo.parameters(), lr=0.01)
    out = sample_and_backward(algo, env, goals, torch.Generator().manual_seed(3), config)
    sgd.step()
    sampled = sample_adaptation(twin, env, goals, 1, torch.Generator().manual_seed(3), config)
    loss = meta_loss(twin, sampled.batches)
    loss.backward()
    for b, p, t in zip(before, policy.parameters(), twin.module.parameters()):
        torch.testing.assert_close(p.grad, 1 + t.grad)
        torch.testing.assert_close(p.detach(), b - 0.01 * (1 + t.grad))
    assert math.isclose(out["loss"], loss.item(), rel_tol=1e-9, abs_tol=1e-12)
    expected = [t.episode_returns().mean().item() for t in sampled.trajectories]
    assert out["returns"] == pytest.approx(expected, rel=1e-12)


class Nav2D64(Nav2D):
    """2D navigation with float64 goals (hence float64 episodes), for the float64 policies here."""

    def sample_tasks(self, tasks, generator, dtype=F64):
        return super().sample_tasks(tasks, generator, dtype)


def test_adaptation_returns_and_the_papers_step_sizes():
    policy = tiny_policy(seed=5)
    algo = MAML(policy, lr=0.1)
    family = Nav2DFamily(inner_steps=1)  # a run trained with one step, as in the paper
    family.env, family.evaluation = Nav2D64(horizon=10), PGConfig(trajectories=3)
    curve = family.adaptation_returns(algo, TASKS, 3, seed=4)
    goals = family.held_out_goals(TASKS, seed=4)
    sampled = family.adaptation(algo, goals, 3, held_out_generator(4, 0, 1))
    assert curve.shape == (4, TASKS)
    torch.testing.assert_close(
        curve, torch.stack([t.episode_returns().mean(1) for t in sampled.trajectories])
    )
    # The paper's schedule (App. A.2): "α = 0.1 for the first step, and α = 0.05 for all future steps".
    assert [family.step_scale(k) for k in range(4)] == [1.0, 0.5, 0.5, 0.5]
    # Step k moves by step_scale(k)·α·g: the second step is half a plain one.
    i, k = 1, 1
    params = [p[i].detach().clone().requires_grad_() for p in sampled.params[k]]
    grads = torch.autograd.grad(reference_loss(params, sampled.batches[k], i), params)
    for fast, p, grad in zip(sampled.params[k + 1], params, grads):
        torch.testing.assert_close(fast[i], p.detach() - 0.05 * grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("curvature, first_order", [("lvc", None), ("reinforce", True)])
def test_meta_backward_uses_the_configured_estimator(curvature, first_order):
    policy = tiny_policy(seed=6)
    algo = MAML(policy, lr=0.3)
    twin = MAML(copy.deepcopy(policy), lr=0.3)
    env = Nav2D(horizon=10)
    goals = env.sample_tasks(TASKS, torch.Generator().manual_seed(7), dtype=F64)
    config = PGConfig(trajectories=4, curvature=curvature)
    sample_and_backward(algo, env, goals, torch.Generator().manual_seed(8), config, 1, first_order)
    sampled = sample_adaptation(twin, env, goals, 1, torch.Generator().manual_seed(8), config)
    meta_loss(twin, sampled.batches, curvature, first_order).backward()
    other = MAML(copy.deepcopy(policy), lr=0.3)  # the other estimator: a different gradient
    meta_loss(
        other, sampled.batches, "reinforce" if curvature == "lvc" else curvature, not first_order
    ).backward()
    for p, t, o in zip(policy.parameters(), twin.module.parameters(), other.module.parameters()):
        torch.testing.assert_close(p.grad, t.grad)
    assert any(
        not torch.allclose(p.grad, o.grad) for p, o in zip(policy.parameters(), other.module.parameters())
    )
