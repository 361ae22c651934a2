"""The batch of trajectories every sampler returns and every policy-gradient function reads."""

from typing import NamedTuple

import torch


class Trajectories(NamedTuple):
    """Fixed-length trajectories of a batch of tasks, ``trajectories`` episodes per task.

    Shapes: ``observations [tasks, trajectories, horizon, obs_dim]``, ``actions [tasks, trajectories,
    horizon, act_dim]`` (the raw policy samples, before any clipping by the environment),
    ``rewards [tasks, trajectories, horizon]`` and ``valid [tasks, trajectories, horizon]``. An
    episode that ends early (a terminal state) is padded: ``valid`` is 0 from the step after its
    last one, where rewards are 0 and observations and actions are placeholders.
    ``observations[..., t, :]`` is the state the action ``actions[..., t, :]`` was taken in and
    ``rewards[..., t]`` the reward for that transition.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    valid: torch.Tensor

    def episode_returns(self) -> torch.Tensor:
        """Undiscounted return of every episode, ``[tasks, trajectories]`` (rllab's AverageReturn
        averages these)."""
        return (self.rewards * self.valid).sum(-1)

    def episode_lengths(self) -> torch.Tensor:
        """Number of steps of every episode, ``[tasks, trajectories]``."""
        return self.valid.sum(-1)
