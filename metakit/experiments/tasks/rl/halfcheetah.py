"""HalfCheetah locomotion, the MAML paper's meta-RL tasks (Finn et al. 2017, §5.3), as
``--task halfcheetah-dir`` and ``--task halfcheetah-vel`` (needs ``pip install -e ".[rl]"``)."""

from metakit.experiments.tasks.rl.halfcheetah_env import HalfCheetah, missing_dependency
from metakit.experiments.tasks.rl.meta_rl import RLFamily
from metakit.experiments.util.errors import flag


class HalfCheetahFamily(RLFamily):
    """HalfCheetah tasks (:class:`~metakit.experiments.tasks.rl.halfcheetah_env.HalfCheetah`, horizon 200)
    with the RL protocol of :class:`~metakit.experiments.tasks.rl.meta_rl.RLFamily` and 40 tasks per
    meta-update (tristandeleu/pytorch-maml-rl ``configs/maml/halfcheetah-vel.yaml`` and
    ``halfcheetah-dir.yaml``). Its 300 iterations (pytorch-maml-rl trains 500) take hours on a
    CPU: one meta-update steps 40 × 20 × 200 × 2 = 320,000 MuJoCo steps, one episode at a time."""

    protocol = {**RLFamily.protocol, "meta_batch": 40}

    @classmethod
    def check_config(cls, config) -> None:
        """The RL rules, and gymnasium with MuJoCo installed."""
        super().check_config(config)
        missing = missing_dependency()
        if missing:
            raise ValueError(f"{flag('task')} {config.task}: {missing}")


class HalfCheetahDirection(HalfCheetahFamily):
    """Run forward or backward: reward ``d · v − 0.05 · Σ a²``, d = ±1 with probability ½ each."""

    env = HalfCheetah("direction")


class HalfCheetahVelocity(HalfCheetahFamily):
    """Run at a goal velocity v* ~ U[0, 2]: reward ``−|v − v*| − 0.05 · Σ a²``."""

    env = HalfCheetah("velocity")
