"""ANIL (Almost No Inner Loop): MAML whose inner loop adapts only the model's head."""

from typing import Iterable, Optional

from torch import nn

from metakit.wrappers.base import Learner


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


class ANIL(Learner):
    """ANIL: the inner loop takes SGD steps ``θ_h ← θ_h − α·∇_h L_support`` on the head's parameters
    ``θ_h`` only; the body keeps its meta-learned values and acts as a fixed feature extractor
    within a task.

    The meta-parameters are all of the model's parameters: the outer loss reaches the body directly
    (query features) and through the head's inner steps (second order, unless ``first_order``).

    It offers learn2learn's ``clone()`` / ``adapt(loss)`` surface. Its ``adapted_names`` are the
    head's, which every metakit engine honours: only the head's gradients are computed in the inner
    loop, and ``inner_updates`` receives and returns the head's tensors alone.

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
        super().__init__(model, lr, first_order)
        names = [name for name, _ in model.named_parameters()]
        wanted = default_head(model) if head is None else (head,) if isinstance(head, str) else tuple(head)
        unknown = [w for w in wanted if not any(n == w or n.startswith(w + ".") for n in names)]
        if unknown or not wanted:
            raise ValueError(f"ANIL head: no parameters named {', '.join(unknown) or '(none given)'}")
        self.head = tuple(n for n in names if any(n == w or n.startswith(w + ".") for w in wanted))
        """Names of the adapted parameters, in model order."""

    @property
    def adapted_names(self) -> tuple:
        """The head's parameters."""
        return self.head
