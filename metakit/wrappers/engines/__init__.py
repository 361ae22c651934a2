"""Engines: what turns an algorithm and a batch of tasks into a meta-gradient.

Every engine has ``meta_backward(batch, steps, first_order=None, step_weights=None) -> loss``:
:class:`~metakit.wrappers.engines.loop.LoopEngine` (``l2l``, ``higher``) and
:class:`~metakit.wrappers.engines.vectorized.VectorizedEngine` (``func``).
"""

from typing import Callable, Optional, Sequence

import torch.nn.functional as F

from metakit.wrappers.engines.batch import TaskBatch
from metakit.wrappers.engines.loop import LoopEngine
from metakit.wrappers.engines.vectorized import VectorizedEngine

BACKENDS = ("func", "l2l", "higher")


def make_engine(algo, loss_fn: Callable = F.mse_loss, backend: str = "func", compile: bool = False):
    """The engine of ``backend`` for ``algo`` (``compile`` applies to ``func``)."""
    if backend == "func":
        return VectorizedEngine(algo, loss_fn, compile=compile)
    return LoopEngine(algo, loss_fn, backend)


def meta_backward(
    algo,
    batch: TaskBatch,
    steps: int,
    backend: str = "l2l",
    first_order: Optional[bool] = None,
    step_weights: Optional[Sequence[float]] = None,
    loss_fn: Callable = F.mse_loss,
) -> float:
    """Accumulate the meta-gradient of ``batch`` into ``.grad`` of ``algo``'s meta-parameters on
    ``backend`` and return the mean query loss (see :meth:`LoopEngine.meta_backward`)."""
    return make_engine(algo, loss_fn, backend).meta_backward(batch, steps, first_order, step_weights)
