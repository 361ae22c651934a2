"""Meta-reinforcement learning: the MAML paper's 2D navigation and HalfCheetah tasks, a Gaussian
policy, vanilla policy gradient and the MAML-RL meta-objective, for any metakit algorithm."""

from metakit.experiments.tasks.rl.halfcheetah_env import HalfCheetah
from metakit.experiments.tasks.rl.nav2d_env import Nav2D, Nav2DEnv
from metakit.experiments.tasks.rl.objective import meta_loss, sample_adaptation, sample_and_backward
from metakit.experiments.tasks.rl.policy import GaussianMLPPolicy
from metakit.experiments.tasks.rl.policy_gradient import PGBatch, PGConfig
from metakit.experiments.tasks.rl.trajectories import Trajectories

__all__ = [
    "GaussianMLPPolicy",
    "HalfCheetah",
    "Nav2D",
    "Nav2DEnv",
    "PGBatch",
    "PGConfig",
    "Trajectories",
    "sample_and_backward",
    "meta_loss",
    "sample_adaptation",
]
