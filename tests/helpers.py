"""Small models, task batches and an independent float64 MAML unroll used by the tests."""

import torch
from torch import nn

from metakit.wrappers import TaskBatch


def mlp(hidden: int = 6) -> nn.Module:
    """A tiny float64 regressor with a smooth nonlinearity (second derivatives are non-trivial)."""
    return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1)).double()


def conv_net() -> nn.Module:
    """A tiny float64 conv regressor: 3×3 conv → tanh → linear."""
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 1)).double()


def regression_batch(tasks: int, points: int, seed: int, features=(2,)) -> TaskBatch:
    """Random float64 regression tasks with inputs of shape ``features``."""
    g = torch.Generator().manual_seed(seed)
    shape = (tasks, points, *features)
    return TaskBatch(
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(tasks, points, 1, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(tasks, points, 1, generator=g, dtype=torch.float64),
    )


def unrolled_meta_loss(model, params, batch, steps, update, first_order=False):
    """Mean over tasks of the query loss after ``steps`` inner steps, written out by hand.

    ``update(grads, step) -> list`` gives the step subtracted from the parameters; nothing from
    metakit is used, so this is an independent reference.
    """
    total = 0.0
    for i in range(batch.x_support.shape[0]):
        fast = list(params)
        for s in range(steps):
            loss = (
                (
                    torch.func.functional_call(model, _named(model, fast), batch.x_support[i])
                    - batch.y_support[i]
                )
                ** 2
            ).mean()
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast = [p - u for p, u in zip(fast, update(grads, s))]
        pred = torch.func.functional_call(model, _named(model, fast), batch.x_query[i])
        total = total + ((pred - batch.y_query[i]) ** 2).mean()
    return total / batch.x_support.shape[0]


def _named(model, tensors):
    return {name: t for (name, _), t in zip(model.named_parameters(), tensors)}


def grads_of(module: nn.Module) -> list:
    """Copies of ``.grad`` of every parameter (zeros where None)."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()]


def assert_close_lists(actual, expected, rtol=1e-10, atol=1e-12):
    """Elementwise ``torch.testing.assert_close`` over two lists of tensors."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


class StopAfter:
    """A stop flag that reads true from its ``n + 1``-th check on (the loop checks once per iteration)."""

    def __init__(self, n):
        self.n, self.checks = n, 0

    def __bool__(self):
        self.checks += 1
        return self.checks > self.n


GUARDED = "; there a step is taken only where it lowers the task's support loss"
"""The end of the beyond-horizon footnote (``evaluate.horizon_note``)."""


def protocol_settings(config) -> tuple:
    """``(ways, shots, query, inner_lr, inner_steps, meta_batch)`` of a config, for the protocol tests."""
    return (config.ways, config.shots, config.query, config.inner_lr, config.inner_steps, config.meta_batch)
