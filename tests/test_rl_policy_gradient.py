"""Policy-gradient pieces against independent math: Python loops for returns and GAE, numpy least
squares for the baseline, torch.distributions for log-densities, and the closed-form gradient and
Hessian of a one-step Gaussian bandit for the estimators."""

import math

import numpy as np
import pytest
import torch

from metakit.experiments.tasks.rl.policy import GaussianMLPPolicy, batched_policy_forward, gaussian_log_prob
from metakit.experiments.tasks.rl.policy_gradient import (
    PGConfig,
    advantages,
    baseline_features,
    fit_linear_baseline,
    gae,
    linear_baseline_values,
    normalize_advantages,
    returns_to_go,
    surrogate_loss,
)
from metakit.experiments.tasks.rl.trajectories import Trajectories

F64 = torch.float64


def random_episodes(tasks=3, trajectories=4, horizon=7, seed=0):
    """Random observations and rewards, with episodes of random lengths (some full)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(tasks, trajectories, horizon, 2, generator=g, dtype=F64)
    lengths = torch.randint(2, horizon + 1, (tasks, trajectories), generator=g)
    lengths[0, 0] = horizon
    valid = (torch.arange(horizon) < lengths[..., None]).to(F64)
    rewards = torch.randn(tasks, trajectories, horizon, generator=g, dtype=F64) * valid
    actions = torch.randn(tasks, trajectories, horizon, 2, generator=g, dtype=F64)
    return Trajectories(obs * valid[..., None], actions, rewards, valid)


def loop_returns(rewards, length, discount):
    out, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(length)):
        running = rewards[t] + discount * running
        out[t] = running
    return out


def test_returns_to_go_match_a_backward_loop():
    traj = random_episodes()
    got = returns_to_go(traj.rewards, traj.valid, 0.9)
    for i, j in np.ndindex(*traj.valid.shape[:2]):
        length = int(traj.valid[i, j].sum())
        expected = loop_returns(traj.rewards[i, j].tolist(), length, 0.9)
        torch.testing.assert_close(got[i, j], torch.tensor(expected, dtype=F64))


@pytest.mark.parametrize("lam", [1.0, 0.95, 0.0])
def test_gae_matches_the_recursive_definition(lam):
    traj = random_episodes(seed=1)
    values = torch.randn(traj.rewards.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    got = gae(traj.rewards, values, traj.valid, 0.9, lam)
    for i, j in np.ndindex(*traj.valid.shape[:2]):
        length, r, v = int(traj.valid[i, j].sum()), traj.rewards[i, j], values[i, j]
        expected, running = [0.0] * r.shape[0], 0.0
        for t in reversed(range(length)):
            following = v[t + 1].item() if t + 1 < length else 0.0  # the end is valued 0
            running = r[t].item() + 0.9 * following - v[t].item() + 0.9 * lam * running
            expected[t] = running
        torch.testing.assert_close(got[i, j], torch.tensor(expected, dtype=F64))
    if lam == 1.0:  # Monte-Carlo advantages: return-to-go minus the value
        torch.testing.assert_close(got, (returns_to_go(traj.rewards, traj.valid, 0.9) - values) * traj.valid)


def test_linear_baseline_is_the_ridge_solution_of_rllab_features():
    traj = random_episodes(tasks=2, trajectories=5, horizon=30, seed=4)
    returns = returns_to_go(traj.rewards, traj.valid, 0.99)
    reg = 1e-3
    got = fit_linear_baseline(baseline_features(traj.observations, traj.valid), returns, reg)
    for i in range(2):
        rows, targets = [], []
        for j in range(5):
            for t in range(int(traj.valid[i, j].sum())):
                o = np.clip(traj.observations[i, j, t].numpy(), -10, 10)
                s = t / 100.0
                rows.append(np.concatenate([o, o**2, [s, s**2, s**3, 1.0]]))
                targets.append(returns[i, j, t].item())
        x, y = np.array(rows), np.array(targets)
        # Ridge as an augmented least-squares problem: min ‖Xw − y‖² + reg‖w‖².
        augmented = np.vstack([x, math.sqrt(reg) * np.eye(x.shape[1])])
        w = np.linalg.lstsq(augmented, np.concatenate([y, np.zeros(x.shape[1])]), rcond=None)[0]
        torch.testing.assert_close(got[i], torch.from_numpy(w), rtol=1e-7, atol=1e-9)
        values = linear_baseline_values(traj.observations, returns, traj.valid, reg)[i]
        torch.testing.assert_close(values[traj.valid[i] > 0], torch.from_numpy(x @ w), rtol=1e-7, atol=1e-9)
        assert values[traj.valid[i] == 0].abs().sum() == 0


def test_observations_are_clipped_in_the_baseline_features():
    obs = torch.tensor([[[[12.0, -0.5]]]], dtype=F64)
    features = baseline_features(obs, torch.ones(1, 1, 1, dtype=F64))
    torch.testing.assert_close(
        features[0, 0, 0], torch.tensor([10.0, -0.5, 100.0, 0.25, 0, 0, 0, 1], dtype=F64)
    )


def test_advantages_are_standardised_per_task_over_valid_steps():
    traj = random_episodes(seed=5)
    adv = advantages(traj, PGConfig(discount=0.95))
    for i in range(adv.shape[0]):
        values = adv[i][traj.valid[i] > 0]
        assert abs(values.mean().item()) < 1e-12
        assert math.isclose(values.std(unbiased=False).item(), 1.0, rel_tol=1e-6)
    assert adv[traj.valid == 0].abs().sum() == 0
    raw = torch.tensor([[[1.0, 3.0, 100.0]]], dtype=F64)
    mask = torch.tensor([[[1.0, 1.0, 0.0]]], dtype=F64)
    torch.testing.assert_close(normalize_advantages(raw, mask), torch.tensor([[[-1.0, 1.0, 0.0]]], dtype=F64))


def test_gaussian_log_prob_and_the_policy():
    g = torch.Generator().manual_seed(6)
    mean, log_std, a = (torch.randn(5, 3, generator=g, dtype=F64) for _ in range(3))
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(a).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, a), expected)

    policy = GaussianMLPPolicy().double()
    assert [tuple(p.shape) for p in policy.parameters()] == [
        (2,),
        (100, 2),
        (100,),
        (100, 100),
        (100,),
        (2, 100),
        (2,),
    ]
    assert torch.equal(policy.log_std, torch.zeros(2, dtype=F64))  # σ = 1 at start
    assert all(layer.bias.abs().sum() == 0 for layer in policy.mean if hasattr(layer, "bias"))
    names = [n for n, _ in policy.named_parameters()]
    params = [torch.stack([p.detach() + 0.1 * k for k in range(3)]) for p in policy.parameters()]
    obs = torch.randn(3, 4, 2, generator=g, dtype=F64)
    mean, log_std = batched_policy_forward(policy, names, params, obs)
    for k in range(3):
        with torch.no_grad():
            for p, q in zip(policy.parameters(), params):
                p.copy_(q[k])
            m, s = policy(obs[k])
        torch.testing.assert_close(mean[k], m)
        torch.testing.assert_close(log_std[k], s)
    with torch.no_grad():
        policy.log_std.fill_(-100.0)
    assert torch.allclose(policy(obs[0])[1], torch.full((4, 2), math.log(1e-6), dtype=F64))


# A one-step Gaussian bandit: a ~ N(μ, σ²), r(a) = −(a − g)², so J(μ) = E r = −(μ − g)² − σ²,
# dJ/dμ = −2(μ − g) and d²J/dμ² = −2. The loss is −J.
MU, SIGMA, GOAL, SAMPLES = 0.3, 0.5, -0.2, 20_000


def bandit(seed):
    g = torch.Generator().manual_seed(seed)
    actions = MU + SIGMA * torch.randn(SAMPLES, 1, 1, generator=g, dtype=F64)
    rewards = -((actions[..., 0] - GOAL) ** 2)
    return actions, rewards


def per_sample_derivatives(curvature, actions, adv):
    """First and second derivative in μ of each sample's surrogate (each sample has its own copy of μ)."""
    mu = torch.full((SAMPLES, 1, 1), MU, dtype=F64, requires_grad=True)
    log_std = torch.full((SAMPLES, 1, 1), math.log(SIGMA), dtype=F64)
    logp = gaussian_log_prob(mu, log_std, actions)
    # The surrogate averages over samples: × SAMPLES gives each sample's own term.
    loss = SAMPLES * surrogate_loss(logp, adv, torch.ones_like(adv), curvature)
    (first,) = torch.autograd.grad(loss, mu, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), mu)
    return first.flatten(), second.flatten()


