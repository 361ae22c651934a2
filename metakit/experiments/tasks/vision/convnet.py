"""The standard few-shot conv net, its buffer-free batch norm, and classification accuracy."""

from typing import Union

import torch
from torch import nn


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of correct arg-max predictions."""
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


class BatchStatNorm2d(nn.Module):
    """Batch normalisation with the batch's own statistics only (no running statistics, no buffers),
    in training and evaluation alike, as the reference MAML code uses it; learnable scale and shift.

    Written with elementary operations rather than ``F.batch_norm``: under ``torch.func.vmap``,
    the second derivative of the fused batch-norm kernel came out wrong (torch 2.14, measured
    against learn2learn, higher and a plain autograd unroll), while these operations differentiate
    correctly at every order.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each channel over the batch and spatial positions, then scale and shift."""
        mean = x.mean((0, 2, 3), keepdim=True)
        var = (x - mean).pow(2).mean((0, 2, 3), keepdim=True)
        shape = (1, -1, 1, 1)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


def conv_net(
    ways: int, in_channels: int, image_size: Union[int, tuple], channels: int = 64, blocks: int = 4
) -> nn.Module:
    """The standard few-shot conv net: ``blocks`` × (3×3 conv, batch norm, ReLU, 2×2 max-pool) on
    images of ``in_channels`` channels and ``image_size`` pixels (a side, or ``(height, width)``),
    then a linear head on the ``channels × height/2^blocks × width/2^blocks`` features (rounded down).

    Batch norm (:class:`BatchStatNorm2d`) normalises with each batch's own statistics in training
    and evaluation alike, as the reference MAML code does, so the model has no buffers.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(height, width) < 2**blocks:
        raise ValueError(
            f"{blocks} blocks halve the images {blocks} times; {height}×{width} px images are too small"
        )
    layers, depth = [], in_channels
    for _ in range(blocks):
        layers += [
            nn.Conv2d(depth, channels, 3, padding=1),
            BatchStatNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        depth, height, width = channels, height // 2, width // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * height * width, ways))
