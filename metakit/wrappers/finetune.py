"""Chen et al.'s fine-tuning baselines: a classifier over every meta-train class, then at test time a
fresh head fit to each task's support set on the frozen features (Baseline: linear; Baseline++:
cosine)."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from metakit.wrappers.base import Learner, Objective

HEADS = ("linear", "cosine")
"""``linear``: Baseline's ``nn.Linear``; ``cosine``: Baseline++'s scaled cosine similarity."""
HEAD_LR, MOMENTUM, DAMPENING, WEIGHT_DECAY, HEAD_BATCH = 0.01, 0.9, 0.9, 1e-3, 4
"""The test-time head's SGD: the optimizer and mini-batch size of Chen et al.'s code
(``methods/baselinefinetune.py``: ``SGD(lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)``,
batches of 4 support examples)."""
HEAD_SEED = 0
"""Seed of the fresh head and of the support order: the same draw in every task, so that a task's
result depends on that task alone (not on the others adapted with it, nor on how many)."""


def cosine_scale(classes: int) -> float:
    """Baseline++'s fixed scale of the cosine similarities for a head over ``classes`` classes: 2 up
    to 200 classes, 10 beyond (Chen et al.'s code, ``backbone.distLinear``: a larger scale for the
    thousands of Omniglot classes)."""
    return 2.0 if classes <= 200 else 10.0


def cosine_logits(features: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · cos(f, w_k)`` for each feature row ``f`` of ``features`` ``[..., n, d]`` and class
    weight vector ``w_k`` of ``weight`` ``[..., classes, d]``: ``[..., n, classes]``."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).transpose(-1, -2)


class CosineHead(nn.Module):
    """Baseline++'s classifier: ``scale · cos(f, w_k)`` per class ``k`` (:func:`cosine_logits`), with
    no bias and the scale of :func:`cosine_scale`.

    Args:
        weight: the initial class weight vectors ``[classes, features]`` (e.g. a linear head's).
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.scale = cosine_scale(weight.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The scaled cosine similarities ``[n, classes]`` of ``features`` ``[n, d]``."""
        return cosine_logits(features, self.weight, self.scale)


def fit_heads(
    support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, epochs: int, head: str
) -> torch.Tensor:
    """Fit a fresh head per task to its support features and return its query logits after 0, 1,
    …, ``epochs`` passes: ``[epochs + 1, tasks, queries, ways]``.

    ``support`` ``[tasks, n, d]`` with ``labels`` ``[tasks, n]`` in ``0 … ways − 1``, ``query``
    ``[tasks, m, d]``. The head (``linear`` or ``cosine``, see :data:`HEADS`) starts as
    ``nn.Linear``'s initialisation, U(−1/√d, 1/√d), drawn from :data:`HEAD_SEED`. A pass is Chen
    et al.'s: the support set in a shuffled order, in mini-batches of :data:`HEAD_BATCH`, one SGD
    step on the mean cross-entropy of each (:data:`HEAD_LR`, momentum, dampening, weight decay).
    The tasks' heads are independent, stepped together as one batched tensor.
    """
    tasks, n, d = support.shape
    ways = int(labels.max()) + 1
    generator = torch.Generator().manual_seed(HEAD_SEED)
    bound = 1 / math.sqrt(d)
    like = dict(dtype=support.dtype, device=support.device)
    weight = ((torch.rand(ways, d, generator=generator) * 2 - 1) * bound).to(**like)
    params = [weight.expand(tasks, -1, -1).clone().requires_grad_()]
    if head == "linear":
        bias = ((torch.rand(ways, generator=generator) * 2 - 1) * bound).to(**like)
        params.append(bias.expand(tasks, -1).clone().requires_grad_())

    def logits(features):
        if head == "cosine":
            return cosine_logits(features, params[0], cosine_scale(ways))
        return features @ params[0].transpose(1, 2) + params[1][:, None]

    optimizer = torch.optim.SGD(
        params, lr=HEAD_LR, momentum=MOMENTUM, dampening=DAMPENING, weight_decay=WEIGHT_DECAY
    )
    curves = [logits(query).detach()]
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(support.device)
            for start in range(0, n, HEAD_BATCH):
                pick = order[start : start + HEAD_BATCH]
                predicted = logits(support[:, pick]).flatten(0, 1)
                # each task's mean over its mini-batch; summed, so every task gets its own gradient
                loss = F.cross_entropy(predicted, labels[:, pick].flatten(), reduction="sum") / len(pick)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            curves.append(logits(query).detach())
    return torch.stack(curves)


class Finetune(Learner):
    """Chen et al.'s Baseline (``head="linear"``) and Baseline++ (``head="cosine"``), the
    :attr:`Objective.TRANSFER` objective; not a meta-learner.

    Meta-training is ordinary classification: the body and a head with one output per meta-train
    class, trained on every example of the batch against its global class label. At test time the
    head is dropped; for each task a fresh head with one output per class of the task is fit to the
    support features of the frozen body (:func:`fit_heads`), and the query set is scored with it. A
    test-time step is one pass over the support set.

    Args:
        model: an ``nn.Sequential`` whose last layer is an ``nn.Linear`` with one output per
            meta-train class (the body is the rest, and outputs the features).
        head: ``"linear"`` keeps that layer; ``"cosine"`` replaces it by a :class:`CosineHead` with
            its weight matrix (no bias).

    Reference: Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019,
    arXiv:1904.04232.
    """

    objective = Objective.TRANSFER

    def __init__(self, model: nn.Module, head: str = "linear"):
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if not (isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[-1], nn.Linear)):
            raise ValueError("Finetune needs an nn.Sequential whose last layer is its nn.Linear classifier")
        if head == "cosine":
            model = nn.Sequential(*model[:-1], CosineHead(model[-1].weight))
        super().__init__(model, HEAD_LR, first_order=True)
        self.head = head

    @property
    def classes(self) -> int:
        """Outputs of the meta-training head: the meta-train classes."""
        return self.module[-1].weight.shape[0]

    @property
    def adapted_names(self) -> tuple:
        """None of the model's parameters adapts: the body is frozen and the head replaced."""
        return ()

    @torch.no_grad()
    def head_curves(self, x_support, y_support, x_query, steps: int) -> torch.Tensor:
        """Query logits ``[steps + 1, tasks, queries, ways]`` of a fresh head per task after 0 … ``steps``
        passes over its support set (:func:`fit_heads`), on the features of the body (the model
        without its head); inputs ``[tasks, examples, ...]``, labels ``0 … ways − 1``."""
        body = self.module[:-1]
        support, query = vmap(body)(x_support).flatten(2), vmap(body)(x_query).flatten(2)
        return fit_heads(support, y_support, query, steps, self.head)
