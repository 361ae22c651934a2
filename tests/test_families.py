"""Task families: the registry, the regression samplers' formulas and ranges, and the held-out set."""

import math

import pytest
import torch

from metakit.experiments.reports.evaluate import evaluate_algorithm
from metakit.experiments.tasks import FAMILIES, build_family, register_family
from metakit.experiments.tasks.family import held_out_generator
from metakit.experiments.tasks.regression.functions import RegressionFamily, uniform
from metakit.experiments.tasks.regression.harmonic import Harmonic
from metakit.experiments.tasks.regression.sinusoid import Sinusoid
from metakit.experiments.tasks.regression.sinusoid_line import SinusoidLine
from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.runs import load_run
from metakit.experiments.training.trainer import build_training, train


def near_bounds(values: torch.Tensor, low: float, high: float, slack: float):
    """Inside [low, high] and within ``slack`` of both ends."""
    assert values.min() >= low and values.max() <= high, (values.min(), values.max())
    assert values.min() < low + slack and values.max() > high - slack, (values.min(), values.max())


def test_sinusoid_follows_the_protocol_and_is_seeded():
    tasks = Sinusoid()
    batch = tasks.sample(2000, 10, 10, torch.Generator().manual_seed(0))
    again = tasks.sample(2000, 10, 10, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batch, again))
    assert batch.x_support.shape == (2000, 10, 1) and batch.x_query.shape == (2000, 10, 1)
    x = torch.cat([batch.x_support, batch.x_query], 1)
    y = torch.cat([batch.y_support, batch.y_query], 1)
    near_bounds(x, -5, 5, 0.01)
    # Recover amplitude and phase of each task from y = A sin(x − φ) = a sin x + b cos x.
    design = torch.stack([torch.sin(x), torch.cos(x)], -1).squeeze(-2)
    coef = torch.linalg.lstsq(design, y).solution.squeeze(-1)
    amp = coef.norm(dim=-1)
    phase = torch.atan2(-coef[:, 1], coef[:, 0])
    near_bounds(amp, 0.1 - 1e-4, 5.0 + 1e-4, 0.02)
    near_bounds(phase, -1e-4, math.pi + 1e-4, 0.01)
    torch.testing.assert_close(design @ coef.unsqueeze(-1), y, atol=1e-4, rtol=0)


def test_harmonic_follows_its_formula_and_ranges():
    family, n = Harmonic(), 4000
    batch = family.sample(n, 30, 20, torch.Generator().manual_seed(1))
    p = Harmonic().draw_tasks(n, torch.Generator().manual_seed(1))  # the same stream: the batch's tasks
    near_bounds(p["omega"], 5, 7, 0.01)
    for b in ("b1", "b2"):
        near_bounds(p[b], 0, 2 * math.pi, 0.01)
    near_bounds(p["mu"], -4, 4, 0.02)
    for a in ("a1", "a2"):
        assert abs(p[a].mean()) < 0.05 and abs(p[a].std() - 1) < 0.05
    x = torch.cat([batch.x_support, batch.x_query], 1)
    y = torch.cat([batch.y_support, batch.y_query], 1)
    w = p["omega"]
    expected = p["a1"] * torch.sin(w * x + p["b1"]) + p["a2"] * torch.sin(2 * w * x + p["b2"])
    torch.testing.assert_close(y, expected)
    z = x - p["mu"]  # x ~ N(mu, 1) per task
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert (x.mean(1) - p["mu"].squeeze(-1)).abs().max() < 1.5


def test_sinusoid_line_follows_its_formula_ranges_and_noise():
    family, n = SinusoidLine(), 4000
    batch = family.sample(n, 30, 20, torch.Generator().manual_seed(2))
    p = SinusoidLine().draw_tasks(n, torch.Generator().manual_seed(2))
    assert 0.45 < p["is_sinusoid"].mean() < 0.55
    near_bounds(p["amplitude"], 0.1, 5, 0.02)
    near_bounds(p["phase"], 0, math.pi, 0.01)
    near_bounds(p["slope"], -3, 3, 0.01)
    near_bounds(p["intercept"], -3, 3, 0.01)
    x = torch.cat([batch.x_support, batch.x_query], 1)
    y = torch.cat([batch.y_support, batch.y_query], 1)
    near_bounds(x, -5, 5, 0.01)
    sine = p["amplitude"] * torch.sin(x - p["phase"])
    line = p["slope"] * x + p["intercept"]
    noise = y - torch.where(p["is_sinusoid"] > 0, sine, line)
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 0.3) < 0.005
    # A line task is fitted by a line up to the noise; a sinusoid task is not.
    residual = y - line
    is_line = p["is_sinusoid"].flatten() == 0
    assert residual[is_line].std() == pytest.approx(0.3, abs=0.01)
    assert residual[~is_line].std() > 1.0


