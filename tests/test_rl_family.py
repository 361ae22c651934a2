"""2D navigation as a task family: its config rules and one-line CLI errors, the trainer's meta-step
against the RL estimator and hand-written math, train → eval → plot through the CLI, exact resume,
and the rollout bench command. Runs are tiny (2–3 tasks, a few iterations): plumbing, not learning
(tests/test_rl_train.py checks learning)."""

import contextlib
import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner
from helpers import StopAfter

from metakit.cli import cli
from metakit.experiments.methods import METHODS
from metakit.experiments.reports.reproduce import results_markdown
from metakit.experiments.tasks import FAMILIES, build_family
from metakit.experiments.tasks.family import RETURN, held_out_generator
from metakit.experiments.tasks.rl.meta_rl import GoalBatch
from metakit.experiments.tasks.rl.nav2d_env import Nav2D
from metakit.experiments.tasks.rl.objective import sample_adaptation, sample_and_backward
from metakit.experiments.tasks.rl.policy import GaussianMLPPolicy
from metakit.experiments.tasks.rl.policy_gradient import PGConfig
from metakit.experiments.tasks.rl.rollout_bench import format_rollouts
from metakit.experiments.training import runs
from metakit.experiments.training import trainer as train_module
from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.distributed import World
from metakit.experiments.training.trainer import Interrupted, build_training, choose_compile, train
from metakit.wrappers import ANIL

# The family's environment, written out here: the authors' action units (velocity = clip(0.1·a)).
ENV = Nav2D(action_scale=0.1)
TINY = dict(task="nav2d", meta_batch=2, iterations=3, log_every=1, checkpoint_every=2)


def test_nav2d_takes_the_rl_protocol():
    config = TrainConfig(task="nav2d")
    assert (config.inner_lr, config.inner_steps, config.meta_batch, config.meta_lr) == (0.1, 1, 20, 3e-3)
    assert config.iterations == 300 and config.shots is None and config.query is None
    family = build_family(config)
    assert family.env == ENV and family.training.trajectories == 20 and family.evaluation.trajectories == 40
    # --compile auto never compiles RL, however long the run.
    assert not choose_compile(TrainConfig(task="nav2d", iterations=10**9), family, torch.device("cpu"))


def test_nav2d_config_rules():
    rules = [
        (dict(shots=5), "--shots does not apply to --task nav2d"),
        (dict(query=5), "--query does not apply to --task nav2d"),
        (dict(ways=5), "--ways does not apply to --task nav2d"),
        (dict(method="reptile"), "--method reptile does not apply to --task nav2d"),
        (dict(backend="l2l"), "--task nav2d runs on --backend func only"),
        (dict(compile="on"), "--compile on does not apply to --task nav2d"),
        (dict(multi_step_loss=True, inner_steps=2), "--multi-step-loss does not apply to --task nav2d"),
    ]
    for options, message in rules:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(task="nav2d", **options)
        with pytest.raises(ConfigError, match=message):  # the same rules for a run's config.json
            TrainConfig.from_dict({**TrainConfig(task="nav2d").to_dict(), **options})
    rl_methods = [name for name in METHODS.names() if METHODS.get(name).rl]
    assert "reptile" not in rl_methods and {"maml", "enhanced", "pretrain"} <= set(rl_methods)
    for method in rl_methods:
        TrainConfig(task="nav2d", method=method)


@pytest.fixture(scope="module")
def nav2d_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nav2d") / "run"
    args = ["train", "--quiet", "--out", str(run_dir)]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "trained maml on nav2d for 3 iterations" in result.output and "eager func engine" in result.output
    return run_dir


