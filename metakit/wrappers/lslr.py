"""Layer-specific, per-step learning rates (LSLR, MAML++)."""

import math

import torch
from torch import nn

RATE_FORMS = ("log", "signed")
"""How learned inner rates are stored: ``log``, as ρ with α = exp ρ (always positive, and an outer
step of Adam changes α by a ratio, whatever its size); ``signed``, as α itself, unconstrained in
sign (the published form of MAML++ and Meta-SGD)."""


def check_rate_form(rate_form: str, lr: float) -> None:
    """Refuse an unknown ``rate_form``, and a ``log`` form whose initial rate ``lr`` is not > 0."""
    if rate_form not in RATE_FORMS:
        raise ValueError(f"rate_form must be one of {', '.join(RATE_FORMS)}, got {rate_form!r}")
    if rate_form == "log" and not lr > 0:
        raise ValueError(f"rate_form 'log' needs an initial rate > 0, got {lr}")


def initial_rates(like: torch.Tensor, lr: float, rate_form: str) -> nn.Parameter:
    """A parameter shaped like ``like`` whose rates all start at ``lr`` in ``rate_form``."""
    check_rate_form(rate_form, lr)
    return nn.Parameter(torch.full_like(like, math.log(lr) if rate_form == "log" else float(lr)))


class LayerwiseLR(nn.Module):
    """Learnable inner-loop learning rates: one per parameter tensor and per inner step.

    The rate of parameter tensor ``i`` at inner step ``s`` scales its update. All rates start at
    ``lr``. With ``rate_form="log"`` they are stored as ``log_rates`` (α = exp ρ: positive, moved by
    ratios); with ``"signed"`` as ``rates``, unconstrained in sign, as in MAML++. Steps beyond the
    trained number (e.g. fine-tuning for longer at evaluation) reuse the last step's rate, never
    wrap around.

    Args:
        num_params: number of parameter tensors in the model (weights and biases separately).
        steps: number of inner steps the rates are learned for.
        lr: initial value of every rate.
        dtype: dtype of the rates (that of the model's parameters).
        rate_form: ``"signed"`` (the default: MAML++'s parameter, and its state-dict name) or ``"log"``.

    Reference: Antoniou et al., "How to Train Your MAML", ICLR 2019, arXiv:1810.09502.
    """

    def __init__(
        self,
        num_params: int,
        steps: int,
        lr: float,
        dtype: torch.dtype = torch.float32,
        rate_form: str = "signed",
    ):
        super().__init__()
        if num_params < 1 or steps < 1:
            raise ValueError("LayerwiseLR needs at least one parameter tensor and one step")
        self.rate_form = rate_form
        stored = initial_rates(torch.empty(num_params, steps, dtype=dtype), lr, rate_form)
        setattr(self, "log_rates" if rate_form == "log" else "rates", stored)

    def values(self) -> torch.Tensor:
        """Every rate α, ``[num_params, steps]`` (``exp`` of ``log_rates`` in the log form)."""
        return self.log_rates.exp() if self.rate_form == "log" else self.rates

    def forward(self, step: int) -> torch.Tensor:
        """The rates for inner step ``step`` (one per parameter tensor)."""
        stored = self.log_rates if self.rate_form == "log" else self.rates
        column = stored[:, min(step, stored.shape[1] - 1)]
        return column.exp() if self.rate_form == "log" else column
