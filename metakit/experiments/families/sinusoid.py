"""Sinusoid regression, the MAML paper's protocol (Finn et al. 2017, §5.1)."""

import math

import torch

from metakit.experiments.families.base import RegressionFamily, Reproduction, uniform


class Sinusoid(RegressionFamily):
    """Tasks ``y = A·sin(x − φ)`` with A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]; no noise.

    Every draw takes an explicit ``torch.Generator``, so a seed fixes the whole task stream.
    """

    amplitude = (0.1, 5.0)
    phase = (0.0, math.pi)
    x_range = (-5.0, 5.0)
    reproduction = Reproduction(
        description="Sinusoid regression, MAML protocol (K = 10 in training, MLP 1-40-40-1)",
        # Reptile's inner loop needs several steps to differ from joint training (Nichol et al. use 5+).
        method_overrides={"reptile": {"inner_steps": 5}},
        # MAML paper, App. C Table 2: 5-shot sinusoid, model trained at K = 10.
        published={5: {"maml": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrain": {1: 2.41, 5: 2.23, 10: 2.19}}},
    )

    def draw_tasks(self, tasks, generator):
        """Amplitude and phase of each task."""
        return {
            "amplitude": uniform(self.amplitude, (tasks, 1, 1), generator),
            "phase": uniform(self.phase, (tasks, 1, 1), generator),
        }

    def draw_points(self, params, points, generator):
        """Inputs drawn uniformly from ``x_range`` and their noise-free targets."""
        x = uniform(self.x_range, (params["amplitude"].shape[0], points, 1), generator)
        return x, self.truth(params, x)

    def truth(self, params, x):
        """``A·sin(x − φ)``."""
        return params["amplitude"] * torch.sin(x - params["phase"])