def test_cli_train_logs_minus_the_post_update_return(nav2d_run):
    records = [json.loads(line) for line in (nav2d_run / runs.METRICS).read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    # meta_loss = −(mean return of the post-update episodes): positive, at most 100 steps × ~1.5 away.
    assert all(0 < r["meta_loss"] < 150 and r["engine"] == "func" for r in records)


def test_cli_eval_rows_are_held_out_returns_with_their_ci(nav2d_run):
    result = CliRunner().invoke(
        cli, ["eval", str(nav2d_run), "--tasks", "3", "--steps", "0,1,3", "--seed", "7", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert [sorted(r) for r in rows] == [["ci95", "return", "steps", "tasks"]] * 3
    assert [(r["steps"], r["tasks"]) for r in rows] == [(0, 3), (1, 3), (3, 3)]

    # Independently: goal t from hash stream (7, t, 0), episode noise from (7, 0, 1), 40 episodes per
    # step, α then α/2 (the paper's schedule), mean and 1.96·s/√n over tasks computed with numpy.
    _, algo, _ = runs.load_run(nav2d_run)
    goals = torch.cat([ENV.sample_tasks(1, held_out_generator(7, t, 0)) for t in range(3)])
    assert not any(
        torch.equal(g, h) for g in goals for h in ENV.sample_tasks(20, torch.Generator().manual_seed(0))
    )
    halve = lambda k: 1.0 if k == 0 else 0.5  # noqa: E731
    sampled = sample_adaptation(
        algo, ENV, goals, 3, held_out_generator(7, 0, 1), PGConfig(trajectories=40), halve
    )
    curve = torch.stack([t.episode_returns().mean(1) for t in sampled.trajectories])
    for row in rows:
        per_task = curve[row["steps"]].double().numpy()
        assert math.isclose(row["return"], per_task.mean(), rel_tol=1e-9)
        assert math.isclose(row["ci95"], 1.96 * per_task.std(ddof=1) / math.sqrt(3), rel_tol=1e-9)

    table = CliRunner().invoke(cli, ["eval", str(nav2d_run), "--tasks", "3", "--steps", "0", "--seed", "7"])
    assert table.exit_code == 0 and "return" in table.output.splitlines()[1]
    assert f"{rows[0]['return']:.2f}" in table.output.splitlines()[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--task", "nav2d", "--shots", "5"], "--shots does not apply to --task nav2d"),
        (["train", "--task", "nav2d", "--query", "5"], "--query does not apply to --task nav2d"),
        (["train", "--task", "nav2d", "--method", "reptile"], "--method reptile does not apply"),
        (["train", "--task", "nav2d", "--backend", "higher"], "--backend func only"),
        (["train", "--task", "nav2d", "--compile", "on"], "--compile on does not apply"),
        (["eval", "RUN", "--shots", "5"], "--shots does not apply to reinforcement-learning runs"),
        (["plot", "RUN", "--shots", "5"], "--shots does not apply to reinforcement-learning runs"),
        (["bench", "--task", "nav2d", "--meta-batch", "5"], "drop --meta-batch"),
        (["bench", "--task", "halfcheetah-dir"], "baseline for nav2d only, not halfcheetah-dir"),
        (["reproduce", "nav2d", "--methods", "reptile", "--out", "OUT"], "--method reptile does not apply"),
    ],
)
def test_options_that_mean_nothing_for_rl_are_one_line_errors(args, message, nav2d_run, tmp_path):
    args = [str(nav2d_run) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "new")] if args[0] == "train" else args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "new").exists()


def test_cli_plot_draws_returns_and_paths(nav2d_run, tmp_path):
    result = CliRunner().invoke(cli, ["plot", str(nav2d_run), "--tasks", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("return_vs_steps.png", "paths.png", "training_curves.png"):
        assert (tmp_path / name).stat().st_size > 1000 and str(tmp_path / name) in result.output


def test_interrupted_nav2d_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    config = TrainConfig(**{**TINY, "iterations": 4})
    train(config, tmp_path / "reference", progress=False)
    monkeypatch.setattr(train_module, "_stop_requests", lambda: contextlib.nullcontext(StopAfter(2)))
    with pytest.raises(Interrupted, match="iteration 3"):
        train(config, tmp_path / "run", progress=False)
    monkeypatch.undo()
    assert train(config, tmp_path / "run", progress=False, resume=True)["resumed_from"] == 3
    done, reference = (torch.load(tmp_path / d / runs.CHECKPOINT) for d in ("run", "reference"))
    for key, value in reference["algorithm"].items():
        assert torch.equal(done["algorithm"][key], value), key
    assert torch.equal(done["task_rng"], reference["task_rng"])

    def metrics(name):
        lines = (tmp_path / name / runs.METRICS).read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]

    assert metrics("run") == metrics("reference")


@pytest.mark.parametrize("first_order_until", [0, 1])
def test_the_trainer_steps_on_the_rl_meta_gradient_of_its_task_stream(first_order_until):
    config = TrainConfig(task="nav2d", meta_batch=3, seed=5, first_order_until=first_order_until)
    setup = build_training(config)
    twin = copy.deepcopy(setup.algo)
    for p in setup.algo.parameters():  # a stale gradient, which the step must clear
        p.grad = torch.ones_like(p)
    loss, _, _ = setup.step(0)
    # The documented stream: goals, then one noise seed per task; the batch's episodes use the first.
    stream = torch.Generator().manual_seed(5)
    goals = ENV.sample_tasks(3, stream)
    seeds = torch.randint(0, 2**31, (3,), generator=stream)
    noise = torch.Generator().manual_seed(int(seeds[0]))
    out = sample_and_backward(
        twin, ENV, goals, noise, PGConfig(trajectories=20), 1, first_order=first_order_until > 0
    )
    for p, q in zip(setup.algo.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    assert loss == -out["returns"][-1] and torch.equal(setup.generator.get_state(), stream.get_state())


def test_processes_of_a_torchrun_job_take_slices_of_the_same_batch():
    config = TrainConfig(task="nav2d", meta_batch=3, seed=2)
    whole = build_training(config).sample()
    slices = [build_training(config, world=World(rank, 2)).sample() for rank in (0, 1)]
    assert isinstance(whole, GoalBatch) and [s.num_tasks for s in slices] == [2, 1]
    for field in range(2):
        assert torch.equal(torch.cat([s[field] for s in slices]), whole[field])


def test_pretrain_is_the_joint_policy_gradient_written_out():
    setup = build_training(TrainConfig(task="nav2d", method="pretrain", meta_batch=2, seed=3))
    twin = copy.deepcopy(setup.algo)  # the policy before the step, which samples the episodes
    theta = [p.detach().clone().requires_grad_() for p in setup.algo.module.parameters()]
    loss, _, _ = setup.step(0)
    stream = torch.Generator().manual_seed(3)
    goals = ENV.sample_tasks(2, stream)
    noise = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (2,), generator=stream)[0]))
    sampled = sample_adaptation(twin, ENV, goals, 0, noise, PGConfig(trajectories=20))
    obs, actions, adv, valid = sampled.batches[0]
    # −mean over tasks of Σ log π(a|s)·Â / #valid, with log π from torch.distributions.
    log_std, w1, b1, w2, b2, w3, b3 = theta
    mean = torch.relu(torch.relu(obs @ w1.T + b1) @ w2.T + b2) @ w3.T + b3
    logp = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    expected = torch.autograd.grad(-((logp * adv * valid).sum((1, 2)) / valid.sum((1, 2))).mean(), theta)
    for p, e in zip(setup.algo.module.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-6)
    assert math.isclose(loss, -sampled.trajectories[0].episode_returns().mean().item(), rel_tol=1e-6)


