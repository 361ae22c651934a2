"""HalfCheetah locomotion, the MAML paper's meta-RL tasks (Finn et al. 2017, §5.3), on gymnasium's
``HalfCheetah-v5`` (MuJoCo), with the same :class:`Trajectories` output as 2D navigation.

Two task families, horizon H = 200 (paper §5.3):

* ``direction``: run forward or backward; a task is a direction d ∈ {−1, +1}, each with
  probability ½. Reward ``d · v − c · Σ a²``.
* ``velocity``: run at a goal velocity v* ~ U[0, 2]. Reward ``−|v − v*| − c · Σ a²``.

``v`` is the forward velocity over the step and ``a`` the action clipped to the action box
[−1, 1]⁶; ``c = 0.05``. Sources:

* cbfinn/maml_rl ``rllab/envs/mujoco/half_cheetah_env_rand_direc.py`` and
  ``half_cheetah_env_rand.py``: ``ctrl_cost = 1e-1 * 0.5 * np.sum(np.square(action))`` on the
  clipped action; direction: ``run_cost = goal_direction * -1 * comvel[0]``, reward
  ``−(ctrl_cost + run_cost)``, the direction −1 when a U[0, 2] draw is below 1 (a fair coin);
  velocity: ``run_cost = abs(comvel[0] − goal_vel)`` with goals ``np.random.uniform(0.0, 2.0)``
  (``sample_goals``).
* Where they differ: rllab's ``v`` is the torso's centre-of-mass velocity
  (``get_body_comvel("torso")[0]``) and its observation adds the torso's centre of mass (20
  numbers); here ``v`` is gymnasium's ``info["x_velocity"]`` (the root's x displacement over the
  step divided by ``dt = 0.05``, as tristandeleu/pytorch-maml-rl's ``HalfCheetahVelEnv`` and
  ``HalfCheetahDirEnv`` compute it) and the observation gymnasium's 17 numbers (joint positions
  without the root's x, and velocities). gymnasium's own reward (``ctrl_cost_weight = 0.1``, no
  ½) is not used.

Episodes never end early (``valid`` is all ones). Each episode starts from gymnasium's reset
(``reset_noise_scale = 0.1``) seeded from the sampler's generator, so a seeded sampler gives the
same episodes.

Stepping: one ``HalfCheetah-v5`` environment per process (its MuJoCo model is compiled once), and
one ``mujoco.MjData`` state per episode; each episode's state is swapped into the environment
(``env.data``) before its ``reset`` and each ``step``, so that every step is gymnasium's own
(physics, observation, ``x_velocity``). The tests check that the episodes equal those of a fresh
``gymnasium.make("HalfCheetah-v5")`` stepped alone. Needs ``pip install "gymnasium[mujoco]>=1.0"
"mujoco>=3"`` (``pip install -e ".[rl]"``); headless (no rendering).
"""

import functools
import importlib.util
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from metakit.experiments.tasks.rl.trajectories import Trajectories

CONTROL_COST = 0.05
"""``c`` in the rewards: rllab's ``1e-1 * 0.5``."""
OBJECTIVES = ("direction", "velocity")


REQUIRES = ("gymnasium", "mujoco", "imageio")
"""Packages gymnasium's MuJoCo environments import (``imageio`` comes with ``gymnasium[mujoco]``)."""


def missing_dependency() -> Optional[str]:
    """Why HalfCheetah cannot run here (one line), or ``None`` when its packages are installed
    (checked without importing them)."""
    missing = [name for name in REQUIRES if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"HalfCheetah needs gymnasium[mujoco] and mujoco, and {', '.join(missing)} is not installed; "
            "pip install -e '.[rl]'"
        )
    return None


@functools.lru_cache(maxsize=1)
def simulator():
    """The process's ``HalfCheetah-v5`` environment, shared by every rollout (:func:`make_env`)."""
    return make_env()


