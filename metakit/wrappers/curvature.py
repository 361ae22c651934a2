"""Meta-Curvature (Park & Oliva, 2019): learnable Kronecker-factored gradient transforms."""

import torch
from torch import nn


def curvature_product(grad, m_out=None, m_in=None, m_filter=None, scale=None):
    """Apply a Meta-Curvature transform to one gradient tensor (pure function).

    * bias (n,): ``scale ⊙ g``
    * weight (out, in): ``M_o · G · M_i``
    * conv weight (out, in, kh, kw): the mode product
      ``U[o, i, f] = Σ M_o[o, p] · G[p, q, r] · M_i[q, i] · M_f[f, r]`` with f = the flattened
      kernel position; with a 1×1 kernel this is the linear case.
    """
    if grad.dim() == 1:
        return scale * grad
    if grad.dim() == 2:
        return m_out @ grad @ m_in
    out_ch, in_ch = grad.shape[:2]
    flat = grad.reshape(out_ch, in_ch, -1)
    update = torch.einsum("op,pqr,qi,fr->oif", m_out, flat, m_in, m_filter)
    return update.reshape(grad.shape)


class MetaCurvatureTransform(nn.Module):
    """Learnable Meta-Curvature transform for the gradient of one parameter tensor.

    Built from the parameter it will transform; maps that parameter's gradient ``G`` to
    ``M_o · G · M_i`` (linear weights), the three-mode product with ``M_o, M_i, M_f``
    (conv weights) or ``m ⊙ g`` (biases). Initialised to identity / ones, so an untrained
    transform leaves MAML unchanged. Its signature matches learn2learn's transforms, so it plugs
    into ``learn2learn.algorithms.GBML(model, transform=MetaCurvatureTransform, lr=...)``.

    Args:
        param: the parameter whose gradients this transform will receive.
        lr: a constant factor applied to the output (learn2learn's convention; default 1).

    Example::

        transform = MetaCurvatureTransform(layer.weight)
        update = transform(layer.weight.grad)

    Reference: Park & Oliva, "Meta-Curvature", NeurIPS 2019, arXiv:1902.03356.
    """

    def __init__(self, param: torch.Tensor, lr: float = 1.0):
        super().__init__()
        self.lr = lr
        shape = tuple(param.shape)
        kwargs = {"dtype": param.dtype, "device": param.device}
        if len(shape) == 1:
            self.scale = nn.Parameter(torch.ones(shape, **kwargs))
        elif len(shape) in (2, 4):
            self.m_out = nn.Parameter(torch.eye(shape[0], **kwargs))
            self.m_in = nn.Parameter(torch.eye(shape[1], **kwargs))
            if len(shape) == 4:
                self.m_filter = nn.Parameter(torch.eye(shape[2] * shape[3], **kwargs))
        else:
            raise ValueError(
                f"MetaCurvatureTransform supports 1-D (bias), 2-D (linear) and 4-D (conv) "
                f"parameters, got shape {shape}"
            )
        self.shape = shape

    def forward(self, grad: torch.Tensor) -> torch.Tensor:
        """Return the transformed gradient (same shape as ``grad``)."""
        if tuple(grad.shape[-len(self.shape) :]) != self.shape:
            raise ValueError(f"gradient of shape {tuple(grad.shape)} given to a transform for {self.shape}")
        update = curvature_product(
            grad,
            m_out=getattr(self, "m_out", None),
            m_in=getattr(self, "m_in", None),
            m_filter=getattr(self, "m_filter", None),
            scale=getattr(self, "scale", None),
        )
        return update if self.lr == 1.0 else self.lr * update
