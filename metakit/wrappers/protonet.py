"""Prototypical Networks: classify a query by the nearest class mean of the support embeddings."""

import torch
from torch import nn

from metakit.wrappers.base import Learner, Objective


def embedding_body(model: nn.Module) -> nn.Module:
    """``model`` without its classifier head: a ``Sequential`` whose last layer is an ``nn.Linear``
    loses that layer (the rest shares its parameters, under the same names); any other model is
    taken to output the embedding already."""
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[-1], nn.Linear):
        return model[:-1]
    return model


class ProtoNet(Learner):
    """Prototypical Networks (:attr:`Objective.METRIC`): no gradient steps within a task.

    For a task, the prototype ``c_k`` of class ``k`` is the mean embedding ``f(x)`` of its support
    images; the logits of a query ``x`` are ``−‖f(x) − c_k‖²`` (squared Euclidean distance), and the
    meta-loss is their cross-entropy on the query labels, differentiated into the embedding ``f``.

    The embedding is the model without its final linear layer (:func:`embedding_body`): for the
    standard conv net, the flattened features of the conv body, as in the paper; the head is not
    part of the learner, so it is neither trained nor saved. Classes absent from a task's support
    set (an N-way evaluation of a run trained for more ways) get logit −∞.

    Args:
        model: the family's network; its last ``nn.Linear`` is dropped (see above).
        ways: classes per task; labels are ``0 .. ways − 1``.
        lr: unused by the method (no inner steps); kept for the learner contract.

    Reference: Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017,
    arXiv:1703.05175.
    """

    objective = Objective.METRIC

    def __init__(self, model: nn.Module, ways: int, lr: float = 0.0):
        super().__init__(embedding_body(model), lr)
        self.ways = ways

    def predict(self, forward, x_support, y_support, x_query) -> torch.Tensor:
        """Logits ``[queries, ways]``: minus the squared distance of each query embedding to each
        class prototype (−∞ for a class with no support example)."""
        support = forward(x_support).flatten(1)
        query = forward(x_query).flatten(1)
        onehot = (y_support[:, None] == torch.arange(self.ways, device=y_support.device)).to(support.dtype)
        counts = onehot.sum(0)
        prototypes = onehot.T @ support / counts.clamp(min=1)[:, None]
        distances = ((query[:, None, :] - prototypes[None]) ** 2).sum(-1)
        return torch.where(counts > 0, -distances, -torch.inf)
