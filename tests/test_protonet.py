"""Prototypical Networks: logits and meta-gradient against a float64 hand computation on every
engine, the dropped head, absent classes, the options it refuses, and a short glyph run that learns."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_lists
from test_cli import invoke

from metakit.experiments.tasks.vision.convnet import conv_net
from metakit.experiments.tasks.vision.glyph_set import load_glyphs
from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.wrappers import ProtoNet, TaskBatch, VectorizedEngine, meta_backward

WAYS, SHOTS, QUERY, TASKS = 3, 2, 3, 2


def episodes(seed: int) -> TaskBatch:
    """Float64 3-way 2-shot episodes of random 1×8×8 images, class-major labels."""
    g = torch.Generator().manual_seed(seed)
    labels = lambda n: torch.arange(WAYS).repeat_interleave(n).expand(TASKS, -1)  # noqa: E731
    return TaskBatch(
        torch.rand(TASKS, WAYS * SHOTS, 1, 8, 8, generator=g, dtype=torch.float64),
        labels(SHOTS),
        torch.rand(TASKS, WAYS * QUERY, 1, 8, 8, generator=g, dtype=torch.float64),
        labels(QUERY),
    )


def model():
    torch.manual_seed(0)
    return conv_net(WAYS, 1, 8, channels=4, blocks=2).double()


def hand_logits(body, xs, ys, xq):
    """Prototypes as per-class means of a plain forward; logits written out entry by entry."""
    support, query = body(xs), body(xq)
    prototypes = [support[ys == k].mean(0) for k in range(WAYS)]
    return torch.stack(
        [torch.stack([-sum((q[d] - c[d]) ** 2 for d in range(q.numel())) for c in prototypes]) for q in query]
    )


def test_the_head_is_dropped_and_the_embedding_is_the_flattened_conv_features():
    net = model()
    proto = ProtoNet(net, ways=WAYS)
    names = [n for n, _ in net.named_parameters()]
    assert [n for n, _ in proto.module.named_parameters()] == names[:-2]  # the head's weight and bias
    assert proto.module(torch.rand(5, 1, 8, 8, dtype=torch.float64)).shape == (5, 4 * 2 * 2)
    assert proto.module[0] is net[0]  # shared, not copied


def test_logits_equal_a_hand_computation_in_float64():
    proto, batch = ProtoNet(model(), ways=WAYS), episodes(1)
    body = proto.module
    for t in range(TASKS):
        xs, ys, xq, _ = (x[t] for x in batch)
        torch.testing.assert_close(
            proto.predict(body, xs, ys, xq), hand_logits(body, xs, ys, xq), rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("backend", ["func", "l2l", "higher"])
def test_the_meta_gradient_equals_autograd_of_the_hand_computation(backend):
    proto, batch = ProtoNet(model(), ways=WAYS), episodes(2)
    body = proto.module
    expected_loss = (
        sum(
            F.cross_entropy(
                hand_logits(body, batch.x_support[t], batch.y_support[t], batch.x_query[t]), batch.y_query[t]
            )
            for t in range(TASKS)
        )
        / TASKS
    )
    expected = torch.autograd.grad(expected_loss, list(body.parameters()))
    loss = meta_backward(proto, batch, 1, backend=backend, loss_fn=F.cross_entropy)
    assert loss == pytest.approx(expected_loss.item(), rel=1e-12)
    assert_close_lists([p.grad for p in body.parameters()], list(expected))


def test_a_class_absent_from_the_support_set_gets_minus_infinity_and_the_others_stay_finite():
    proto = ProtoNet(model(), ways=5)  # a run trained 5-way, evaluated 3-way
    batch = episodes(3)
    logits = proto.predict(proto.module, *(x[0] for x in batch[:3]))
    assert logits.shape == (WAYS * QUERY, 5)
    assert torch.isfinite(logits[:, :WAYS]).all() and (logits[:, WAYS:] == -torch.inf).all()
    curves = VectorizedEngine(proto, F.cross_entropy).query_curves(batch, 2)
    assert torch.isfinite(curves["loss"]).all()
    assert torch.equal(curves["loss"][0], curves["loss"][2])  # no inner steps: the same at every count


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(task="sinusoid"), "--method protonet needs a classification task, not --task sinusoid"),
        (dict(task="glyphs", multi_step_loss=True, inner_steps=2), "apply to MAML-family methods"),
        (dict(task="nav2d"), "needs a classification task"),
    ],
)
def test_protonet_refuses_what_does_not_apply(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(method="protonet", **options)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))


def test_a_short_glyph_run_learns_through_the_cli(tmp_path):
    root = tmp_path / "glyphs"
    load_glyphs(root)
    accuracy = {}
    for iterations in (1, 30):
        run = tmp_path / f"run{iterations}"
        args = ["--method", "protonet", "--task", "glyphs", "--data-root", root, "--iterations", iterations]
        result = invoke("train", *args, "--meta-batch", 4, "--meta-lr", 3e-3, "--quiet", "--out", run)
        assert result.exit_code == 0, result.output
        report = invoke("eval", run, "--tasks", 100, "--shots", 5, "--steps", "0,5", "--json")
        assert report.exit_code == 0, report.output
        rows = json.loads(report.stdout)["results"]
        assert rows[0]["accuracy"] == rows[1]["accuracy"]  # no inner steps
        accuracy[iterations] = rows[0]["accuracy"]
    assert accuracy[30] > accuracy[1] + 0.04 and accuracy[30] > 0.5 > 1 / 5, accuracy


def test_reproduce_refuses_protonet_on_regression_before_training_anything(tmp_path):
    result = invoke("reproduce", "sinusoid", "--methods", "maml,protonet", "--out", tmp_path / "repro")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --method protonet needs a classification task, not --task sinusoid"
    ]
    assert not (tmp_path / "repro").exists()
