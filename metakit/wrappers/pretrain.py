"""The MAML paper's baseline: one network trained by ordinary regression on all tasks jointly."""

import torch
import torch.nn.functional as F

from metakit.wrappers.sgd import SGDLearner


class Pretrain(SGDLearner):
    """Joint training on every task's points, then fine-tuning by SGD at test time.

    Training (:func:`joint_backward`) minimises the loss of the model itself on the support and
    query points of all tasks in the batch, with no inner loop. At test time it adapts like the
    other methods, by SGD with learning rate ``lr`` (``clone()`` / ``adapt(loss)``).

    Args:
        model: any ``nn.Module``.
        lr: fine-tuning learning rate.
    """


def joint_backward(algo: Pretrain, batch, loss_fn=F.mse_loss) -> float:
    """Back-propagate the loss of the un-adapted model on all points of all tasks; return it."""
    x = torch.cat([batch.x_support, batch.x_query], 1).flatten(0, 1)
    y = torch.cat([batch.y_support, batch.y_query], 1).flatten(0, 1)
    loss = loss_fn(algo(x), y)
    loss.backward()
    return loss.item()
