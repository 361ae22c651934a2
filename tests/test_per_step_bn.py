"""MAML++'s per-step batch norm (``--per-step-bn``): every engine's meta-gradient against a float64
unroll written here, one weight, bias and running statistics per inner step, the last one reused
beyond the trained steps, and the running statistics recorded by training and used in evaluation."""

import pytest
import torch
import torch.nn.functional as F
from test_cli import invoke, snapshot

from metakit.experiments.tasks import FAMILIES, register_family
from metakit.experiments.tasks.vision.convnet import conv_net
from metakit.experiments.tasks.vision.episodes import ImageEpisodes
from metakit.experiments.tasks.vision.image_sets import ClassImages
from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.trainer import build_training
from metakit.wrappers import MAML, TaskBatch, VectorizedEngine
from metakit.wrappers.engines import meta_backward

ALPHA, EPS = 0.3, 1e-5
CONVS, NORMS, HEAD = ("0", "4"), ("1", "5"), "9"  # layer indices of the two-block conv net
ADAPTED = [f"{layer}.{kind}" for layer in (*CONVS, HEAD) for kind in ("weight", "bias")]


def tiny_net(steps: int, seed: int = 0) -> torch.nn.Module:
    """A float64 two-block conv net (3 filters, 8×8 images, 3 ways) with per-step batch norm whose
    entries differ (each step's weight and bias drawn apart)."""
    torch.manual_seed(seed)
    model = conv_net(ways=3, in_channels=1, image_size=8, channels=3, blocks=2, per_step_bn=steps).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for norm in NORMS:
            for kind in ("weight", "bias"):
                p = model.get_parameter(f"{norm}.{kind}")
                p.add_(0.4 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def image_batch(tasks: int = 2, ways: int = 3, shots: int = 2, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    images = lambda: torch.randn(tasks, ways * shots, 1, 8, 8, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(images(), labels, images(), labels)


def reference_logits(p: dict, x, step: int, running=None, seen=None):
    """The conv net written out: conv, batch norm with entry ``min(step, K)`` (the batch's
    statistics, or ``running[norm] = (means, variances)`` per entry), ReLU, max-pool; then the
    linear head. ``seen`` collects each batch norm's input."""
    entries = p[f"{NORMS[0]}.weight"].shape[0]
    k = min(step, entries - 1)
    for conv, norm in zip(CONVS, NORMS):
        x = F.conv2d(x, p[f"{conv}.weight"], p[f"{conv}.bias"], padding=1)
        if seen is not None:
            seen.append(x)
        if running is None:
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        else:
            mean, var = running[norm][0][k], running[norm][1][k]
        shape = (1, -1, 1, 1)
        x = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + EPS)
        x = x * p[f"{norm}.weight"][k].view(shape) + p[f"{norm}.bias"][k].view(shape)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), p[f"{HEAD}.weight"], p[f"{HEAD}.bias"])


def reference_adapt(p: dict, x, y, steps: int, create_graph: bool, running=None) -> list:
    """The parameters after 0, 1, …, ``steps`` SGD steps of rate α on the conv and head weights
    only (the batch norm's are meta-learned, not adapted)."""
    states = [p]
    for s in range(steps):
        fast = states[-1]
        loss = F.cross_entropy(reference_logits(fast, x, s, running), y)
        grads = torch.autograd.grad(loss, [fast[n] for n in ADAPTED], create_graph=create_graph)
        states.append({**fast, **{n: fast[n] - ALPHA * g for n, g in zip(ADAPTED, grads)}})
    return states


def reference_meta_gradient(model, batch: TaskBatch, steps: int) -> dict:
    """Second-order MAML's meta-gradient of the mean query loss after ``steps`` steps, in float64."""
    p = dict(model.named_parameters())
    total = 0.0
    for i in range(batch.num_tasks):
        fast = reference_adapt(p, batch.x_support[i], batch.y_support[i], steps, True)[-1]
        total = total + F.cross_entropy(reference_logits(fast, batch.x_query[i], steps), batch.y_query[i])
    grads = torch.autograd.grad(total / batch.num_tasks, list(p.values()))
    return {f"module.{n}": g for n, g in zip(p, grads)}


def engine_meta_gradient(algo, batch: TaskBatch, steps: int, engine: str) -> dict:
    algo.zero_grad(set_to_none=True)
    if engine.startswith("func"):
        VectorizedEngine(algo, F.cross_entropy, compile=engine == "func-compiled").meta_backward(batch, steps)
    else:
        meta_backward(algo, batch, steps, engine, loss_fn=F.cross_entropy)
    return {n: p.grad for n, p in algo.named_parameters()}


@pytest.mark.parametrize("engine", ["func", "l2l", "higher"])  # func-compiled: tests/test_compile.py
@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_equals_a_float64_unroll_on_every_engine(steps, engine):
    check_meta_gradient(steps, engine)