@pytest.mark.parametrize("family", [Sinusoid(), Harmonic(), SinusoidLine()], ids=lambda f: type(f).__name__)
def test_held_out_set_is_independent_of_what_is_asked(family):
    a, b = family.held_out(30, 45, seed=1), family.held_out(30, 45, seed=1)
    assert torch.equal(a.x_support, b.x_support) and torch.equal(a.y_query, b.y_query)
    assert not torch.equal(a.x_support, family.held_out(30, 45, seed=2).x_support)
    five, fewer_tasks = family.held_out(30, 5, seed=1), family.held_out(12, 25, seed=1)
    # Every K-shot support set and the query set are the same whatever the largest K or the task count.
    assert torch.equal(five.batch(5).x_support, a.batch(5).x_support)
    assert torch.equal(five.batch(5).y_support, a.batch(5).y_support)
    assert torch.equal(five.x_query, a.x_query) and torch.equal(five.y_query, a.y_query)
    assert torch.equal(fewer_tasks.batch(25).x_support, a.batch(25).x_support[:12])
    assert torch.equal(fewer_tasks.y_query, a.y_query[:12])
    assert a.x_query.shape == (30, 100, 1) and a.batch(45).x_support.shape == (30, 45, 1)
    # `eval --shots 5`, `5,10` and `5,10,20` draw held_out(tasks, max(shots)): the same tasks, the same
    # 5-shot support and query sets; `--tasks 10` gives the first 10 of `--tasks 20`.
    sets = [family.held_out(20, max(shots), seed=1) for shots in ([5], [5, 10], [5, 10, 20])]
    sets.append(family.held_out(10, 20, seed=1))
    for other in sets[1:]:
        n = other.x_query.shape[0]
        assert torch.equal(other.batch(5).x_support, sets[0].batch(5).x_support[:n])
        assert torch.equal(other.batch(5).y_support, sets[0].batch(5).y_support[:n])
        assert torch.equal(other.x_query, sets[0].x_query[:n]) and torch.equal(
            other.y_query, sets[0].y_query[:n]
        )
        assert other.params.keys() == sets[0].params.keys()
        for key, value in other.params.items():
            assert torch.equal(value, sets[0].params[key][:n]), key


def test_held_out_streams_never_coincide_with_training_streams():
    seeds = {held_out_generator(seed, task, stream).initial_seed() for seed in (0, 1, 2**32 - 1)
             for task in (0, 1, 599) for stream in (0, 1, 2)}  # fmt: skip
    assert len(seeds) == 27 and min(seeds) >= 2**31 and max(seeds) < 2**32  # training uses --seed < 2**31
    held = Sinusoid().held_out(50, 10, seed=0)
    for seed in range(3):
        train_tasks = Sinusoid().draw_tasks(50, torch.Generator().manual_seed(seed))
        assert not torch.isin(held.params["amplitude"], train_tasks["amplitude"]).any()
    with pytest.raises(ValueError):
        held_out_generator(2**32, 0, 0)


def training_tasks(task: str, seed: int, batches: int) -> dict:
    """Each task parameter's values over the first ``batches`` meta-batches of a training run's task
    stream, checked to be the stream the trainer samples."""
    config = TrainConfig(task=task, seed=seed, meta_batch=10, iterations=3, device="cpu", compile="off")
    training = build_training(config)
    family = training.family
    replay = torch.Generator().manual_seed(seed)
    drawn = []
    for _ in range(batches):
        params = family.draw_tasks(config.meta_batch, replay)
        x, _ = family.draw_points(params, config.shots + config.query, replay)
        assert torch.equal(training.sample().x_support, x[:, : config.shots])
        drawn.append(params)
    return {key: torch.cat([p[key] for p in drawn]) for key in drawn[0]}


