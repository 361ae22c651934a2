"""The "one file plus one line" promise: a method with an objective of its own (nearest class mean,
ProtoNets-like) and a family with a metric of its own, each defined here and registered with one
call, go through the real ``metakit`` entry point: train, eval, plot and bench."""

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from metakit.cli import cli
from metakit.experiments.methods import METHODS, MethodSpec, register_method
from metakit.experiments.tasks import FAMILIES, register_family
from metakit.experiments.tasks.family import Metric, SupervisedFamily, held_out_generator
from metakit.wrappers import Learner, Objective, TaskBatch, VectorizedEngine, meta_backward

WAYS = 3


class NearestMean(Learner):
    """Classify a query point by the nearest class mean of the support embeddings (squared
    Euclidean distance), as Prototypical Networks do; no gradient steps within a task."""

    objective = Objective.METRIC

    def __init__(self, model, lr, ways):
        super().__init__(model, lr)
        self.ways = ways

    def predict(self, forward, x_support, y_support, x_query):
        """Logits: minus the squared distance of each query embedding to each class mean."""
        onehot = (y_support[:, None] == torch.arange(self.ways)).to(x_support.dtype)
        means = onehot.T @ forward(x_support) / onehot.sum(0)[:, None]
        return -((forward(x_query)[:, None, :] - means[None]) ** 2).sum(-1)


ERROR = Metric("error", "error", "query error rate", percent=True, digits=1)


@dataclass(frozen=True)
class Blobs:
    """Held-out episodes (``batch(K)``: the first K support points per class)."""

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor

    def batch(self, shots):
        keep = self.y_support.shape[1] // WAYS
        index = torch.arange(self.y_support.shape[1]).view(WAYS, keep)[:, :shots].reshape(-1)
        return TaskBatch(self.x_support[:, index], self.y_support[:, index], self.x_query, self.y_query)


class BlobFamily(SupervisedFamily):
    """Tasks: three Gaussian blobs in the plane at random centres; label = blob; metric: error rate."""

    metric = ERROR
    protocol = dict(shots=3, inner_lr=0.5, inner_steps=1, meta_batch=4, meta_lr=1e-2, iterations=40)
    eval_protocol = {"shots": (1, 3), "steps": (0, 1)}

    def draw(self, tasks, per_class, generator):
        centres = 3 * torch.randn(tasks, WAYS, 1, 2, generator=generator)
        points = centres + torch.randn(tasks, WAYS, per_class, 2, generator=generator)
        labels = torch.arange(WAYS).repeat_interleave(per_class).expand(tasks, -1)
        return points.flatten(1, 2), labels

    def sample(self, tasks, shots, query, generator):
        x, y = self.draw(tasks, shots + query, generator)
        x, y = x.view(tasks, WAYS, -1, 2), y.view(tasks, WAYS, -1)
        return TaskBatch(
            x[:, :, :shots].flatten(1, 2),
            y[:, :, :shots].flatten(1),
            x[:, :, shots:].flatten(1, 2),
            y[:, :, shots:].flatten(1),
        )

    def held_out(self, tasks, max_shots, seed):
        drawn = [self.sample(1, max_shots, 5, held_out_generator(seed, t, 0)) for t in range(tasks)]
        return Blobs(*(torch.cat([d[i] for d in drawn]) for i in range(4)))

    def build_model(self):
        return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, WAYS))

    def loss(self, prediction, target):
        return F.cross_entropy(prediction, target)

    def score(self, prediction, target):
        return (prediction.argmax(-1) != target).to(prediction.dtype).mean()


@pytest.fixture
def registered():
    register_method(
        "nearest-mean",
        MethodSpec(lambda config, model: NearestMean(model, config.inner_lr, WAYS), "nearest class mean"),
    )
    register_family("blobs", BlobFamily)
    yield
    METHODS.unregister("nearest-mean")
    FAMILIES.unregister("blobs")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_new_method_and_a_new_family_train_evaluate_plot_and_bench_through_the_cli(registered, tmp_path):
    runs = {}
    for method in ("nearest-mean", "maml"):
        runs[method] = tmp_path / method
        result = invoke("train", "--method", method, "--task", "blobs", "--quiet", "--out", runs[method])
        assert result.exit_code == 0, result.output
    report = invoke("eval", runs["nearest-mean"], "--tasks", 50, "--json")
    assert report.exit_code == 0, report.output
    rows = json.loads(report.stdout)["results"]
    assert [(r["shots"], r["steps"]) for r in rows] == [(1, 0), (1, 1), (3, 0), (3, 1)]
    # no gradient steps: every step count gives the same predictions; the trained means beat chance
    assert rows[0]["error"] == rows[1]["error"] and rows[2]["error"] < 0.3 < 2 / 3
    table = invoke("eval", runs["nearest-mean"], "--tasks", 50)
    assert table.stdout.splitlines()[1].split()[2] == "error"
    assert f"{100 * rows[2]['error']:.1f}%" in table.stdout
    plot = invoke("plot", runs["nearest-mean"], runs["maml"], "--tasks", 10, "--out", tmp_path / "plots")
    assert plot.exit_code == 0, plot.output
    drawn = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert drawn == ["error_vs_steps.png", "training_curves.png"]
    bench = invoke(
        "bench", "--task", "blobs", "--methods", "nearest-mean", "--meta-batch", 4, "--inner-steps", 1,
        "--contenders", "func,l2l", "--repeats", 1, "--min-time", 0.01, "--json",
    )  # fmt: skip
    assert bench.exit_code == 0, bench.output
    assert {r["contender"] for r in json.loads(bench.stdout)["results"]} == {"func", "l2l"}


def test_the_metric_objective_meta_gradient_is_the_same_on_both_engines_and_matches_autograd(registered):
    torch.manual_seed(0)
    family = BlobFamily()
    batch = family.sample(3, 2, 4, torch.Generator().manual_seed(1))
    model = family.build_model().double()
    batch = TaskBatch(batch.x_support.double(), batch.y_support, batch.x_query.double(), batch.y_query)
    algo = NearestMean(model, 0.5, WAYS)
    # by hand: prototypes from a plain forward, cross-entropy of minus squared distances, task mean
    expected_loss = 0.0
    for task in range(3):
        xs, ys, xq, yq = (t[task] for t in batch)
        means = torch.stack([model(xs[ys == c]).mean(0) for c in range(WAYS)])
        logits = -(torch.cdist(model(xq), means) ** 2)
        expected_loss = expected_loss + F.cross_entropy(logits, yq) / 3
    expected = torch.autograd.grad(expected_loss, list(model.parameters()))
    for backend in ("func", "l2l"):
        algo.zero_grad()
        loss = meta_backward(algo, batch, 1, backend=backend, loss_fn=F.cross_entropy)
        assert loss == pytest.approx(expected_loss.item(), rel=1e-10)
        for p, g in zip(model.parameters(), expected):
            torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)
    curves = VectorizedEngine(algo, F.cross_entropy).query_curves(batch, 2)
    assert torch.equal(curves["loss"][0], curves["loss"][2])
