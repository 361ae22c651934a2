"""2D navigation: goals, dynamics, reward timing, termination and horizon, against formulas written
here and a one-episode-at-a-time Python environment."""

import math

import torch

from metakit.experiments.tasks.rl.nav2d_env import AUTHORS_ACTION_SCALE, Nav2D, Nav2DEnv, sample_goals, step
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.trainer import build_training

F64 = torch.float64


def test_goals_fill_the_square_and_follow_the_generator():
    goals = sample_goals(20_000, torch.Generator().manual_seed(0), dtype=F64)
    assert goals.shape == (20_000, 2)
    assert goals.min() >= -0.5 and goals.max() < 0.5
    # Uniform on the square: both bounds are approached in both coordinates.
    assert (goals.min(0).values < -0.499).all() and (goals.max(0).values > 0.499).all()
    assert abs(goals.mean().item()) < 0.01 and abs(goals.var().item() - 1 / 12) < 0.002
    again = sample_goals(20_000, torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(goals, again)
    other = Nav2D(goal_low=1.0, goal_high=3.0).sample_tasks(1000, torch.Generator().manual_seed(1))
    assert other.min() >= 1.0 and other.max() < 3.0


def test_step_clips_each_velocity_coordinate_at_a_tenth():
    position = torch.zeros(4, 2, dtype=F64)
    action = torch.tensor([[0.5, -0.03], [-2.0, 0.1], [0.05, -0.2], [0.0999, -0.1001]], dtype=F64)
    moved, _, _ = step(position, action, torch.ones(2, dtype=F64))
    expected = torch.tensor([[0.1, -0.03], [-0.1, 0.1], [0.05, -0.1], [0.0999, -0.1]], dtype=F64)
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-15)
    # The authors' normalize() wrapper: a policy action of 1 is a velocity of 0.1.
    scaled, _, _ = step(position[:1], torch.tensor([[0.5, -3.0]], dtype=F64), torch.ones(2, dtype=F64), 0.1)
    torch.testing.assert_close(scaled, torch.tensor([[0.05, -0.1]], dtype=F64), rtol=0, atol=1e-15)
    assert AUTHORS_ACTION_SCALE == 0.1


def test_reward_is_minus_the_distance_after_the_move():
    start = torch.tensor([0.2, -0.1], dtype=F64)
    goal = torch.tensor([0.3, 0.4], dtype=F64)
    moved, reward, reached = step(start, torch.tensor([0.1, 0.0], dtype=F64), goal)
    # After the move the point is at (0.3, -0.1): 0.5 from the goal (before the move: √0.26).
    torch.testing.assert_close(moved, torch.tensor([0.3, -0.1], dtype=F64))
    assert math.isclose(reward.item(), -0.5, rel_tol=1e-12)
    assert not reached


def test_reaching_the_goal_is_within_a_hundredth_in_each_coordinate():
    origin = torch.zeros(2, dtype=F64)
    still = torch.zeros(2, dtype=F64)
    goals = torch.tensor([[0.009, 0.009], [0.011, 0.0], [0.0, -0.0099], [-0.0101, 0.005]], dtype=F64)
    _, _, reached = step(origin, still, goals)
    # A box, not a disc: (0.009, 0.009) is 0.0127 away yet counts as reached.
    assert reached.tolist() == [True, False, True, False]


def test_constant_action_rollout_follows_the_closed_form():
    task = Nav2D()
    goals = torch.tensor([[-0.5, 0.5], [0.45, -0.45]], dtype=F64)
    velocity = torch.tensor([0.05, -0.02], dtype=F64)
    out = task.rollout(lambda obs: velocity.expand_as(obs), goals, trajectories=3)
    assert out.observations.shape == (2, 3, 100, 2) and out.rewards.shape == (2, 3, 100)
    t = torch.arange(100, dtype=F64)[:, None]
    # Never within 0.01 of either goal along this line: 100 valid steps.
    assert torch.equal(out.valid, torch.ones(2, 3, 100, dtype=F64))
    torch.testing.assert_close(out.observations, (t * velocity).expand(2, 3, 100, 2))
    expected = -((t + 1) * velocity - goals[:, None, None, :]).norm(dim=-1)
    torch.testing.assert_close(out.rewards, expected.expand(2, 3, 100))
    torch.testing.assert_close(out.episode_returns(), expected.sum(-1).expand(2, 3))


