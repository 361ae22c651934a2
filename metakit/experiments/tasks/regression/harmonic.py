"""Harmonic regression (Lacoste et al. 2018, "Uncertainty in Multitask Transfer Learning"), as in
torchmeta's toy ``Harmonic`` family."""

import math

import torch

from metakit.experiments.tasks.regression.functions import RegressionFamily, uniform


class Harmonic(RegressionFamily):
    """Tasks ``f(x) = a1·sin(ωx + b1) + a2·sin(2ωx + b2)``.

    Per task ω ~ U[5, 7], b1, b2 ~ U[0, 2π], a1, a2 ~ N(0, 1) and an input centre μ ~ U[−4, 4];
    the task's inputs are x ~ N(μ, 1). No target noise.
    """

    omega = (5.0, 7.0)
    offset = (0.0, 2 * math.pi)
    centre = (-4.0, 4.0)

    def draw_tasks(self, tasks, generator):
        """ω, b1, b2, a1, a2 and μ of each task."""
        shape = (tasks, 1, 1)
        return {
            "omega": uniform(self.omega, shape, generator),
            "b1": uniform(self.offset, shape, generator),
            "b2": uniform(self.offset, shape, generator),
            "a1": torch.randn(shape, generator=generator),
            "a2": torch.randn(shape, generator=generator),
            "mu": uniform(self.centre, shape, generator),
        }

    def draw_points(self, params, points, generator):
        """Inputs x ~ N(μ, 1) and their targets."""
        mu = params["mu"]
        x = mu + torch.randn((mu.shape[0], points, 1), generator=generator)
        return x, self.truth(params, x)

    def truth(self, params, x):
        """``a1·sin(ωx + b1) + a2·sin(2ωx + b2)``."""
        w = params["omega"]
        return params["a1"] * torch.sin(w * x + params["b1"]) + params["a2"] * torch.sin(
            2 * w * x + params["b2"]
        )

    def plot_range(self, params):
        """μ ± 3 (where 99.7% of the task's inputs fall)."""
        mu = params["mu"].item()
        return (mu - 3.0, mu + 3.0)
