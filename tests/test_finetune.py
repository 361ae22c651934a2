"""Chen et al.'s fine-tuning baselines (``--method finetune``): the cosine head against a float64 hand
computation, a head over the meta-train classes trained on global labels, a frozen body and a fresh
head per task at test time (against an SGD written out by hand), the options it refuses, and a short
glyph run through train, eval, plot, reproduce and bench."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_lists
from test_cli import invoke
from test_image_families import TRAIN_CLASSES, Tagged

from metakit.experiments.tasks import FAMILIES, register_family
from metakit.experiments.tasks.vision.convnet import accuracy, conv_net
from metakit.experiments.tasks.vision.glyph_set import load_glyphs
from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.trainer import build_training
from metakit.experiments.util.errors import MetakitError
from metakit.wrappers import Finetune, TaskBatch, VectorizedEngine, meta_backward
from metakit.wrappers.finetune import (
    DAMPENING,
    HEAD_BATCH,
    HEAD_LR,
    HEAD_SEED,
    MOMENTUM,
    WEIGHT_DECAY,
    fit_heads,
)


def model(classes: int) -> torch.nn.Module:
    """A float64 conv net on 1×8×8 images with 4 features and a ``classes``-way head."""
    torch.manual_seed(0)
    return conv_net(classes, 1, 8, channels=4, blocks=2).double()


def episodes(tasks=3, ways=3, shots=2, query=3, seed=0) -> TaskBatch:
    """Float64 episodes of random 1×8×8 images, class-major labels."""
    g = torch.Generator().manual_seed(seed)
    labels = lambda n: torch.arange(ways).repeat_interleave(n).expand(tasks, -1)  # noqa: E731
    image = lambda n: torch.rand(tasks, ways * n, 1, 8, 8, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(image(shots), labels(shots), image(query), labels(query))


def hand_cosine(features, weight, scale):
    """``scale · f·w / (|f| |w|)`` written out entry by entry."""
    norm = lambda v: math.sqrt(sum(v[i].item() ** 2 for i in range(len(v))))  # noqa: E731
    return torch.tensor(
        [
            [
                scale * sum(f[i].item() * w[i].item() for i in range(len(f))) / (norm(f) * norm(w))
                for w in weight
            ]
            for f in features
        ],
        dtype=torch.float64,
    )


@pytest.mark.parametrize("classes, scale", [(250, 10.0), (5, 2.0)])  # Chen et al.'s: 10 beyond 200 classes
def test_the_cosine_head_gives_scaled_cosine_similarities(classes, scale):
    net = model(classes)
    linear = net[-1].weight.detach().clone()
    algo = Finetune(net, head="cosine")
    head = algo.module[-1]
    assert [n for n, _ in head.named_parameters()] == ["weight"] and torch.equal(head.weight, linear)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    features = algo.module[:-1](x)
    expected = hand_cosine(features, head.weight.detach(), scale)
    torch.testing.assert_close(algo(x), expected, rtol=1e-12, atol=1e-12)


@pytest.fixture
def tagged():
    """The test's tagged image family as ``--task test-tagged`` (12 meta-train classes, 3-way)."""
    register_family("test-tagged", Tagged)
    yield "test-tagged"
    FAMILIES.unregister("test-tagged")


@pytest.mark.parametrize("rotations, classes", [(False, TRAIN_CLASSES), (True, 4 * TRAIN_CLASSES)])
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_the_head_has_one_output_per_meta_train_class(tagged, head, rotations, classes):
    config = TrainConfig(method="finetune", task=tagged, head=head, rotations=rotations)
    algo = build_training(config).algo
    assert algo.classes == classes and algo.module[-1].weight.shape == (classes, Tagged.channels)
    assert algo(torch.rand(5, 1, 28, 28)).shape == (5, classes)
    other = build_training(TrainConfig(method="pretrain", task=tagged, rotations=rotations)).algo
    assert other(torch.rand(5, 1, 28, 28)).shape == (5, 3)  # the other methods keep a ways-way head


def meta_train_class(x: torch.Tensor) -> torch.Tensor:
    """The meta-train class of tagged images ``[..., 1, 28, 28]``: ``c + k·12`` for class ``c``
    (tag ``c + 1`` at pixel (0, 0)) rotated ``k`` times by 90° (the tag then sits in another corner)."""
    marker = torch.zeros(28, 28)
    marker[0, 0] = 1
    corners = [divmod(int(torch.rot90(marker, k).argmax()), 28) for k in range(4)]
    values = torch.stack([(x[..., 0, r, c] * 255).round().long() for r, c in corners], -1)
    assert ((values > 0).sum(-1) == 1).all()  # one corner holds the tag
    return values.sum(-1) - 1 + values.argmax(-1) * TRAIN_CLASSES


