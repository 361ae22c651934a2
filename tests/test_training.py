"""The training loop and evaluation on the sinusoid benchmark."""

import copy
import json

import pytest
import torch
from helpers import assert_close_lists, grads_of
from test_cli import invoke, option_args

from metakit.experiments.reports.evaluate import evaluate_algorithm
from metakit.experiments.tasks.regression.sinusoid import Sinusoid
from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.runs import load_run
from metakit.experiments.training.trainer import build_training, train
from metakit.experiments.util.statistics import mean_ci95
from metakit.wrappers import VectorizedEngine, meta_backward
from metakit.wrappers.rules import multi_step_weights


def test_multi_step_weights_anneal_from_uniform_to_last():
    torch.testing.assert_close(multi_step_weights(0, 4, 100), torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(
        multi_step_weights(100, 4, 100), torch.tensor([0, 0, 0, 1.0], dtype=torch.float64)
    )
    mid = multi_step_weights(50, 4, 100)
    assert mid.sum().item() == pytest.approx(1.0)
    assert mid[-1] > 0.25 and (mid[:-1] < 0.25).all()


def test_mean_ci95():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(2.5)
    assert ci == pytest.approx(1.96 * values.std().item() / 2)


def test_short_maml_run_learns_to_adapt(tmp_path):
    config = TrainConfig(method="maml", iterations=400, meta_batch=10, meta_lr=3e-3, seed=3, log_every=50)
    train(config, tmp_path / "run", progress=False)
    _, algo, _ = load_run(tmp_path / "run")
    results = evaluate_algorithm(algo, Sinusoid(), tasks=200, shots=[10], steps=[0, 10], seed=1)
    before, after = results[0]["mse"], results[1]["mse"]
    assert after < 0.5 * before


def test_cosine_schedule_and_derivative_annealing_are_applied(tmp_path):
    config = TrainConfig(
        method="enhanced", iterations=20, meta_batch=2, inner_steps=2, log_every=10,
        multi_step_loss=True, msl_anneal=10, first_order_until=5, cosine_lr=True,
    )  # fmt: skip
    train(config, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [10, 20]
    assert records[0]["meta_lr"] == pytest.approx(0.5e-3)  # cosine annealing: half way at mid-run
    assert records[-1]["meta_lr"] == pytest.approx(0.0, abs=1e-12)


def test_config_rejects_unknown_method():
    with pytest.raises(ConfigError, match="unknown method 'nope'; choose from maml, fomaml"):
        TrainConfig(method="nope")


def test_tensorboard_logging_writes_the_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = TrainConfig(method="maml", iterations=6, meta_batch=2, log_every=3, tensorboard=True)
    train(config, tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("meta_loss")]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _ in logged] == [r["iteration"] for r in records] == [3, 6]
    assert [value for _, value in logged] == pytest.approx([r["meta_loss"] for r in records], rel=1e-6)


def test_diverging_adaptation_is_reported_not_averaged():
    from metakit.experiments.reports.evaluate import format_table
    from metakit.wrappers import MAML

    torch.manual_seed(0)
    algo = MAML(torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)), lr=1e3)
    results = evaluate_algorithm(algo, Sinusoid(), tasks=10, shots=[5], steps=[0, 10], seed=1)
    assert results[0]["mse"] is not None and results[1]["mse"] is None and results[1]["ci95"] is None
    assert results[0]["diverged"] == 0 and 0 < results[1]["diverged"] <= results[1]["tasks"] == 10
    table = format_table({"method": "maml", "run": "r", "results": results})
    assert "diverged" in table.splitlines()[-1]


MAML_PLUS_PLUS = dict(inner_steps=3, meta_batch=3, iterations=50, device="cpu", compile="off")


def direct_gradient(algo, family, batch, backend, first_order, weights):
    """``.grad`` of a direct meta-backward call with these settings (no trainer involved)."""
    algo.zero_grad(set_to_none=True)
    if backend == "func":
        VectorizedEngine(algo, family.loss).meta_backward(
            batch, 3, first_order=first_order, step_weights=weights
        )
    else:
        meta_backward(
            algo, batch, 3, backend, first_order=first_order, step_weights=weights, loss_fn=family.loss
        )
    return grads_of(algo)