def test_episode_ends_on_the_step_that_reaches_the_goal():
    goals = torch.tensor([[0.3, -0.12]], dtype=F64)
    out = Nav2D().rollout(lambda obs: torch.tensor([0.1, -0.04], dtype=F64).expand_as(obs), goals, 1)
    # Steps 0, 1, 2 move to (0.1, −0.04), (0.2, −0.08), (0.3, −0.12): the third reaches the goal.
    assert out.valid[0, 0, :4].tolist() == [1.0, 1.0, 1.0, 0.0] and out.valid[0, 0, 3:].sum() == 0
    assert out.episode_lengths().item() == 3
    d = [math.hypot(0.3 - 0.1 * k, 0.12 - 0.04 * k) for k in (1, 2, 3)]
    torch.testing.assert_close(out.rewards[0, 0, :3], -torch.tensor(d, dtype=F64))
    assert out.rewards[0, 0, 3:].abs().sum() == 0
    assert math.isclose(out.episode_returns().item(), -sum(d), abs_tol=1e-12)


def test_batched_rollout_matches_one_environment_at_a_time():
    task = Nav2D()
    g = torch.Generator().manual_seed(3)
    goals = task.sample_tasks(4, g, dtype=F64)

    pull = torch.tensor([0.6, 0.6, 0.3, 0.0, 0.0], dtype=F64)[None, :, None]

    def act(obs):  # some head for the goal and end at different steps; some wander for 100 steps
        return pull * (goals[:, None, :] - obs) + 0.02 * torch.randn(obs.shape, generator=g, dtype=F64)

    out = task.rollout(act, goals, trajectories=5)
    lengths = out.episode_lengths()
    assert lengths.min() < 100 and lengths.max() == 100  # both kinds of episode are checked
    for i in range(4):
        for j in range(5):
            env = Nav2DEnv(goals[i].tolist(), task)
            obs, done, t = env.reset(), False, 0
            while not done:
                assert out.valid[i, j, t] == 1
                torch.testing.assert_close(out.observations[i, j, t], torch.tensor(obs, dtype=F64))
                obs, reward, done = env.step(out.actions[i, j, t].tolist())
                assert math.isclose(out.rewards[i, j, t].item(), reward, rel_tol=1e-12, abs_tol=1e-15)
                t += 1
            assert t == int(lengths[i, j]) and out.valid[i, j, t:].sum() == 0


def test_authors_action_units_match_the_python_environment():
    task = Nav2D(action_scale=AUTHORS_ACTION_SCALE)
    goals = torch.tensor([[0.2, 0.3]], dtype=F64)
    actions = torch.randn(100, 1, 1, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    steps = iter(actions)
    out = task.rollout(lambda obs: next(steps), goals, 1)
    env = Nav2DEnv([0.2, 0.3], task)
    env.reset()
    for t in range(int(out.episode_lengths().item())):
        obs, reward, _ = env.step(actions[t, 0, 0].tolist())
        assert math.isclose(out.rewards[0, 0, t].item(), reward, rel_tol=1e-12)


def test_the_familys_training_goals_reach_both_ends_of_the_square():
    setup = build_training(TrainConfig(task="nav2d", device="cpu"))  # what `metakit train` samples from
    goals = torch.cat([setup.sample().goals for _ in range(100)])
    assert goals.shape == (100 * setup.config.meta_batch, 2)
    assert goals.min() >= -0.5 and goals.max() < 0.5
    assert (goals.min(0).values < -0.495).all() and (goals.max(0).values > 0.495).all()