@pytest.mark.parametrize("rotations", [False, True])
def test_every_training_image_is_labelled_by_its_meta_train_class(tagged, rotations):
    setup = build_training(TrainConfig(method="finetune", task=tagged, rotations=rotations, meta_batch=6))
    seen = set()
    for _ in range(3):
        batch = setup.sample()
        for x, y in ((batch.x_support, batch.y_support), (batch.x_query, batch.y_query)):
            assert torch.equal(y, meta_train_class(x))
            seen |= set(y.flatten().tolist())
    assert max(seen) >= TRAIN_CLASSES * (4 if rotations else 1) - 3  # labels reach the last classes
    family = Tagged(ways=3, rotations=rotations, min_images=4)
    episodic = family.sample(6, 2, 2, torch.Generator().manual_seed(3))
    labelled = family.sample(6, 2, 2, torch.Generator().manual_seed(3), global_labels=True)
    assert torch.equal(episodic.x_support, labelled.x_support) and torch.equal(
        episodic.x_query, labelled.x_query
    )
    assert torch.equal(episodic.y_support[0], torch.tensor([0, 0, 1, 1, 2, 2]))  # the others' labels


@pytest.mark.parametrize("backend", ["func", "l2l", "higher"])
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_meta_training_is_cross_entropy_over_all_images_and_their_global_labels(backend, head):
    algo, batch = Finetune(model(7), head=head), episodes(seed=1)
    g = torch.Generator().manual_seed(2)
    batch = batch._replace(
        y_support=torch.randint(7, batch.y_support.shape, generator=g),
        y_query=torch.randint(7, batch.y_query.shape, generator=g),
    )
    x = torch.cat([batch.x_support.flatten(0, 1), batch.x_query.flatten(0, 1)])
    y = torch.cat([batch.y_support.flatten(), batch.y_query.flatten()])
    expected = F.cross_entropy(algo.module(x), y)
    grads = torch.autograd.grad(expected, list(algo.parameters()))
    loss = meta_backward(algo, batch, 1, backend=backend, loss_fn=F.cross_entropy)
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    assert_close_lists([p.grad for p in algo.parameters()], list(grads))


def test_at_test_time_the_body_is_frozen_the_trained_head_unused_and_every_task_starts_afresh():
    algo, batch = Finetune(model(12)), episodes(seed=3)
    before = {name: value.clone() for name, value in algo.state_dict().items()}
    engine = VectorizedEngine(algo, F.cross_entropy)
    curves = engine.query_curves(batch, 4, accuracy)
    assert all(torch.equal(value, before[name]) for name, value in algo.state_dict().items())
    assert all(p.grad is None for p in algo.parameters())
    assert (curves["loss"][4] != curves["loss"][0]).all()  # the fresh head was fit
    with torch.no_grad():  # the meta-training head plays no part at test time
        algo.module[-1].weight.normal_()
        algo.module[-1].bias.normal_()
    assert torch.equal(engine.query_curves(batch, 4, accuracy)["loss"], curves["loss"])
    alone = engine.query_curves(TaskBatch(*(t[2:] for t in batch)), 4, accuracy)
    torch.testing.assert_close(alone["loss"], curves["loss"][:, 2:], rtol=1e-12, atol=1e-12)
    assert torch.equal(alone["score"], curves["score"][:, 2:])


