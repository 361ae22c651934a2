"""Pure update rules shared by every algorithm and backend.

Each function takes and returns plain sequences of tensors, so the same math serves the
learn2learn-style wrappers, the `higher` backend and the vectorised `torch.func` engine.
"""

from typing import Callable, Optional, Sequence

import torch

Tensors = Sequence[torch.Tensor]


def scaled_updates(
    grads: Tensors,
    rates: Sequence,
    transforms: Optional[Sequence[Callable]] = None,
) -> list:
    """Inner-loop updates ``rate_i · T_i(g_i)``; ``T_i`` is the identity where no transform is given."""
    if transforms is None:
        return [r * g for r, g in zip(rates, grads)]
    return [r * t(g) for r, t, g in zip(rates, transforms, grads)]


def reptile_gradient(theta: Tensors, adapted: Sequence[Tensors]) -> list:
    """Reptile's meta-gradient ``θ − mean_tasks φ̃``.

    A step of SGD with learning rate ε on this gradient is exactly θ ← θ + ε (mean φ̃ − θ).
    """
    n = len(adapted)
    return [t - sum(task[i] for task in adapted) / n for i, t in enumerate(theta)]


def multi_step_weights(iteration: int, steps: int, anneal_iterations: int) -> torch.Tensor:
    """MAML++ multi-step-loss weights for the query loss after each inner step.

    Uniform (1/steps) at iteration 0; linearly moved toward the last step until
    ``anneal_iterations``, after which all weight sits on the last step. Weights sum to one.
    """
    uniform = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    last = torch.zeros(steps, dtype=torch.float64)
    last[-1] = 1.0
    frac = 1.0 if anneal_iterations <= 0 else min(1.0, iteration / anneal_iterations)
    return (1.0 - frac) * uniform + frac * last
