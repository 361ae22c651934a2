"""Learned inner rates stored as log α (the default of ``metakit train``) or signed α (as published)."""

import json

import pytest
import torch
from test_cli import TINY, invoke

from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.trainer import train
from metakit.wrappers import LayerwiseLR, MAMLEnhanced, MetaSGD


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