def sgd_by_hand(support, labels, query, epochs, head):
    """One task's fresh head fit written out: the draws of ``fit_heads`` (init, then one shuffle per
    pass, from ``HEAD_SEED``), mini-batches of 4, and PyTorch's SGD with momentum, dampening and
    weight decay as equations; returns the query logits after each pass."""
    n, d = support.shape
    ways = int(labels.max()) + 1
    g = torch.Generator().manual_seed(HEAD_SEED)
    bound = 1 / math.sqrt(d)
    params = [((torch.rand(ways, d, generator=g) * 2 - 1) * bound).double()]
    if head == "linear":
        params.append(((torch.rand(ways, generator=g) * 2 - 1) * bound).double())

    def logits(z, p):
        if head == "linear":
            return z @ p[0].T + p[1]
        scale = 2.0  # Baseline++ at 5 ways or fewer
        return scale * (z / z.norm(dim=1, keepdim=True)) @ (p[0] / p[0].norm(dim=1, keepdim=True)).T

    buffers, out = None, [logits(query, params)]
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, HEAD_BATCH):
            pick = order[start : start + HEAD_BATCH]
            p = [q.clone().requires_grad_() for q in params]
            grads = torch.autograd.grad(F.cross_entropy(logits(support[pick], p), labels[pick]), p)
            grads = [grad + WEIGHT_DECAY * q for grad, q in zip(grads, params)]
            if buffers is None:
                buffers = grads
            else:
                buffers = [MOMENTUM * b + (1 - DAMPENING) * grad for b, grad in zip(buffers, grads)]
            params = [q - HEAD_LR * b for q, b in zip(params, buffers)]
        out.append(logits(query, params))
    return torch.stack(out)


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_the_fresh_head_follows_sgd_written_out_for_each_task_alone(head):
    g = torch.Generator().manual_seed(4)
    support, query = (
        torch.randn(2, 10, 6, generator=g, dtype=torch.float64),
        torch.randn(2, 7, 6, generator=g),
    )
    labels = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3, 4, 4], [4, 3, 2, 1, 0, 0, 1, 2, 3, 4]])
    got = fit_heads(support, labels, query.double(), 3, head)
    assert got.shape == (4, 2, 7, 5)
    for t in range(2):
        expected = sgd_by_hand(support[t], labels[t], query[t].double(), 3, head)
        torch.testing.assert_close(got[:, t], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(method="maml", head="cosine"), "--head applies to finetune, not maml"),
        (dict(method="protonet", task="glyphs", head="linear"), "--head applies to finetune, not protonet"),
        (dict(method="finetune", task="sinusoid"), "--method finetune needs a classification task"),
        (dict(method="finetune", task="nav2d"), "--method finetune needs a classification task"),
        (
            dict(method="finetune", task="glyphs", head="tanh"),
            "unknown --head 'tanh'; choose from linear, cosine",
        ),
        (dict(method="finetune", task="glyphs", multi_step_loss=True, inner_steps=2), "MAML-family methods"),
    ],
)
def test_finetune_refuses_what_does_not_apply(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


class EpisodeLabelsOnly(Tagged):
    """A classification family whose batches are labelled within each task only."""

    def train_classes(self):
        return None


def test_a_family_without_global_labels_is_a_one_line_error():
    register_family("test-episode-labels", EpisodeLabelsOnly)
    try:
        with pytest.raises(MetakitError, match="labelled within each task only") as err:
            build_training(TrainConfig(method="finetune", task="test-episode-labels"))
        assert "\n" not in str(err.value)
    finally:
        FAMILIES.unregister("test-episode-labels")


def test_the_head_defaults_to_linear_for_finetune_only():
    assert TrainConfig(method="finetune", task="glyphs").head == "linear"
    assert TrainConfig(method="maml", task="glyphs").head is None


@pytest.fixture(scope="module")
def glyph_root(tmp_path_factory):
    """The glyph set rendered once (about 10 s) into a folder used as --data-root and cache."""
    root = tmp_path_factory.mktemp("glyphs")
    load_glyphs(root)
    return root


def test_a_short_glyph_run_learns_and_goes_through_eval_and_plot(glyph_root, tmp_path, monkeypatch):
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    args = ["--method", "finetune", "--task", "glyphs", "--data-root", glyph_root, "--iterations", 10]
    result = invoke("train", *args, "--meta-batch", 4, "--log-every", 5, "--quiet", "--out", run)
    assert result.exit_code == 0, result.output
    losses = [json.loads(line)["meta_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(abs(loss - math.log(912)) < 0.5 for loss in losses), losses  # over the 912 classes
    report = invoke("eval", run, "--tasks", 100, "--shots", 5, "--steps", "0,10", "--json")
    assert report.exit_code == 0, report.output
    rows = json.loads(report.stdout)["results"]
    assert rows[0]["accuracy"] < 0.3 < 0.5 < rows[1]["accuracy"], rows  # a fresh head: chance, then fit
    plotted = invoke("plot", run, "--tasks", 4, "--shots", 1)
    assert plotted.exit_code == 0, plotted.output
    assert (run / "plots" / "accuracy_vs_steps.png").is_file()


def test_reproduce_and_bench_take_finetune(glyph_root, tmp_path, monkeypatch):
    monkeypatch.setenv("METAKIT_CACHE", str(glyph_root))  # where reproduce and bench find the glyphs
    out = tmp_path / "repro"
    args = ["reproduce", "glyphs", "--seeds", 1, "--iterations", 2, "--tasks", 4, "--methods", "finetune"]
    result = invoke(*args, "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("trained") == 3  # 5-way 1-shot and 5-shot, 20-way 1-shot
    # variants × (the reproduction's 6 eval steps and finetune's own 100 passes)
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 3 * 7
    bench = invoke(
        "bench", "--task", "glyphs", "--quick", "--methods", "finetune", "--contenders", "func", "--json"
    )
    assert bench.exit_code == 0, bench.output
    assert [r["method"] for r in json.loads(bench.stdout)["results"]] == ["finetune"]