@pytest.mark.parametrize("backend", ["func", "l2l"])
@pytest.mark.parametrize("method", ["maml", "enhanced"])
@pytest.mark.parametrize(
    "options, iteration",
    [
        (dict(first_order_until=5), 2),  # inside the first-order window
        (dict(first_order_until=5), 5),  # the first second-order iteration
        (dict(multi_step_loss=True, msl_anneal=10), 3),  # weights part way to the last step
        (dict(multi_step_loss=True, msl_anneal=10, first_order_until=5), 4),
    ],
)
def test_trainer_gradient_applies_first_order_window_and_multi_step_weights(
    backend, method, options, iteration
):
    config = TrainConfig(method=method, backend=backend, seed=5, **MAML_PLUS_PLUS, **options)
    training = build_training(config)
    reference = copy.deepcopy(training.algo)  # an identical copy, stepped by hand
    stream = training.generator.get_state()
    training.step(iteration)
    batch = training.family.sample(3, config.shots, config.query, torch.Generator().set_state(stream))

    first_order = iteration < config.first_order_until
    weights = multi_step_weights(iteration, 3, config.msl_anneal).tolist() if config.multi_step_loss else None
    expected = direct_gradient(reference, training.family, batch, backend, first_order, weights)
    assert_close_lists(grads_of(training.algo), expected, rtol=1e-6, atol=1e-9)

    # Each option changes the gradient here, so a trainer that ignored it would fail above.
    if config.first_order_until:
        other = direct_gradient(reference, training.family, batch, backend, not first_order, weights)
        assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(expected, other))
    if weights is not None:
        other = direct_gradient(reference, training.family, batch, backend, first_order, None)
        assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(expected, other))


# --- fomaml: a first-order meta-gradient through TrainConfig and the CLI --------------------------

FOMAML = dict(method="fomaml", inner_steps=2, inner_lr=0.05, meta_batch=4, shots=5, seed=7, device="cpu")


def maml_gradient(config: TrainConfig, first_order: bool) -> list:
    """The meta-gradient of ``config``'s first batch at its initialisation, written out in float64:
    per task, ``inner_steps`` SGD steps on the support MSE (their gradients treated as constants when
    ``first_order``), then the gradient of the query MSE with respect to the initialisation."""
    setup = build_training(config)
    model = copy.deepcopy(setup.algo.module).double()
    generator = torch.Generator().manual_seed(config.seed)  # the trainer's task stream
    batch = setup.family.sample(config.meta_batch, config.shots, config.query, generator)
    theta = [p.detach().double().requires_grad_() for p in model.parameters()]
    names = [name for name, _ in model.named_parameters()]

    def mse(params, x, y):
        prediction = torch.func.functional_call(model, dict(zip(names, params)), x.double())
        return ((prediction - y.double()) ** 2).mean()

    total = 0.0
    for x_s, y_s, x_q, y_q in zip(*batch):
        fast = theta
        for _ in range(config.inner_steps):
            grads = torch.autograd.grad(mse(fast, x_s, y_s), fast, create_graph=not first_order)
            fast = [p - config.inner_lr * g for p, g in zip(fast, grads)]
        total = total + mse(fast, x_q, y_q)
    return list(torch.autograd.grad(total / config.meta_batch, theta))


def relative_gap(a: list, b: list) -> float:
    """‖a − b‖ / ‖b‖ over lists of tensors."""
    return (sum(((x - y) ** 2).sum() for x, y in zip(a, b)) / sum((y**2).sum() for y in b)).sqrt().item()


@pytest.mark.parametrize("backend", ["func", "l2l", "higher"])
def test_fomaml_through_train_config_steps_on_the_first_order_meta_gradient(backend):
    config = TrainConfig(**FOMAML, backend=backend, compile="off")
    first, second = maml_gradient(config, True), maml_gradient(config, False)
    assert relative_gap(first, second) > 0.05  # the two orders differ far beyond the tolerance below
    setup = build_training(config)
    setup.step(0)
    assert relative_gap([p.grad.double() for p in setup.algo.parameters()], first) < 1e-5


def test_fomaml_through_the_cli_steps_on_the_first_order_meta_gradient(tmp_path):
    # SGD at rate 1 for one iteration: θ₁ = θ₀ − g, so the checkpoint gives the meta-gradient g.
    options = dict(FOMAML, outer_optimizer="sgd-annealed", meta_lr=1.0, iterations=1)
    result = invoke("train", *option_args(options), "--quiet", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    config = TrainConfig(**options)
    start = build_training(config).algo.state_dict()  # the seeded initialisation, as the CLI built it
    end = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["algorithm"]
    stepped = [start[name].double() - end[name].double() for name in start]
    assert relative_gap(stepped, maml_gradient(config, True)) < 1e-5
    assert relative_gap(stepped, maml_gradient(config, False)) > 0.05
