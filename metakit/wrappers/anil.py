"""ANIL (Almost No Inner Loop): MAML whose inner loop adapts only the model's head."""

from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from metakit._l2l import learn2learn as l2l
from metakit.wrappers.base import adapt_module
from metakit.wrappers.rules import scaled_updates


def default_head(model: nn.Module) -> tuple:
    """Names of the parameters of the last submodule (in registration order) that holds parameters
    of its own: the final linear layer of a ``Sequential`` network."""
    head = ()
    for prefix, module in model.named_modules():
        own = [name for name, _ in module.named_parameters(recurse=False)]
        if own:
            head = tuple(f"{prefix}.{name}" if prefix else name for name in own)
    if not head:
        raise ValueError("ANIL needs a model with parameters")
    return head


class ANIL(nn.Module):
    """ANIL: the inner loop takes SGD steps ``θ_h ← θ_h − α·∇_h L_support`` on the head's parameters
    ``θ_h`` only; the body keeps its meta-learned values and acts as a fixed feature extractor
    within a task.

    The meta-parameters are all of the model's parameters: the outer loss reaches the body directly
    (query features) and through the head's inner steps (second order, unless ``first_order``).

    It offers learn2learn's ``clone()`` / ``adapt(loss)`` surface. The adapted tensors are listed
    in ``adapted_params`` (positions in ``module.parameters()``), which every metakit backend
    honours: only the head's gradients are computed in the inner loop, and ``inner_updates``
    receives and returns the head's tensors alone.

    Args:
        model: any ``nn.Module``.
        lr: inner learning rate α.
        head: names of the parameters the inner loop adapts, or of submodules (all their
            parameters), as in ``model.named_parameters()`` / ``named_modules()``. Default: the
            parameters of the last submodule that holds any (:func:`default_head`). A head that
            covers every parameter makes this MAML.
        first_order: do not differentiate through the inner gradients.

    Example::

        anil = ANIL(model, lr=0.01)                 # adapts model's last layer
        learner = anil.clone()
        learner.adapt(loss_fn(learner(x_support), y_support))
        loss_fn(learner(x_query), y_query).backward()   # grads for head and body

    Reference: Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards
    Understanding the Effectiveness of MAML", ICLR 2020, arXiv:1909.09157.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        head: Optional[Iterable[str]] = None,
        first_order: bool = False,
    ):
        super().__init__()
        self.module = model
        self.lr = lr
        self.first_order = first_order
        names = [name for name, _ in model.named_parameters()]
        wanted = default_head(model) if head is None else (head,) if isinstance(head, str) else tuple(head)
        unknown = [w for w in wanted if not any(n == w or n.startswith(w + ".") for n in names)]
        if unknown or not wanted:
            raise ValueError(f"ANIL head: no parameters named {', '.join(unknown) or '(none given)'}")
        chosen = [i for i, n in enumerate(names) if any(n == w or n.startswith(w + ".") for w in wanted)]
        self.head = tuple(names[i] for i in chosen)
        """Names of the adapted parameters, in model order."""
        self.adapted_params = tuple(chosen)
        """Positions of the adapted parameters in ``module.parameters()``."""
        self.step = 0

    def forward(self, *args, **kwargs):
        """Run the wrapped model."""
        return self.module(*args, **kwargs)

    def clone(self, first_order: Optional[bool] = None) -> "ANIL":
        """A differentiable copy of the model with the same head, ready for ``adapt``."""
        return ANIL(
            l2l.clone_module(self.module),
            self.lr,
            head=self.head,
            first_order=self.first_order if first_order is None else first_order,
        )

    def inner_updates(self, grads: Sequence[torch.Tensor], step: int) -> list:
        """The inner-loop step ``α·g`` for each gradient of a head tensor."""
        return scaled_updates(grads, [self.lr] * len(grads))

    def adapt(self, loss: torch.Tensor, first_order: Optional[bool] = None) -> None:
        """One inner step of the head on ``loss``, in place on this learner; the body is left as is."""
        first_order = self.first_order if first_order is None else first_order
        adapt_module(self.module, loss, self.inner_updates, self.step, first_order, self.adapted_params)
        self.step += 1
