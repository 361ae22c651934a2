"""Models used by the experiments."""

from torch import nn


def sinusoid_mlp(hidden: int = 40) -> nn.Module:
    """The MAML paper's regressor: 1 → hidden → hidden → 1 with ReLU, PyTorch's default init."""
    return nn.Sequential(
        nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )
