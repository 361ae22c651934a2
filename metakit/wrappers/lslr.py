"""Layer-specific, per-step learning rates (LSLR, MAML++)."""

import torch
from torch import nn


class LayerwiseLR(nn.Module):
    """Learnable inner-loop learning rates: one per parameter tensor and per inner step.

    ``rates[i, s]`` scales the update of parameter tensor ``i`` at inner step ``s``. All rates
    start at ``lr`` and are unconstrained in sign, as in MAML++. Steps beyond the trained number
    (e.g. fine-tuning for longer at evaluation) reuse the last step's rate, never wrap around.

    Args:
        num_params: number of parameter tensors in the model (weights and biases separately).
        steps: number of inner steps the rates are learned for.
        lr: initial value of every rate.
        dtype: dtype of the rates (that of the model's parameters).

    Reference: Antoniou et al., "How to Train Your MAML", ICLR 2019, arXiv:1810.09502.
    """

    def __init__(self, num_params: int, steps: int, lr: float, dtype: torch.dtype = torch.float32):
        super().__init__()
        if num_params < 1 or steps < 1:
            raise ValueError("LayerwiseLR needs at least one parameter tensor and one step")
        self.rates = nn.Parameter(torch.full((num_params, steps), float(lr), dtype=dtype))

    def forward(self, step: int) -> torch.Tensor:
        """The rates for inner step ``step`` (one per parameter tensor)."""
        return self.rates[:, min(step, self.rates.shape[1] - 1)]
