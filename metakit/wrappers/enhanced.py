"""MAML Enhanced: MAML with Meta-Curvature and layer-specific, per-step learning rates."""

from typing import Optional, Sequence

import torch
from torch import nn

from metakit.wrappers.base import Learner, adaptable_names
from metakit.wrappers.curvature import MetaCurvatureTransform
from metakit.wrappers.lslr import LayerwiseLR
from metakit.wrappers.rules import scaled_updates


class MAMLEnhanced(Learner):
    """MAML whose inner gradient is transformed by Meta-Curvature and scaled by LSLR.

    Inner update at step s, for every parameter tensor i::

        θ_i ← θ_i − LSLR[i, s] · MC_i(∇_i L_support(θ))

    The meta-parameters (``parameters()``) are the model initialisation, the curvature matrices
    and the learning rates; one outer optimizer trains them together. Without curvature the
    transform is the identity (``--method lslr``); without layerwise rates every rate is ``lr``
    (``--method mc``); with neither this is plain MAML. Steps beyond ``inner_steps`` (longer
    adaptation at evaluation) reuse the last trained step's rates; the curvature serves every step.

    It offers learn2learn's ``clone()`` / ``adapt(loss)`` surface: a clone shares the curvature
    and rate modules with its parent, and each ``adapt`` advances its inner-step index.

    Args:
        model: any ``nn.Module``.
        lr: inner learning rate α (the initial value of every layerwise rate).
        inner_steps: number of inner steps that get their own learned rates.
        curvature: learn a :class:`MetaCurvatureTransform` per adapted parameter tensor (all but
            :class:`~metakit.wrappers.base.MetaOnly` parts).
        layerwise_lr: learn a :class:`LayerwiseLR` rate per adapted parameter tensor and step.
        first_order: do not differentiate through the inner gradients.
        rate_form: how :class:`LayerwiseLR` stores its rates: ``"signed"`` (the default, MAML++'s)
            or ``"log"`` (α = exp ρ; see :data:`~metakit.wrappers.lslr.RATE_FORMS`).
        allow_unused, allow_nograd: as in learn2learn's ``MAML`` (see
            :class:`~metakit.wrappers.base.Learner`): parameters that the support loss does not
            use, or that do not require a gradient (a frozen layer), are left unadapted; their
            curvature and rates then get no gradient. ``clone`` and ``adapt`` take them too.

    Example::

        enhanced = MAMLEnhanced(model, lr=0.01, inner_steps=1)
        learner = enhanced.clone()
        learner.adapt(loss_fn(learner(x_support), y_support))
        loss_fn(learner(x_query), y_query).backward()   # grads for model, curvature and rates
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        inner_steps: int = 1,
        curvature: bool = True,
        layerwise_lr: bool = True,
        first_order: bool = False,
        rate_form: str = "signed",
        allow_unused: Optional[bool] = None,
        allow_nograd: bool = False,
    ):
        super().__init__(model, lr, first_order, allow_unused, allow_nograd)
        self.inner_steps = inner_steps
        named = dict(model.named_parameters())
        params = [named[name] for name in adaptable_names(model)]  # those the inner loop steps
        self.curvature = nn.ModuleList(MetaCurvatureTransform(p) for p in params) if curvature else None
        self.lslr = (
            LayerwiseLR(len(params), inner_steps, lr, dtype=params[0].dtype, rate_form=rate_form)
            if layerwise_lr
            else None
        )

    def inner_updates(self, grads: Sequence[torch.Tensor], step: int) -> list:
        """The inner-loop step ``LSLR[i, step] · MC_i(g_i)`` for each gradient."""
        rates = self.lslr(step) if self.lslr is not None else [self.lr] * len(grads)
        return scaled_updates(grads, rates, self.curvature)

    def describe(self) -> str:
        """One line on the learned rates (range and mean per step) and how far the curvature
        matrices moved from the identity; '' with neither."""
        parts = []
        if self.lslr is not None:
            rates = self.lslr.values().detach()
            per_step = ", ".join(
                f"step {s}: {r.min():.4f}..{r.max():.4f} (mean {r.mean():.4f})"
                for s, r in enumerate(rates.T, 1)
            )
            parts.append(f"learned rates {per_step}")
        if self.curvature is not None:
            drift = max(
                (
                    p.detach()
                    - (torch.eye(p.shape[0], device=p.device) if p.dim() == 2 else torch.ones_like(p))
                )
                .abs()
                .max()
                .item()
                for p in self.curvature.parameters()
            )
            parts.append(f"curvature max |M − I| {drift:.4f}")
        return "; ".join(parts)
