"""The standard few-shot conv net, its buffer-free batch norm, MAML++'s per-step batch norm, and
classification accuracy."""

from contextlib import contextmanager
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from metakit.wrappers.base import MetaOnly


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of correct arg-max predictions."""
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


class BatchStatNorm2d(nn.Module):
    """Batch normalisation with the batch's own statistics only (no running statistics, no buffers),
    in training and evaluation alike, as the reference MAML code uses it; learnable scale and shift.

    Written with elementary operations rather than ``F.batch_norm``: under ``torch.func.vmap``,
    the second derivative of the fused batch-norm kernel came out wrong (torch 2.14, measured
    against learn2learn, higher and a plain autograd unroll), while these operations differentiate
    correctly at every order. Outside ``torch.func`` transforms the fused kernel is right:
    :func:`fused_batch_norm` switches a model's layers to it (:attr:`fused`).
    """

    fused = False
    """Normalise with torch's fused kernel (``F.batch_norm``) instead of the elementary operations:
    the same outputs and derivatives of every order, but not under ``torch.func.vmap``."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each channel over the batch and spatial positions, then scale and shift."""
        if self.fused:
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        mean, var = batch_moments(x)
        return normalise(x, mean, var, self.weight, self.bias, self.eps)


def batch_moments(x: torch.Tensor) -> tuple:
    """Mean and (biased) variance of each channel of ``x`` ``[N, C, H, W]`` over the batch and the
    spatial positions, each ``[C]``."""
    mean = x.mean((0, 2, 3), keepdim=True)
    var = (x - mean).pow(2).mean((0, 2, 3), keepdim=True)
    return mean.view(-1), var.view(-1)


def normalise(x, mean, var, weight, bias, eps: float) -> torch.Tensor:
    """``(x − mean) / sqrt(var + eps) · weight + bias`` per channel (all four ``[C]``)."""
    shape = (1, -1, 1, 1)
    return (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps) * weight.view(shape) + bias.view(shape)


@contextmanager
def fused_batch_norm(model: nn.Module):
    """A context in which every :class:`BatchStatNorm2d` of ``model`` (and of its clones made inside
    it, by learn2learn or ``higher``) runs torch's fused kernel (:attr:`BatchStatNorm2d.fused`);
    for per-task code only, never under ``torch.func.vmap``."""
    layers = [m for m in model.modules() if isinstance(m, BatchStatNorm2d)]
    for layer in layers:
        layer.fused = True
    try:
        yield model
    finally:
        for layer in layers:
            del layer.fused


class FusedNormEngine:
    """A per-task engine (``l2l``, ``higher``: one task's graph at a time, no ``vmap``) whose
    meta-gradients run the conv net's batch norm as torch's fused kernel (:func:`fused_batch_norm`):
    the same meta-gradients as the element-wise layer, in one kernel per layer.

    Args:
        engine: the per-task engine (``name`` and ``meta_backward``).
        model: the model whose batch norm layers it switches while it computes.
    """

    def __init__(self, engine, model: nn.Module):
        self.engine = engine
        self.model = model

    @property
    def name(self) -> str:
        """The wrapped engine's backend name."""
        return self.engine.name

    def meta_backward(self, *args, **kwargs) -> float:
        """The wrapped engine's ``meta_backward`` with the fused batch norm."""
        with fused_batch_norm(self.model):
            return self.engine.meta_backward(*args, **kwargs)


def with_fused_batch_norm(model: nn.Module) -> nn.Module:
    """``model`` with every :class:`BatchStatNorm2d` replaced, in place, by torch's fused
    ``nn.BatchNorm2d`` without running statistics (the layer learn2learn's own conv nets use),
    holding the same scale and shift: the same outputs and derivatives of every order, computed by
    one fused kernel, but only outside ``torch.func.vmap``. Only child layers are replaced (not a
    ``model`` that is itself one), each by its own copy; :class:`PerStepBatchNorm2d` layers are
    left as they are. Returns ``model``."""
    for name, child in model.named_children():
        if isinstance(child, BatchStatNorm2d):
            fused = nn.BatchNorm2d(child.weight.shape[0], eps=child.eps, track_running_stats=False)
            fused.to(child.weight)
            with torch.no_grad():
                fused.weight.copy_(child.weight)
                fused.bias.copy_(child.bias)
            setattr(model, name, fused)
        else:
            with_fused_batch_norm(child)
    return model