def make_env():
    """A new ``HalfCheetah-v5`` environment (unwrapped: no time limit, no checker).

    MuJoCo's warnings while it compiles gymnasium's model (MuJoCo ≥ 3.3 deprecates the model's
    ``settotalmass``) are dropped, instead of going to stderr and to ``MUJOCO_LOG.TXT`` in the
    working directory.
    """
    import gymnasium
    import mujoco

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: None)
    try:
        return gymnasium.make("HalfCheetah-v5", disable_env_checker=True).unwrapped
    finally:
        mujoco.set_mju_user_warning(previous)


def control_cost(action: torch.Tensor) -> torch.Tensor:
    """``c · Σ a²`` over the last dimension of the action clipped to [−1, 1]."""
    return CONTROL_COST * action.clamp(-1.0, 1.0).pow(2).sum(-1)


@dataclass(frozen=True)
class HalfCheetah:
    """A HalfCheetah task family: ``objective`` ``"direction"`` or ``"velocity"`` (module docstring).

    Attributes:
        objective: what the reward asks for.
        horizon: episode length H (paper: 200).
        velocity_low, velocity_high: goal velocities are U[velocity_low, velocity_high).
        observation_dim, action_dim: gymnasium's HalfCheetah-v5 sizes.
    """

    objective: str = "direction"
    horizon: int = 200
    velocity_low: float = 0.0
    velocity_high: float = 2.0
    observation_dim: int = 17
    action_dim: int = 6

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")

    def sample_tasks(self, tasks: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
        """Task parameters ``[tasks, 1]``: directions ±1 (a fair coin) or goal velocities."""
        if self.objective == "direction":
            return (2 * torch.randint(0, 2, (tasks, 1), generator=generator) - 1).to(dtype)
        u = torch.rand(tasks, 1, generator=generator, dtype=dtype)
        return self.velocity_low + (self.velocity_high - self.velocity_low) * u

    def reward(self, x_velocity: torch.Tensor, action: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        """Rewards of a batch of steps: ``x_velocity [tasks, n]``, ``action [tasks, n, 6]`` (raw),
        ``goals [tasks, 1]``."""
        if self.objective == "direction":
            forward = goals * x_velocity
        else:
            forward = -(x_velocity - goals).abs()
        return forward - control_cost(action)

    def rollout(
        self,
        act: Callable[[torch.Tensor], torch.Tensor],
        goals: torch.Tensor,
        trajectories: int,
        generator: torch.Generator,
    ) -> Trajectories:
        """Run ``trajectories`` episodes of ``horizon`` steps on each task.

        ``act(observations [tasks, trajectories, 17]) -> actions [tasks, trajectories, 6]`` is called
        once per step for the whole batch; the environment gets the actions clipped to [−1, 1]
        (``Trajectories.actions`` keeps the raw ones). Reset seeds are drawn from ``generator``
        (a CPU generator).
        """
        import mujoco

        env = simulator()
        tasks, n = goals.shape[0], goals.shape[0] * trajectories
        seeds = torch.randint(0, 2**31, (n,), generator=generator).tolist()
        states = [mujoco.MjData(env.model) for _ in range(n)]
        first = []
        for state, seed in zip(states, seeds):
            env.data = state
            first.append(env.reset(seed=seed)[0])
        observation = np.stack(first)
        velocity = np.empty(n)
        observations, actions, rewards = [], [], []
        for _ in range(self.horizon):
            obs = torch.from_numpy(observation).to(goals.dtype).view(tasks, trajectories, -1)
            action = act(obs.to(goals.device))
            clipped = action.detach().clamp(-1.0, 1.0).cpu().double().reshape(n, -1).numpy()
            stepped = []
            for i, state in enumerate(states):
                env.data = state
                o, _, _, _, info = env.step(clipped[i])
                stepped.append(o)
                velocity[i] = info["x_velocity"]
            observation = np.stack(stepped)
            x_velocity = torch.from_numpy(velocity).to(goals.dtype).view(tasks, trajectories)
            observations.append(obs.to(goals.device))
            actions.append(action)
            rewards.append(self.reward(x_velocity.to(goals.device), action, goals))
        stack = lambda xs: torch.stack(xs, 2)  # noqa: E731
        rewards = stack(rewards)
        return Trajectories(stack(observations), stack(actions), rewards, torch.ones_like(rewards))
