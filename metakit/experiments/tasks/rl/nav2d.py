"""2D navigation, the MAML paper's first meta-RL problem (Finn et al. 2017, §5.3), as ``--task nav2d``."""

from metakit.experiments.tasks.family import Reproduction
from metakit.experiments.tasks.rl.meta_rl import RLFamily
from metakit.experiments.tasks.rl.nav2d_env import AUTHORS_ACTION_SCALE, Nav2D


class Nav2DFamily(RLFamily):
    """A point moves in the plane to a goal drawn from U[−0.5, 0.5]²; reward −distance, 100 steps
    (:class:`~metakit.experiments.tasks.rl.nav2d_env.Nav2D`), with the RL protocol of
    :class:`~metakit.experiments.tasks.rl.meta_rl.RLFamily`.

    Action units: the authors' code (:data:`~metakit.experiments.tasks.rl.nav2d_env.AUTHORS_ACTION_SCALE`,
    rllab's ``normalize`` wrapper: velocity = clip(0.1 · action, ±0.1)). With the policy's initial
    σ = 1 the first episodes then explore velocities of spread 0.1 inside the ±0.1 box, where
    actions in raw units (pytorch-maml-rl) are clipped to ±0.1 in ~92% of the coordinates and the
    policy starts as a bang-bang controller; and the paper's α = 0.1 was tuned for these units.
    Measured (MAML, 60 meta-updates, seed 0, the same 40 held-out goals): after 0/1/2/3 steps
    −37.0/−12.3/−6.6/−6.6 in the authors' units against −37.4/−14.5/−11.4/−11.1 in raw units.
    """

    env = Nav2D(action_scale=AUTHORS_ACTION_SCALE)
    position_observations = True
    reproduction = Reproduction(
        description=(
            "2D navigation, MAML-RL protocol (20 tasks × 20 episodes per meta-update, 1 policy-gradient "
            "step with α = 0.1, Adam 3e-3; evaluation: 40 episodes per task and step, α halved after "
            "the first step)"
        ),
        methods=("maml", "fomaml", "enhanced", "pretrain"),
        eval_shots=None,
        eval_steps=(0, 1, 2, 3),
        reported_steps=(0, 1, 2, 3),
    )