@pytest.mark.parametrize("task", ["sinusoid", "harmonic", "sinusoid-line"])
def test_held_out_tasks_are_none_of_the_training_tasks(task):
    family = FAMILIES.get(task)()
    held_out = {eval_seed: family.held_out(20, 5, seed=eval_seed).params for eval_seed in (0, 1)}
    for seed in range(4):
        trained = training_tasks(task, seed, batches=3)
        for eval_seed, held in held_out.items():
            for key, values in held.items():  # continuous draws: a shared value means a shared stream
                if key != "is_sinusoid":
                    assert not torch.isin(values, trained[key]).any(), (key, eval_seed, seed)


def test_registry_lists_names_and_rejects_unknown_ones():
    assert FAMILIES.names()[:3] == ("sinusoid", "harmonic", "sinusoid-line")
    assert {"glyphs", "omniglot"} <= set(FAMILIES.names())
    with pytest.raises(ValueError, match="unknown task family 'nope'; choose from sinusoid, harmonic"):
        FAMILIES.get("nope")
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        TrainConfig(task="nope")
    with pytest.raises(ValueError, match="already registered"):
        register_family("sinusoid", Sinusoid)


def test_config_takes_the_family_protocol_and_applies_its_rules():
    glyphs = TrainConfig(task="glyphs")
    assert (glyphs.ways, glyphs.shots, glyphs.query, glyphs.inner_lr, glyphs.meta_batch) == (5, 1, 1, 0.4, 32)
    assert TrainConfig(task="glyphs", shots=5).query == 5 and TrainConfig(shots=3, query=7).query == 7
    sinusoid = TrainConfig()
    assert (sinusoid.shots, sinusoid.inner_lr, sinusoid.meta_batch, sinusoid.iterations) == (
        10,
        0.01,
        25,
        70_000,
    )
    rules = [
        (dict(ways=5), "--ways does not apply to --task sinusoid"),
        (dict(rotations=True, task="harmonic"), "--rotations does not apply"),
        (dict(task="omniglot"), "--task omniglot needs --data-root"),
        (dict(method="reptile", backend="higher"), "does not run on --backend higher"),
        (dict(method="pretrain", multi_step_loss=True, inner_steps=2), "apply to MAML-family methods"),
        (dict(method="fomaml", first_order_until=3), "always first-order"),
        (dict(multi_step_loss=True), "needs --inner-steps of at least 2"),
        (dict(compile="on", backend="l2l"), "--compile on applies to --backend func only"),
        (dict(shots=0), "--shots must be at least 1"),
        (dict(inner_lr=float("nan")), "finite number > 0"),
        (dict(seed=2**31), "below 2\\*\\*31"),
        (dict(device="tpu"), "unknown device"),
        (dict(meta_batch=True), "meta_batch must be of type int"),
    ]
    for options, message in rules:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**options)
        with pytest.raises(ConfigError, match=message):  # the same rules for a config read from JSON
            TrainConfig.from_dict({**TrainConfig().to_dict(), "ways": None, **options})


class Line(RegressionFamily):
    """A family written in a test: y = a·x + b with a, b ~ U[−2, 2], x ~ U[−3, 3]."""

    protocol = dict(shots=5, inner_lr=0.05, inner_steps=1, meta_batch=8, meta_lr=3e-3, iterations=150)

    def draw_tasks(self, tasks, generator):
        return {
            "a": uniform((-2, 2), (tasks, 1, 1), generator),
            "b": uniform((-2, 2), (tasks, 1, 1), generator),
        }

    def draw_points(self, params, points, generator):
        x = uniform((-3, 3), (params["a"].shape[0], points, 1), generator)
        return x, self.truth(params, x)

    def truth(self, params, x):
        return params["a"] * x + params["b"]


def test_a_family_defined_outside_the_package_trains_and_evaluates(tmp_path):
    register_family("test-line", Line)
    try:
        config = TrainConfig(task="test-line", seed=4, log_every=50)
        assert (config.shots, config.iterations) == (5, 150)
        train(config, tmp_path / "run", progress=False)
        loaded, algo, _ = load_run(tmp_path / "run")
        assert loaded == config
        rows = evaluate_algorithm(algo, build_family(loaded), tasks=100, shots=[5], steps=[0, 5], seed=1)
        assert rows[1]["mse"] < 0.5 * rows[0]["mse"]
    finally:
        FAMILIES.unregister("test-line")