def test_anil_adapts_only_the_policys_last_layer():
    torch.manual_seed(0)
    algo = ANIL(GaussianMLPPolicy(hidden=(5, 5)).double(), lr=0.3)
    env = Nav2D(horizon=6)
    goals = env.sample_tasks(2, torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sample_adaptation(algo, env, goals, 1, torch.Generator().manual_seed(2), PGConfig(trajectories=4))
    names = [n for n, _ in algo.module.named_parameters()]
    assert algo.adapted_names == ("mean.4.weight", "mean.4.bias")
    obs, actions, adv, valid = out.batches[0]
    for i in range(2):
        params = [p.detach().clone().requires_grad_() for p in algo.module.parameters()]
        mean, log_std = torch.func.functional_call(algo.module, dict(zip(names, params)), (obs[i],))
        logp = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions[i]).sum(-1)
        grads = torch.autograd.grad(-(logp * adv[i] * valid[i]).sum() / valid[i].sum(), params)
        for k, (name, before, grad) in enumerate(zip(names, params, grads)):
            adapted = out.params[1][k][i]
            expected = before - 0.3 * grad if name.startswith("mean.4") else before
            torch.testing.assert_close(adapted, expected.detach(), rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("method", ["fomaml", "mc", "lslr", "enhanced", "metasgd", "anil"])
def test_every_rl_method_gets_a_finite_gradient_for_all_its_meta_parameters(method):
    setup = build_training(TrainConfig(task="nav2d", method=method, meta_batch=2))
    loss, _, _ = setup.step(0)
    assert math.isfinite(loss)
    for name, p in setup.algo.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bench_prints_the_batched_over_sequential_ratio():
    result = CliRunner().invoke(cli, ["bench", "--task", "nav2d", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["tasks"], report["trajectories"], report["horizon"]) == (4, 5, 100)
    assert report["batched"]["steps"] == 4 * 5 * 100
    assert report["ratio"] == report["batched"]["steps_per_s"] / report["sequential"]["steps_per_s"]
    assert f"÷ sequential: {report['ratio']:.1f}x" in format_rollouts(report)


def test_reproduction_protocol_and_its_returns_table():
    reproduction = FAMILIES.get("nav2d").reproduction
    assert set(reproduction.methods) >= {"maml", "fomaml", "enhanced", "pretrain"}
    for method in reproduction.methods:
        TrainConfig(task="nav2d", method=method)
    rows = [
        {"method": m, "variant": "", "seed": s, "steps": k, "return": value + s, "ci95": 0.5, "tasks": 40}
        for m, value in (("maml", -20.0), ("pretrain", -40.0))
        for s in (0, 1)
        for k in reproduction.reported_steps
    ]
    text = results_markdown(rows, reproduction, RETURN, 40, 300)
    assert "mean return per episode ± 95% CI" in text and "### policy-gradient steps" in text
    assert "| maml | -19.50 ± 0.50 [± 0.71] |" in text
    assert text.count("| pretrain | -39.50 ± 0.50 [± 0.71]") == 1
