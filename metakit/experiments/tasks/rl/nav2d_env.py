"""2D navigation, the MAML paper's first meta-RL problem (Finn et al. 2017, §5.3), batched in torch.

A point starts at the origin; each task is a goal position. Every step the agent's action is a
velocity, clipped to [−0.1, 0.1] per coordinate, the point moves by it, and the reward is minus the
Euclidean distance from the *new* position to the goal. An episode ends after 100 steps, or as soon
as the point is within 0.01 of the goal in both coordinates (the step that gets there still earns
its reward). The observation is the position.

Sources, and where they disagree:

* Paper §5.3: goals "randomly chosen for each task within a unit square", velocity commands
  "clipped to be in the range [−0.1, 0.1]", "reward is the negative squared distance to the goal",
  episodes end "within 0.01 of the goal or at the horizon of H = 100".
* Authors' code, cbfinn/maml_rl ``maml_examples/point_env_randgoal.py`` (commit 725c800):
  goals U[−0.5, 0.5]² (l. 19–20, ``sample_goals``), start at (0, 0) (l. 33), move then reward
  ``-(x**2 + y**2) ** 0.5`` of the new position, i.e. minus the distance, *not* its square
  (l. 38–42), done when ``abs(x) < 0.01 and abs(y) < 0.01`` (l. 43). The action box is ±0.1
  (l. 17), but ``maml_examples/maml_trpo_point.py`` wraps the env in rllab's ``normalize``, whose
  ``NormalizedEnv.step`` (``rllab/envs/normalized_env.py``) maps a policy action ``a`` to
  ``lb + (a + 1)·(ub − lb)/2 = 0.1·a`` and clips that to ±0.1: the policy acts in [−1, 1] units.
  The horizon is ``max_path_length = 100`` in ``maml_trpo_point.py``.
* tristandeleu/pytorch-maml-rl ``maml_rl/envs/navigation.py`` (``Navigation2DEnv.step``): the same
  dynamics, reward and termination, but clips the raw action ``np.clip(action, -0.1, 0.1)``
  (no ×0.1 rescaling); goals U[−0.5, 0.5]² (``sample_tasks``); horizon 100 from
  ``max_episode_steps=100`` in ``maml_rl/envs/__init__.py``.

Here the reward is −distance after the move (both codes; the paper's "squared" is not what they
run) and the clip is ±0.1. ``action_scale`` chooses the action units: 1 is pytorch-maml-rl's
convention (the default), 0.1 the authors' ``normalize`` wrapper (:data:`AUTHORS_ACTION_SCALE`).
"""

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from metakit.experiments.tasks.rl.trajectories import Trajectories

AUTHORS_ACTION_SCALE = 0.1
"""``action_scale`` of cbfinn/maml_rl's ``normalize(PointEnvRandGoal())``: policy actions in [−1, 1]."""


