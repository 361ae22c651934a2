"""Learned inner rates stored as log α (the default of ``metakit train``) or signed α (as published)."""

import json

import pytest
import torch
from helpers import mlp, regression_batch, unrolled_meta_loss
from test_cli import TINY, invoke
from test_enhanced import kron_transform
from test_metasgd_anil import BACKENDS, assert_grads_equal, named_grads, run_backend

from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.trainer import train
from metakit.wrappers import LayerwiseLR, MAMLEnhanced, MetaSGD, VectorizedEngine


def evaluate(run_dir):
    result = invoke("eval", run_dir, "--tasks", "12", "--shots", "4", "--steps", "0,1,3", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"]


@pytest.mark.parametrize("method, key", [("lslr", "lslr.rates"), ("metasgd", "lrs.0")])
def test_a_run_saved_before_the_option_loads_signed_and_evaluates_as_before(tmp_path, method, key):
    run_dir = tmp_path / "run"
    train(TrainConfig(method=method, rates="signed", **TINY), run_dir, progress=False)
    assert key in torch.load(run_dir / "checkpoint.pt", weights_only=True)["algorithm"]
    before = evaluate(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    del config["rates"]  # what a run written before --rates existed holds
    (run_dir / "config.json").write_text(json.dumps(config))
    assert TrainConfig.from_dict(config).rates == "signed"
    assert evaluate(run_dir) == before


def test_log_rates_are_positive_exponentials_reported_as_the_rates_themselves():
    rates = LayerwiseLR(num_params=2, steps=3, lr=0.05, rate_form="log")
    assert [n for n, _ in rates.named_parameters()] == ["log_rates"]
    with torch.no_grad():
        rates.log_rates.copy_(torch.tensor([[-3.0, -2.0, 0.0], [1.0, -1.0, 0.5]]))
    for step in range(5):  # beyond the trained steps: the last step's rates
        assert torch.equal(rates(step), rates.log_rates[:, min(step, 2)].exp())
    algo = MAMLEnhanced(torch.nn.Linear(1, 1), lr=0.02, inner_steps=2, curvature=False, rate_form="log")
    assert "step 1: 0.0200..0.0200 (mean 0.0200)" in algo.describe()
    metasgd = MetaSGD(torch.nn.Linear(1, 1), lr=0.03, rate_form="log")
    names = [n for n, _ in metasgd.named_parameters()]
    assert names == ["module.weight", "module.bias", "log_lrs.0", "log_lrs.1"]
    assert "0.0300..0.0300 (mean 0.0300)" in metasgd.describe()


def test_bad_rate_forms_are_refused():
    with pytest.raises(ValueError, match="rate_form must be one of log, signed"):
        LayerwiseLR(num_params=1, steps=1, lr=0.1, rate_form="exp")
    with pytest.raises(ValueError, match="needs an initial rate > 0"):
        MetaSGD(torch.nn.Linear(1, 1), lr=-0.1, rate_form="log")
    MetaSGD(torch.nn.Linear(1, 1), lr=-0.1, rate_form="signed")  # the published form takes any sign
    with pytest.raises(ConfigError, match="unknown --rates 'exp'; choose from log, signed"):
        TrainConfig(rates="exp")
    assert TrainConfig().rates == "log"


# --- the log-rate meta-gradient against a float64 unroll and finite differences -----------------

ALPHA = 0.1


def log_enhanced(variant, steps, seed, first_order=False):
    """A float64 ``MAMLEnhanced`` with log rates (and curvature for ``enhanced``), all perturbed."""
    torch.manual_seed(seed)
    algo = MAMLEnhanced(
        mlp(), ALPHA, steps, curvature=variant == "enhanced", rate_form="log", first_order=first_order
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in algo.named_parameters():
            if not name.startswith("module."):
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return algo


def log_reference(algo, batch, steps, first_order=False):
    """Meta-loss and gradients from an unroll written here: rates exp(ρ), curvature as a Kronecker
    matrix; nothing from metakit's update rules."""
    theta = [p.detach().clone().requires_grad_() for p in algo.module.parameters()]
    mats = [
        {n: p.detach().clone().requires_grad_() for n, p in t.named_parameters()}
        for t in algo.curvature or []
    ]
    rho = algo.lslr.log_rates.detach().clone().requires_grad_()

    def update(grads, s):
        return [
            torch.exp(rho[i, s]) * (kron_transform(g, mats[i]) if mats else g) for i, g in enumerate(grads)
        ]

    loss = unrolled_meta_loss(algo.module, theta, batch, steps, update, first_order)
    leaves = {f"module.{n}": t for (n, _), t in zip(algo.module.named_parameters(), theta)}
    for i, m in enumerate(mats):
        leaves.update({f"curvature.{i}.{k}": v for k, v in m.items()})
    leaves["lslr.log_rates"] = rho
    return loss, dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("variant", ["lslr", "enhanced"])
def test_log_rate_meta_gradient_matches_a_float64_unroll(variant, steps, backend):
    algo = log_enhanced(variant, steps, seed=0)
    batch = regression_batch(tasks=3, points=4, seed=2)
    expected_loss, expected = log_reference(algo, batch, steps)
    loss = run_backend(algo, batch, steps, backend)
    assert loss == pytest.approx(expected_loss.item(), rel=1e-12)
    assert_grads_equal(named_grads(algo), expected)


@pytest.mark.parametrize("backend", ["func", "l2l", "higher"])
def test_first_order_log_rates_match_the_unroll_without_inner_second_derivatives(backend):
    algo = log_enhanced("enhanced", 2, seed=3, first_order=True)
    batch = regression_batch(tasks=2, points=4, seed=4)
    _, expected = log_reference(algo, batch, 2, first_order=True)
    run_backend(algo, batch, 2, backend)
    assert_grads_equal(named_grads(algo), expected)


def test_log_rate_model_and_curvature_gradients_match_central_finite_differences():
    algo = log_enhanced("enhanced", 2, seed=5)
    batch = regression_batch(tasks=2, points=4, seed=6)
    VectorizedEngine(algo).meta_backward(batch, 2)
    targets = [
        (algo.lslr.log_rates, (1, 0)),
        (algo.lslr.log_rates, (3, 1)),
        (algo.module[0].weight, (2, 1)),
        (algo.curvature[0].m_out, (2, 3)),
        (algo.curvature[2].m_in, (1, 4)),
    ]
    eps = 1e-6
    for tensor, index in targets:
        analytic = tensor.grad[index].item()
        losses = []
        for delta in (eps, -2 * eps, eps):  # +ε, −ε, back to the start
            with torch.no_grad():
                tensor[index] += delta
            losses.append(log_reference(algo, batch, 2)[0].item())
        assert analytic == pytest.approx((losses[0] - losses[1]) / (2 * eps), rel=1e-6, abs=1e-10)


def test_the_log_gradient_is_the_signed_gradient_times_the_rate():
    """∂L/∂ρ = α ⊙ ∂L/∂α at α = exp ρ: the same update, reparameterised (chain rule)."""
    log = log_enhanced("enhanced", 2, seed=7)
    signed = MAMLEnhanced(mlp(), ALPHA, 2, rate_form="signed")
    signed.load_state_dict(
        {
            ("lslr.rates" if k == "lslr.log_rates" else k): (v.exp() if k == "lslr.log_rates" else v)
            for k, v in log.state_dict().items()
        }
    )
    batch = regression_batch(tasks=3, points=4, seed=8)
    assert run_backend(log, batch, 2, "func") == pytest.approx(
        run_backend(signed, batch, 2, "func"), rel=1e-13
    )
    torch.testing.assert_close(log.lslr.log_rates.grad, signed.lslr.rates.grad * signed.lslr.rates.detach())
    for name, p in signed.named_parameters():
        if name != "lslr.rates":
            torch.testing.assert_close(
                dict(log.named_parameters())[name].grad, p.grad, rtol=1e-10, atol=1e-13
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_sgd_log_rate_meta_gradient_matches_a_float64_unroll(backend):
    torch.manual_seed(9)
    algo = MetaSGD(mlp(), lr=ALPHA, rate_form="log")
    g = torch.Generator().manual_seed(10)
    with torch.no_grad():
        for rho in algo.log_lrs:
            rho.add_(0.5 * torch.randn(rho.shape, generator=g, dtype=rho.dtype))
    batch = regression_batch(tasks=3, points=4, seed=11)
    theta = [p.detach().clone().requires_grad_() for p in algo.module.parameters()]
    rhos = [r.detach().clone().requires_grad_() for r in algo.log_lrs]
    update = lambda grads, s: [torch.exp(r) * g for r, g in zip(rhos, grads)]  # noqa: E731
    expected_loss = unrolled_meta_loss(algo.module, theta, batch, 2, update)
    names = [f"module.{n}" for n, _ in algo.module.named_parameters()] + [
        f"log_lrs.{i}" for i in range(len(rhos))
    ]
    expected = dict(zip(names, torch.autograd.grad(expected_loss, theta + rhos)))
    assert run_backend(algo, batch, 2, backend) == pytest.approx(expected_loss.item(), rel=1e-12)
    assert_grads_equal(named_grads(algo), expected)
    # one entry of ρ by central finite differences of the unroll
    eps, index = 1e-6, (3, 1)
    losses = []
    for delta in (eps, -2 * eps, eps):
        with torch.no_grad():
            rhos[0][index] += delta
        losses.append(unrolled_meta_loss(algo.module, theta, batch, 2, update).item())
    assert algo.log_lrs[0].grad[index].item() == pytest.approx((losses[0] - losses[1]) / (2 * eps), rel=1e-6)


def test_signed_rates_take_exactly_the_published_step_and_log_rates_the_exponential_one():
    torch.manual_seed(12)
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    for form in ("signed", "log"):
        for algo in (
            MetaSGD(mlp(), lr=ALPHA, rate_form=form),
            MAMLEnhanced(mlp(), ALPHA, 2, curvature=False, rate_form=form),
        ):
            with torch.no_grad():
                for name, p in algo.named_parameters():
                    if not name.startswith("module."):
                        p.mul_(torch.linspace(0.5, 1.5, p.numel(), dtype=p.dtype).reshape(p.shape))
            theta = [p.detach().clone() for p in algo.module.parameters()]
            grads = torch.autograd.grad(((algo(x) - y) ** 2).mean(), list(algo.module.parameters()))
            if isinstance(algo, MetaSGD):
                stored = list(algo.lrs if form == "signed" else algo.log_lrs)
            else:
                stored = list((algo.lslr.rates if form == "signed" else algo.lslr.log_rates)[:, 0])
            rates = [r.detach() if form == "signed" else r.detach().exp() for r in stored]
            learner = algo.clone()
            learner.adapt(((learner(x) - y) ** 2).mean())
            for after, t, r, g in zip(learner.module.parameters(), theta, rates, grads):
                assert torch.equal(after, t - r * g), (form, type(algo).__name__)
