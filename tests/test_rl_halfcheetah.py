"""HalfCheetah tasks: task sampling, episodes against gymnasium's HalfCheetah-v5 stepped alone, the
rewards from their formulas (cbfinn/maml_rl ``half_cheetah_env_rand_direc.py`` and
``half_cheetah_env_rand.py``), and one meta-step through the trainer. Skipped without MuJoCo."""

import math

import numpy as np
import pytest
import torch

from metakit.experiments.tasks.rl import halfcheetah as families
from metakit.experiments.tasks.rl import halfcheetah_env as halfcheetah
from metakit.experiments.tasks.rl.halfcheetah_env import HalfCheetah
from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.trainer import build_training

MISSING = halfcheetah.missing_dependency()
needs_mujoco = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
F64 = torch.float64


def test_tasks_are_a_fair_coin_or_uniform_velocities():
    directions = HalfCheetah("direction").sample_tasks(20_000, torch.Generator().manual_seed(0))
    assert directions.shape == (20_000, 1) and set(directions.unique().tolist()) == {-1.0, 1.0}
    assert abs(directions.mean().item()) < 0.03
    velocities = HalfCheetah("velocity").sample_tasks(20_000, torch.Generator().manual_seed(0), dtype=F64)
    assert velocities.min() >= 0.0 and velocities.max() < 2.0
    assert abs(velocities.mean().item() - 1.0) < 0.02 and abs(velocities.var().item() - 4 / 12) < 0.01
    with pytest.raises(ValueError, match="objective"):
        HalfCheetah("sideways")


def test_missing_mujoco_is_a_one_line_config_error(monkeypatch):
    monkeypatch.setattr(families, "missing_dependency", lambda: "HalfCheetah needs gymnasium[mujoco]")
    with pytest.raises(ConfigError, match="--task halfcheetah-vel: HalfCheetah needs gymnasium"):
        TrainConfig(task="halfcheetah-vel")


@needs_mujoco
@pytest.mark.parametrize("objective", ["direction", "velocity"])
def test_episodes_are_gymnasiums_and_rewards_follow_the_reference_formulas(objective):
    task = HalfCheetah(objective, horizon=6)
    goals = torch.tensor([[-1.0], [1.0]] if objective == "direction" else [[0.3], [1.7]], dtype=F64)
    # Raw policy actions, some beyond the action box [−1, 1]: the environment gets them clipped.
    actions = 1.5 * torch.randn(6, 2, 3, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    steps = iter(actions)
    out = task.rollout(lambda obs: next(steps), goals, 3, torch.Generator().manual_seed(2))
    assert out.observations.shape == (2, 3, 6, 17) and out.valid.sum() == 2 * 3 * 6
    torch.testing.assert_close(out.actions, actions.permute(1, 2, 0, 3))

    seeds = torch.randint(0, 2**31, (6,), generator=torch.Generator().manual_seed(2)).tolist()
    env = halfcheetah.make_env()  # gymnasium's HalfCheetah-v5 (MuJoCo's warnings muted), stepped alone
    for i in range(2):
        for j in range(3):
            obs, _ = env.reset(seed=seeds[3 * i + j])
            data = env.data
            for t in range(6):
                np.testing.assert_allclose(out.observations[i, j, t].numpy(), obs, rtol=0, atol=1e-12)
                a = np.clip(actions[t, i, j].numpy(), -1.0, 1.0)
                x_before = data.qpos[0]
                obs, _, terminated, _, _ = env.step(a)
                assert not terminated
                v = (data.qpos[0] - x_before) / 0.05  # dt = 5 frames of 0.01 s
                control = 1e-1 * 0.5 * float(np.sum(np.square(a)))
                goal = goals[i, 0].item()
                expected = goal * v - control if objective == "direction" else -abs(v - goal) - control
                assert math.isclose(out.rewards[i, j, t].item(), expected, rel_tol=1e-10, abs_tol=1e-12)


@needs_mujoco
def test_a_meta_step_through_the_trainer(monkeypatch):
    monkeypatch.setattr(families.HalfCheetahVelocity, "env", HalfCheetah("velocity", horizon=4))
    config = TrainConfig(task="halfcheetah-vel", meta_batch=2)
    assert config.meta_batch == 2 and TrainConfig(task="halfcheetah-dir").meta_batch == 40
    setup = build_training(config)
    assert setup.algo.module.mean[0].in_features == 17 and setup.algo.module.mean[-1].out_features == 6
    loss, _, _ = setup.step(0)
    assert math.isfinite(loss)
    for name, p in setup.algo.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