class PerStepBatchNorm2d(MetaOnly):
    """MAML++'s per-step batch norm (Antoniou et al. 2019, "How to train your MAML"): per-step
    weights and biases (BNWB) and per-step running statistics (BNRS).

    The forward of parameters that have taken ``step`` inner steps uses entry ``step`` of everything
    (entries 0 … ``steps``: the support forward of inner step s uses entry s, the query forward after
    the last step entry ``steps``); larger steps reuse the last entry. The weights and biases are
    meta-learned and not adapted in the inner loop (MAML++'s default; a
    :class:`~metakit.wrappers.base.MetaOnly`). In training mode the layer normalises with the batch's
    own statistics (as :class:`BatchStatNorm2d`); in evaluation mode (``eval()``) with entry
    ``step``'s running statistics. The forward never writes them: :meth:`record` moves them, once
    per meta-batch, by :attr:`momentum` towards the batch moments of the training tasks.

    Args:
        channels: channels of the input.
        steps: the inner steps trained (``steps + 1`` entries).
        eps: added to the variance.
    """

    momentum = 0.1
    """How far one meta-batch moves the running statistics (PyTorch's and MAML++'s default)."""

    def __init__(self, channels: int, steps: int, eps: float = 1e-5):
        super().__init__()
        if steps < 1:
            raise ValueError(f"per-step batch norm needs at least one inner step, got {steps}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(steps + 1, channels))
        self.bias = nn.Parameter(torch.zeros(steps + 1, channels))
        self.register_buffer("running_mean", torch.zeros(steps + 1, channels))
        self.register_buffer("running_var", torch.ones(steps + 1, channels))

    @property
    def steps(self) -> int:
        """The inner steps this layer has entries for (besides entry 0)."""
        return self.weight.shape[0] - 1

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Normalise with the batch's statistics (training) or entry ``step``'s running ones
        (evaluation), then scale and shift with entry ``step``'s weight and bias."""
        k = min(step, self.steps)
        if self.training:
            mean, var = batch_moments(x)
        else:
            mean, var = self.running_mean[k], self.running_var[k]
        return normalise(x, mean, var, self.weight[k], self.bias[k], self.eps)

    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """``[2, C]``: the batch mean and the unbiased variance of each channel of ``x`` (what the
        running statistics track, as PyTorch's batch norm does)."""
        mean, var = batch_moments(x)
        count = x.numel() // x.shape[1]
        return torch.stack([mean, var * count / (count - 1)])

    @torch.no_grad()
    def record(self, moments: torch.Tensor) -> None:
        """Move entries 0 … ``len(moments) − 1`` of the running statistics by :attr:`momentum`
        towards ``moments`` ``[entries, 2, C]`` (per entry: mean, unbiased variance)."""
        entries = moments.shape[0]
        for running, value in ((self.running_mean, moments[:, 0]), (self.running_var, moments[:, 1])):
            running[:entries].lerp_(value.to(running.dtype), self.momentum)


class PerStepConvNet(nn.Sequential):
    """The standard conv net with :class:`PerStepBatchNorm2d` layers: its forward takes the inner
    step (``takes_step``), which metakit's engines and learners pass (see
    :mod:`metakit.wrappers.base`)."""

    takes_step = True

    def forward(self, x: torch.Tensor, step: int = 0, moments: bool = False) -> torch.Tensor:
        """The logits of ``x`` with the batch norm of inner step ``step``; with ``moments``, instead
        the batch moments that each batch norm layer sees, ``[2, channels of all layers]`` (see
        :meth:`record_moments`)."""
        seen = []
        for layer in self:
            if isinstance(layer, PerStepBatchNorm2d):
                if moments:
                    seen.append(layer.moments(x))
                x = layer(x, step)
            else:
                x = layer(x)
        return torch.cat(seen, 1) if moments else x

    def record_moments(self, moments: torch.Tensor) -> None:
        """Update every layer's running statistics from ``moments`` ``[entries, 2, channels of all
        layers]``: entry s from the moments after s inner steps (e.g.
        :meth:`~metakit.wrappers.engines.vectorized.VectorizedEngine.step_moments`)."""
        layers = [layer for layer in self if isinstance(layer, PerStepBatchNorm2d)]
        parts = moments.split([layer.weight.shape[1] for layer in layers], dim=2)
        for layer, part in zip(layers, parts):
            layer.record(part)


def conv_net(
    ways: int,
    in_channels: int,
    image_size: Union[int, tuple],
    channels: int = 64,
    blocks: int = 4,
    per_step_bn: int = 0,
) -> nn.Module:
    """The standard few-shot conv net: ``blocks`` × (3×3 conv, batch norm, ReLU, 2×2 max-pool) on
    images of ``in_channels`` channels and ``image_size`` pixels (a side, or ``(height, width)``),
    then a linear head on the ``channels × height/2^blocks × width/2^blocks`` features (rounded down).

    Batch norm (:class:`BatchStatNorm2d`) normalises with each batch's own statistics in training
    and evaluation alike, as the reference MAML code does, so the model has no buffers. With
    ``per_step_bn`` inner steps it is MAML++'s per-step batch norm instead
    (:class:`PerStepBatchNorm2d`, in a :class:`PerStepConvNet`).
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
            PerStepBatchNorm2d(channels, per_step_bn) if per_step_bn else BatchStatNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        depth, height, width = channels, height // 2, width // 2
    net = PerStepConvNet if per_step_bn else nn.Sequential
    return net(*layers, nn.Flatten(), nn.Linear(channels * height * width, ways))