def sample_goals(
    tasks: int,
    generator: torch.Generator,
    low: float = -0.5,
    high: float = 0.5,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Goals drawn uniformly from the square ``[low, high)²``, shape ``[tasks, 2]``."""
    return low + (high - low) * torch.rand(tasks, 2, generator=generator, dtype=dtype)


def step(
    position: torch.Tensor,
    action: torch.Tensor,
    goal: torch.Tensor,
    action_scale: float = 1.0,
    action_clip: float = 0.1,
    tolerance: float = 0.01,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One transition of any batch of points (pure; shapes broadcast, last dimension 2).

    Returns ``(next_position, reward, reached)``: ``next = position + clip(action_scale · action,
    ±action_clip)``, ``reward = −‖next − goal‖`` (after the move) and ``reached`` where both
    coordinates of ``next − goal`` are below ``tolerance`` in absolute value.
    """
    velocity = (action_scale * action).clamp(-action_clip, action_clip)
    next_position = position + velocity
    offset = next_position - goal
    reward = -offset.pow(2).sum(-1).sqrt()
    reached = (offset.abs() < tolerance).all(-1)
    return next_position, reward, reached


@dataclass(frozen=True)
class Nav2D:
    """The 2D navigation task family: goal distribution, dynamics and horizon (defaults: the paper's).

    Attributes:
        goal_low, goal_high: goals are U[goal_low, goal_high)².
        action_clip: per-coordinate bound of the velocity.
        action_scale: velocity = clip(action_scale · action); see the module docstring.
        horizon: maximum episode length H.
        tolerance: the episode ends when both coordinates are within this of the goal.
        observation_dim, action_dim: sizes of the observation (position) and action (velocity).
    """

    goal_low: float = -0.5
    goal_high: float = 0.5
    action_clip: float = 0.1
    action_scale: float = 1.0
    horizon: int = 100
    tolerance: float = 0.01
    observation_dim: int = 2
    action_dim: int = 2

    def sample_tasks(self, tasks: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
        """Goals of ``tasks`` new tasks, ``[tasks, 2]``."""
        return sample_goals(tasks, generator, self.goal_low, self.goal_high, dtype)

    def rollout(
        self,
        act: Callable[[torch.Tensor], torch.Tensor],
        goals: torch.Tensor,
        trajectories: int,
        generator: Optional[torch.Generator] = None,
    ):
        """Run ``trajectories`` episodes on each goal at once, every one from the origin.

        ``act(observations [tasks, trajectories, 2]) -> actions`` of the same shape is called once
        per step for the whole batch (it samples the policy). Episodes that reach their goal stop
        moving; their later steps are marked invalid. Returns :class:`Trajectories`. The dynamics
        are deterministic, so ``generator`` (the environment's own randomness) is not used.
        """
        tasks = goals.shape[0]
        position = torch.zeros(tasks, trajectories, 2, dtype=goals.dtype, device=goals.device)
        alive = torch.ones(tasks, trajectories, dtype=torch.bool, device=goals.device)
        goal = goals[:, None, :]
        observations, actions, rewards, valid = [], [], [], []
        for _ in range(self.horizon):
            action = act(position)
            moved, reward, reached = step(
                position, action, goal, self.action_scale, self.action_clip, self.tolerance
            )
            live = alive.to(goals.dtype)
            observations.append(position)
            actions.append(action)
            rewards.append(reward * live)
            valid.append(live)
            position = torch.where(alive[..., None], moved, position)
            alive = alive & ~reached
        stack = lambda xs: torch.stack(xs, 2)  # noqa: E731
        return Trajectories(stack(observations), stack(actions), stack(rewards), stack(valid))


class Nav2DEnv:
    """One 2D navigation episode stepped from Python, one call per step, as the references do.

    Plain Python floats and ``math`` (no torch), the same formulas as :func:`step`; used as the
    one-at-a-time baseline of the rollout bench and as an independent check of :meth:`Nav2D.rollout`.
    """

    def __init__(self, goal: Sequence[float], task: Nav2D = Nav2D()):
        self.goal = (float(goal[0]), float(goal[1]))
        self.task = task
        self.state = (0.0, 0.0)
        self.steps = 0

    def reset(self) -> List[float]:
        """Back to the origin; returns the first observation."""
        self.state = (0.0, 0.0)
        self.steps = 0
        return list(self.state)

    def step(self, action: Sequence[float]) -> Tuple[List[float], float, bool]:
        """Apply one action: ``(observation, reward, done)``; done at the goal or the horizon."""
        bound, scale = self.task.action_clip, self.task.action_scale
        vx, vy = (min(max(scale * float(a), -bound), bound) for a in action)
        self.state = (self.state[0] + vx, self.state[1] + vy)
        self.steps += 1
        dx, dy = self.state[0] - self.goal[0], self.state[1] - self.goal[1]
        reward = -math.sqrt(dx * dx + dy * dy)
        reached = abs(dx) < self.task.tolerance and abs(dy) < self.task.tolerance
        return list(self.state), reward, reached or self.steps >= self.task.horizon
