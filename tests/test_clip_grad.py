"""``--clip-grad``: the meta-gradient is rescaled to the given total norm before the outer step."""

import pytest
import torch

from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.trainer import build_training

SMALL = dict(method="enhanced", meta_batch=4, inner_steps=2, seed=5, compile="off")


def gradient(**options):
    training = build_training(TrainConfig(**SMALL, **options))
    training.step(0)  # .grad keeps the gradient the step was taken on
    return [p.grad.clone() for p in training.algo.parameters()]


@pytest.mark.parametrize("limit", [0.05, 1e6])
def test_clipping_rescales_to_the_limit_and_only_above_it(limit):
    raw, clipped = gradient(), gradient(clip_grad=limit)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw]))
    assert 0.05 < norm < 1e6  # the two limits fall on either side of the real norm
    scale = min(1.0, limit / norm.item())
    for g, c in zip(raw, clipped):
        torch.testing.assert_close(c, g * scale, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), "1"])
def test_clip_grad_must_be_a_positive_number(value):
    with pytest.raises(ConfigError, match="clip"):
        TrainConfig(clip_grad=value)