def within_standard_errors(values, expected, count=4.0):
    se = values.std() / math.sqrt(values.numel())
    assert abs(values.mean().item() - expected) < count * se.item(), (
        values.mean().item(),
        expected,
        se.item(),
    )


@pytest.mark.parametrize("with_baseline", [False, True])
@pytest.mark.parametrize("curvature", ["reinforce", "lvc"])
def test_policy_gradient_is_unbiased_on_a_gaussian_bandit(curvature, with_baseline):
    actions, rewards = bandit(seed=7)
    adv = rewards
    if with_baseline:  # the linear baseline of a one-step episode is the mean reward (intercept)
        obs, valid = torch.zeros(1, SAMPLES, 1, 2, dtype=F64), torch.ones(1, SAMPLES, 1, dtype=F64)
        values = linear_baseline_values(obs, rewards[None], valid, 1e-5)[0]
        torch.testing.assert_close(values, rewards.mean().expand_as(values), rtol=1e-6, atol=1e-9)
        adv = rewards - values
    first, _ = per_sample_derivatives(curvature, actions, adv)
    within_standard_errors(first, 2 * (MU - GOAL))  # d(−J)/dμ
    if with_baseline:  # the baseline cuts the variance
        assert first.std() < 0.8 * per_sample_derivatives(curvature, actions, rewards)[0].std()


