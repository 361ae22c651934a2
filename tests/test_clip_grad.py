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
    raw, clipped = gradient(clip_grad=0.0), gradient(clip_grad=limit)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw]))
    assert 0.05 < norm < 1e6  # the two limits fall on either side of the real norm
    scale = min(1.0, limit / norm.item())
    for g, c in zip(raw, clipped):
        torch.testing.assert_close(c, g * scale, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan"), "1"])
def test_clip_grad_must_be_a_finite_number_at_least_zero(value):
    with pytest.raises(ConfigError, match="clip"):
        TrainConfig(clip_grad=value)


def test_zero_means_no_clipping():
    raw = gradient(clip_grad=0.0)
    assert torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw])) > 1e-3
    tiny = gradient(clip_grad=1e-3)  # a clip that would bite: so 0 is not read as "clip to 0"
    for g, t in zip(raw, tiny):
        assert not torch.allclose(g, t)
    with pytest.MonkeyPatch.context() as patch:  # 0 never reaches the clipping call
        patch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: pytest.fail("clipped"))
        gradient(clip_grad=0.0)


@pytest.mark.parametrize(
    "method, steps, expected",
    [
        ("enhanced", 10, 10.0),
        ("mc", 2, 10.0),
        ("lslr", 5, 10.0),
        ("metasgd", 3, 10.0),
        ("enhanced", 1, 0.0),
        ("maml", 10, 0.0),
        ("anil", 5, 0.0),
        ("reptile", 5, 0.0),
    ],
)
def test_the_default_clip_is_for_learned_rules_over_several_steps(method, steps, expected):
    assert TrainConfig(method=method, inner_steps=steps).clip_grad == expected
    assert TrainConfig(method=method, inner_steps=steps, clip_grad=3.0).clip_grad == 3.0


def test_a_run_saved_before_the_default_clip_stays_unclipped():
    saved = TrainConfig(method="enhanced", inner_steps=10).to_dict()
    saved["clip_grad"] = None  # what runs of earlier versions stored for "no clipping"
    assert TrainConfig.from_dict(saved).clip_grad == 0.0
