"""The MAML paper's baseline: one network trained by ordinary regression on all tasks jointly."""

from metakit.wrappers.base import Learner, Objective


class Pretrain(Learner):
    """Joint training on every task's points, then fine-tuning by SGD at test time.

    Its objective (:attr:`Objective.JOINT`) is the loss of the model itself on the support and query
    points of all tasks in the batch, with no inner loop. At test time it adapts like the other
    methods, by SGD with learning rate ``lr`` on a detached copy (``clone()`` / ``adapt(loss)``).

    Args:
        model: any ``nn.Module``.
        lr: fine-tuning learning rate.
    """

    objective = Objective.JOINT

    def __init__(self, model, lr: float):
        super().__init__(model, lr, first_order=True)