def test_surrogate_hessians_are_the_documented_ones():
    actions, rewards = bandit(seed=8)
    _, reinforce = per_sample_derivatives("reinforce", actions, rewards)
    _, lvc = per_sample_derivatives("lvc", actions, rewards)
    # Per sample, the loss is −w·r. LVC: −(∇² log π + (∇ log π)²)·r, whose mean is d²(−J)/dμ² = 2.
    # REINFORCE: −∇² log π · r = r/σ², whose mean is J/σ² = −((μ − g)² + σ²)/σ² = −2 here: biased.
    within_standard_errors(lvc, 2.0)
    expected_reinforce = -((MU - GOAL) ** 2 + SIGMA**2) / SIGMA**2
    within_standard_errors(reinforce, expected_reinforce)
    assert abs(reinforce.mean().item() - 2.0) > 3.0


def test_surrogates_have_the_same_gradient_and_their_documented_values():
    traj = random_episodes(seed=9)
    adv = advantages(traj)
    logp = torch.randn(traj.valid.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    grads = []
    for curvature in ("reinforce", "lvc"):
        x = logp.clone().requires_grad_()
        loss = surrogate_loss(x, adv, traj.valid, curvature)
        grads.append(torch.autograd.grad(loss, x)[0])
        n = traj.valid.sum()
        value = (
            -(logp * adv * traj.valid).sum() / n
            if curvature == "reinforce"
            else -(adv * traj.valid).sum() / n
        )
        torch.testing.assert_close(loss.detach(), value)
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], -adv * traj.valid / traj.valid.sum())
