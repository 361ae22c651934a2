"""Task families. Sinusoid regression follows the MAML paper's protocol (Finn et al. 2017, §5.1)."""

import math
from dataclasses import dataclass

import torch

from metakit.wrappers.backends import TaskBatch

EVAL_QUERY_POINTS = 100


@dataclass(frozen=True)
class Sinusoid:
    """Regression tasks ``y = A·sin(x − φ)`` with A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5].

    Every draw takes an explicit ``torch.Generator``, so a seed fixes the whole task stream.
    """

    amplitude: tuple = (0.1, 5.0)
    phase: tuple = (0.0, math.pi)
    x_range: tuple = (-5.0, 5.0)

    def _uniform(self, bounds, shape, generator):
        low, high = bounds
        return low + (high - low) * torch.rand(shape, generator=generator)

    def sample_functions(self, tasks: int, generator: torch.Generator):
        """Amplitudes and phases of ``tasks`` tasks, each of shape ``[tasks, 1, 1]``."""
        amp = self._uniform(self.amplitude, (tasks, 1, 1), generator)
        phase = self._uniform(self.phase, (tasks, 1, 1), generator)
        return amp, phase

    def sample_x(self, tasks: int, points: int, generator: torch.Generator) -> torch.Tensor:
        """Inputs ``[tasks, points, 1]`` drawn uniformly from the input range."""
        return self._uniform(self.x_range, (tasks, points, 1), generator)

    @staticmethod
    def targets(x, amp, phase) -> torch.Tensor:
        """Noise-free targets of each task at ``x``."""
        return amp * torch.sin(x - phase)

    def sample(self, tasks: int, shots: int, generator: torch.Generator, query: int = 0) -> TaskBatch:
        """A meta-training batch: ``shots`` support and ``query`` (default: ``shots``) query points."""
        amp, phase = self.sample_functions(tasks, generator)
        x = self.sample_x(tasks, shots + (query or shots), generator)
        y = self.targets(x, amp, phase)
        return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])

    def held_out(self, tasks: int, max_shots: int, seed: int) -> "HeldOut":
        """A fixed evaluation set derived from ``seed`` alone (see :class:`HeldOut`)."""
        generator = torch.Generator().manual_seed(10_000 + seed)
        amp, phase = self.sample_functions(tasks, generator)
        x_support = self.sample_x(tasks, max_shots, generator)
        x_query = self.sample_x(tasks, EVAL_QUERY_POINTS, generator)
        return HeldOut(
            x_support,
            self.targets(x_support, amp, phase),
            x_query,
            self.targets(x_query, amp, phase),
            amp,
            phase,
        )


@dataclass(frozen=True)
class HeldOut:
    """Held-out tasks: the K-shot support set is the first K of ``max_shots`` support points, so
    every K sees the same tasks and the same query points."""

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    amplitude: torch.Tensor
    phase: torch.Tensor

    def batch(self, shots: int) -> TaskBatch:
        """The tasks with a ``shots``-point support set."""
        return TaskBatch(self.x_support[:, :shots], self.y_support[:, :shots], self.x_query, self.y_query)


TASKS = {"sinusoid": Sinusoid}
