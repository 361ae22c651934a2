"""Mixed sinusoid and line regression (Finn, Xu & Levine 2018, "Probabilistic Model-Agnostic
Meta-Learning", §5.1)."""

import math

import torch

from metakit.experiments.tasks.regression.functions import RegressionFamily, uniform


class SinusoidLine(RegressionFamily):
    """Each task is, with probability ½, a sinusoid ``A·sin(x − φ)`` (A ~ U[0.1, 5], φ ~ U[0, π])
    or a line ``a·x + b`` (a, b ~ U[−3, 3]); x ~ U[−5, 5]; targets carry Gaussian noise, σ = 0.3."""

    amplitude = (0.1, 5.0)
    phase = (0.0, math.pi)
    slope = (-3.0, 3.0)
    intercept = (-3.0, 3.0)
    x_range = (-5.0, 5.0)
    noise = 0.3

    def draw_tasks(self, tasks, generator):
        """Kind (1: sinusoid, 0: line) and both kinds' parameters of each task."""
        shape = (tasks, 1, 1)
        return {
            "is_sinusoid": (torch.rand(shape, generator=generator) < 0.5).float(),
            "amplitude": uniform(self.amplitude, shape, generator),
            "phase": uniform(self.phase, shape, generator),
            "slope": uniform(self.slope, shape, generator),
            "intercept": uniform(self.intercept, shape, generator),
        }

    def draw_points(self, params, points, generator):
        """Inputs drawn uniformly from ``x_range``; targets with N(0, σ²) noise."""
        shape = (params["slope"].shape[0], points, 1)
        x = uniform(self.x_range, shape, generator)
        return x, self.truth(params, x) + self.noise * torch.randn(shape, generator=generator)

    def truth(self, params, x):
        """The noise-free sinusoid or line."""
        sine = params["amplitude"] * torch.sin(x - params["phase"])
        line = params["slope"] * x + params["intercept"]
        return torch.where(params["is_sinusoid"] > 0, sine, line)