def check_meta_gradient(steps: int, engine: str) -> None:
    """``engine``'s MAML meta-gradient with per-step batch norm equals :func:`reference_meta_gradient`."""
    model, batch = tiny_net(steps), image_batch()
    algo = MAML(model, lr=ALPHA)
    assert set(algo.adapted_names) == set(ADAPTED)  # the batch norm is not adapted
    got = engine_meta_gradient(algo, batch, steps, engine)
    expected = reference_meta_gradient(model, batch, steps)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] is not None, name
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-12, msg=name)
    norm_grads = got[f"module.{NORMS[0]}.weight"]
    assert norm_grads.shape == (steps + 1, 3) and (norm_grads.abs().sum(1) > 0).all()  # every entry used


def test_each_inner_step_uses_its_own_batch_norm_and_later_steps_reuse_the_last():
    model, x = tiny_net(2), image_batch().x_support[0]
    for norm in NORMS:  # distinct running statistics per entry, for evaluation mode
        layer = model.get_submodule(norm)
        layer.running_mean.copy_(torch.randn(layer.running_mean.shape, dtype=torch.float64))
        layer.running_var.copy_(torch.rand(layer.running_var.shape, dtype=torch.float64) + 0.5)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        outputs = lambda: [model(x, step=s).detach() for s in range(5)]  # noqa: E731
        before = outputs()
        assert not torch.equal(before[0], before[1]) and not torch.equal(before[1], before[2])
        assert torch.equal(before[2], before[3]) and torch.equal(before[2], before[4])  # beyond: entry 2
        perturbed = "weight" if mode == "train" else "running_mean"
        for entry, changed in ((1, {1}), (2, {2, 3, 4})):
            target = getattr(model.get_submodule(NORMS[0]), perturbed)
            saved = target.detach().clone()
            with torch.no_grad():
                target[entry] += 0.5
            after = outputs()
            with torch.no_grad():
                target.copy_(saved)
            assert {s for s in range(5) if not torch.equal(after[s], before[s])} == changed, (mode, entry)


def test_a_meta_loss_after_fewer_steps_leaves_the_later_entries_without_gradient():
    model, batch = tiny_net(2), image_batch()
    got = engine_meta_gradient(MAML(model, lr=ALPHA), batch, 1, "func")
    weight = got[f"module.{NORMS[0]}.weight"]
    assert (weight[:2].abs().sum(1) > 0).all() and torch.equal(weight[2], torch.zeros(3, dtype=weight.dtype))


def test_learn2learn_clone_adapt_passes_the_step():
    model, batch = tiny_net(2), image_batch()
    learner = MAML(model, lr=ALPHA).clone()
    p = dict(model.named_parameters())
    states = reference_adapt(p, batch.x_support[0], batch.y_support[0], 2, True)
    for s in range(3):
        expected = reference_logits(states[s], batch.x_query[0], s)
        torch.testing.assert_close(learner(batch.x_query[0]), expected, rtol=1e-10, atol=1e-12)
        if s < 2:
            learner.adapt(F.cross_entropy(learner(batch.x_support[0]), batch.y_support[0]))
    assert learner.step == 2 and MAML(model, lr=ALPHA).clone().step == 0


def running_of(model) -> dict:
    return {n: (model.get_submodule(n).running_mean, model.get_submodule(n).running_var) for n in NORMS}


def test_running_statistics_move_towards_each_steps_batch_moments():
    model, batch = tiny_net(2), image_batch(tasks=3)
    algo = MAML(model, lr=ALPHA)
    moments = VectorizedEngine(algo, F.cross_entropy).step_moments(batch, 2)
    p = {n: t.detach() for n, t in model.named_parameters()}
    expected = {n: torch.zeros(3, 2, 3, dtype=torch.float64) for n in NORMS}  # [entries, mean/var, C]
    for i in range(batch.num_tasks):
        states = reference_adapt(
            {n: t.requires_grad_() for n, t in p.items()}, batch.x_support[i], batch.y_support[i], 2, False
        )
        images = torch.cat([batch.x_support[i], batch.x_query[i]])
        for s, state in enumerate(states):
            seen = []
            reference_logits({n: t.detach() for n, t in state.items()}, images, s, seen=seen)
            for norm, x in zip(NORMS, seen):
                moments_of = torch.stack([x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)])
                expected[norm][s] += moments_of / batch.num_tasks
    torch.testing.assert_close(moments, torch.cat([expected[n] for n in NORMS], 2), rtol=1e-10, atol=1e-12)
    old = {n: tuple(t.clone() for t in pair) for n, pair in running_of(model).items()}
    model.record_moments(moments)
    for norm in NORMS:
        for j, (now, was) in enumerate(zip(running_of(model)[norm], old[norm])):
            torch.testing.assert_close(now, 0.9 * was + 0.1 * expected[norm][:, j], rtol=1e-12, atol=1e-14)


