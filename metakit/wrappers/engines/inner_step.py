"""The inner step over named parameters, shared by the vectorised engine and the RL objective."""

from typing import Callable, Dict

import torch
from torch.func import grad

Params = Dict[str, torch.Tensor]


def functional_inner_step(
    algo, loss_of: Callable[[Params], torch.Tensor], params: Params, step: int, first_order: bool, scale=1.0
) -> Params:
    """One step of the algorithm's inner rule: ``θ_n − scale · U_step(∇_n loss_of(θ))`` for every
    name ``n`` in ``algo.adapted_names``; the other parameters pass through unchanged.

    ``loss_of`` maps a name → tensor dict to the task's inner loss (a pure function, so that the
    step composes with ``torch.func.vmap`` and ``grad``). With ``first_order`` the gradients are
    constants of the meta-graph (first-order MAML).
    """
    names = algo.adapted_names
    chosen = {n: params[n] for n in names}
    grads = grad(lambda c: loss_of({**params, **c}))(chosen)
    if first_order:
        grads = {n: g.detach() for n, g in grads.items()}
    updates = algo.inner_updates([grads[n] for n in names], step)
    stepped = dict(params)
    for n, update in zip(names, updates):
        stepped[n] = chosen[n] - (update if scale == 1.0 else scale * update)
    return stepped
