"""The differentiable inner step shared by the learn2learn-style wrappers' ``adapt``."""

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from metakit._l2l import learn2learn as l2l


def adapt_module(
    module: nn.Module,
    loss: torch.Tensor,
    inner_updates: Callable,
    step: int,
    first_order: bool,
    adapted: Optional[Sequence[int]] = None,
) -> None:
    """One inner step of ``module`` on ``loss``, in place (learn2learn's ``update_module``).

    The gradients of the parameters at positions ``adapted`` (default: all) go through
    ``inner_updates(grads, step)``, whose steps are subtracted; the other parameters are left as
    they are. Unless ``first_order``, the step stays differentiable (second order).
    """
    params = list(module.parameters())
    adapted = range(len(params)) if adapted is None else adapted
    grads = torch.autograd.grad(
        loss, [params[i] for i in adapted], create_graph=not first_order, retain_graph=not first_order
    )
    updates = [None] * len(params)
    for i, update in zip(adapted, inner_updates(grads, step)):
        updates[i] = -update
    l2l.update_module(module, updates=updates)