def test_evaluation_normalises_with_each_steps_running_statistics_and_reuses_the_last():
    model, batch = tiny_net(2), image_batch()
    g = torch.Generator().manual_seed(9)
    for norm in NORMS:
        layer = model.get_submodule(norm)
        shape = layer.running_mean.shape
        layer.running_mean.copy_(0.3 * torch.randn(shape, generator=g, dtype=torch.float64))
        layer.running_var.copy_(torch.rand(shape, generator=g, dtype=torch.float64) + 0.5)
    running = {n: tuple(t.clone() for t in pair) for n, pair in running_of(model).items()}
    algo = MAML(model, lr=ALPHA)
    curves = VectorizedEngine(algo, F.cross_entropy).query_curves(batch, max_steps=4)["loss"]
    assert algo.training and model.training  # evaluation mode only while adapting
    p = {n: t.detach().requires_grad_() for n, t in model.named_parameters()}
    for i in range(batch.num_tasks):
        states = reference_adapt(p, batch.x_support[i], batch.y_support[i], 4, False, running)
        for s, state in enumerate(states):  # steps 3 and 4 use entry 2, the last trained
            logits = reference_logits(state, batch.x_query[i], s, running)
            expected = F.cross_entropy(logits, batch.y_query[i]).detach()
            torch.testing.assert_close(curves[s, i], expected, rtol=1e-10, atol=1e-12)


class Tiny(ImageEpisodes):
    """Random 8×8 one-channel images of a few classes, with a two-block conv net of 3 filters."""

    channels = 3
    blocks = 2
    protocol = dict(ways=3, shots=1, inner_steps=2, inner_lr=0.3, meta_batch=2, meta_lr=1e-3, iterations=2)

    def load(self):
        def images(classes, seed):
            g = torch.Generator().manual_seed(seed)
            data = torch.randint(0, 256, (classes, 6, 1, 8, 8), generator=g, dtype=torch.uint8)
            return ClassImages(data, tuple(f"c/{seed}-{c}" for c in range(classes)), ("c",) * classes)

        return {"train": images(5, 0), "validation": None, "test": images(4, 2)}


@pytest.fixture
def tiny_family():
    register_family("test-per-step-bn", Tiny)
    yield "test-per-step-bn"
    FAMILIES.unregister("test-per-step-bn")


@pytest.mark.parametrize("backend", ["func", "l2l", "higher"])
def test_a_training_step_records_the_moments_before_its_outer_step(tiny_family, backend):
    setup = build_training(TrainConfig(task=tiny_family, per_step_bn=True, backend=backend))
    model = setup.algo.module
    assert model.get_submodule(NORMS[0]).weight.shape == (3, 3)  # inner_steps 2: entries 0, 1, 2
    generator = torch.Generator()
    generator.set_state(setup.generator.get_state())
    batch = setup.family.sample(2, 1, 1, generator)
    moments = VectorizedEngine(setup.algo, F.cross_entropy).step_moments(batch, 2)
    old = {n: tuple(t.clone() for t in pair) for n, pair in running_of(model).items()}
    setup.step(0)
    split = dict(zip(NORMS, moments.split(3, dim=2)))
    for norm in NORMS:
        for j, (now, was) in enumerate(zip(running_of(model)[norm], old[norm])):
            torch.testing.assert_close(now, torch.lerp(was, split[norm][:, j].float(), 0.1), rtol=0, atol=0)
    assert model.get_submodule(NORMS[0]).weight.grad is not None  # meta-learned


def test_the_option_applies_to_conv_net_families_and_maml_family_methods(tiny_family):
    with pytest.raises(ConfigError, match="^--per-step-bn does not apply to --task sinusoid$"):
        TrainConfig(task="sinusoid", per_step_bn=True)
    for method in ("reptile", "pretrain", "protonet"):
        message = f"^--per-step-bn applies to MAML-family methods.*not {method}$"
        with pytest.raises(ConfigError, match=message):
            TrainConfig(task=tiny_family, method=method, per_step_bn=True)
    assert TrainConfig(task=tiny_family).per_step_bn is None  # off
    assert TrainConfig(task="sinusoid").per_step_bn is None
    for method in ("maml", "fomaml", "mc", "lslr", "enhanced", "metasgd", "anil"):
        assert TrainConfig(task=tiny_family, method=method, per_step_bn=True).per_step_bn


def test_the_command_line_refuses_it_for_other_families_in_one_line(tmp_path):
    result = invoke("train", "--task", "sinusoid", "--per-step-bn", "--quiet", "--out", tmp_path / "run")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == "Error: --per-step-bn does not apply to --task sinusoid\n"
    assert snapshot(tmp_path) == {}
