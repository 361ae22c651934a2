"""A Gaussian MLP policy usable as any algorithm's ``module`` and through ``functional_call``."""

import math
from typing import Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call, vmap

LOG_2PI = math.log(2.0 * math.pi)
"""log 2π, the constant of the Gaussian log-density."""


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log-density of ``actions`` under the diagonal Gaussian N(mean, exp(log_std)²), summed over the
    last (action) dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


class GaussianMLPPolicy(nn.Module):
    """π(a | s) = N(μ_θ(s), diag(σ²)): an MLP mean and a learned, state-independent log-std.

    As in the MAML paper's RL experiments (§5.3: two hidden layers of 100 ReLU units) and the
    authors' ``MAMLGaussianMLPPolicy`` (cbfinn/maml_rl
    ``sandbox/rocky/tf/policies/maml_minimal_gauss_mlp_policy.py``): Xavier-uniform weights, zero
    biases, ``init_std = 1``, and the log-std floored at ``log(min_std)`` with ``min_std = 1e-6``.
    pytorch-maml-rl's ``NormalMLPPolicy`` makes the same choices. Every parameter, the log-std
    included, is adapted in the inner loop.

    ``forward(obs)`` returns ``(mean, log_std)`` with ``log_std`` broadcast to the mean's shape, so
    ``functional_call(policy, params, (obs,))`` gives the distribution at any parameters.
    """

    def __init__(
        self,
        observation_dim: int = 2,
        action_dim: int = 2,
        hidden: Sequence[int] = (100, 100),
        init_std: float = 1.0,
        min_std: float = 1e-6,
    ):
        super().__init__()
        layers, width = [], observation_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, action_dim))
        self.mean = nn.Sequential(*layers)
        for layer in self.mean:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))
        self.min_log_std = math.log(min_std)

    def forward(self, observations: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(mean, log_std)`` of the action distribution at each observation."""
        mean = self.mean(observations)
        return mean, self.log_std.clamp(min=self.min_log_std).expand_as(mean)


def policy_forward(module: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor], observations):
    """``module``'s ``(mean, log_std)`` at ``params`` (ordered as ``names``), for one task."""
    return functional_call(module, dict(zip(names, params)), (observations,))


def batched_policy_forward(module: nn.Module, names: Sequence[str], params, observations):
    """:func:`policy_forward` for a batch of tasks: every tensor of ``params`` and ``observations``
    has a leading task dimension (each task its own parameters)."""
    return vmap(lambda p, o: policy_forward(module, names, p, o))(tuple(params), observations)


def log_probs(module: nn.Module, names: Sequence[str], params, observations, actions) -> torch.Tensor:
    """Differentiable log π_params(actions | observations) for one task (no task dimension)."""
    mean, log_std = policy_forward(module, names, params, observations)
    return gaussian_log_prob(mean, log_std, actions)
