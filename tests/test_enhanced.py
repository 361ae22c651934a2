"""MAML Enhanced (Meta-Curvature + layerwise per-step rates) against independent references."""

import copy
import math

import pytest
import torch
from helpers import assert_close_lists, conv_net, grads_of, mlp, regression_batch, unrolled_meta_loss

from metakit._l2l import learn2learn as l2l
from metakit.wrappers import (
    MAML,
    LayerwiseLR,
    MAMLEnhanced,
    MetaCurvatureTransform,
    Reptile,
    VectorizedEngine,
    meta_backward,
)
from metakit.wrappers.engines.batch import TaskBatch

ALPHA = 0.1
VARIANTS = {"mc": (True, False), "lslr": (False, True), "enhanced": (True, True)}


def make(model, variant, steps, first_order=False):
    curvature, layerwise = VARIANTS[variant]
    return MAMLEnhanced(
        model, ALPHA, steps, curvature=curvature, layerwise_lr=layerwise, first_order=first_order
    )


def perturb(algo, seed):
    """Non-trivial curvature matrices and rates."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if algo.curvature is not None:
            for p in algo.curvature.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        if algo.lslr is not None:
            algo.lslr.rates.mul_(
                1 + 0.5 * torch.rand(algo.lslr.rates.shape, generator=g, dtype=torch.float64)
            )


def kron_transform(grad, mats):
    """Meta-Curvature via an explicit Kronecker matrix acting on the row-major vec(G)."""
    if grad.dim() == 1:
        return mats["scale"] * grad
    m_out, m_in = mats["m_out"], mats["m_in"]
    if grad.dim() == 2:
        big = torch.kron(m_out, m_in.T.contiguous())
    else:
        big = torch.kron(m_out, torch.kron(m_in.T.contiguous(), mats["m_filter"]))
    return (big @ grad.reshape(-1)).reshape(grad.shape)


def reference(algo, batch, steps, first_order=False):
    """Meta-loss and its gradient w.r.t. all meta-parameters, from a hand-written unroll."""
    model = algo.module
    theta = [p.detach().clone().requires_grad_() for p in model.parameters()]
    mats = []
    if algo.curvature is not None:
        for t in algo.curvature:
            mats.append({n: p.detach().clone().requires_grad_() for n, p in t.named_parameters()})
    rates = None if algo.lslr is None else algo.lslr.rates.detach().clone().requires_grad_()

    def update(grads, s):
        out = []
        for i, g in enumerate(grads):
            rate = ALPHA if rates is None else rates[i, s]
            out.append(rate * (kron_transform(g, mats[i]) if mats else g))
        return out

    loss = unrolled_meta_loss(model, theta, batch, steps, update, first_order)
    leaves = theta + [m[k] for m in mats for k in sorted(m)] + ([] if rates is None else [rates])
    return loss, dict(zip(_leaf_names(algo), torch.autograd.grad(loss, leaves)))


def _leaf_names(algo):
    names = [f"module.{n}" for n, _ in algo.module.named_parameters()]
    if algo.curvature is not None:
        for i, t in enumerate(algo.curvature):
            names += [f"curvature.{i}.{n}" for n in sorted(dict(t.named_parameters()))]
    if algo.lslr is not None:
        names.append("lslr.rates")
    return names


def named_grads(algo):
    return {n: p.grad for n, p in algo.named_parameters()}


MODELS = {"mlp": (mlp, (2,)), "conv": (conv_net, (1, 5, 5))}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backend", ["l2l", "higher", "func"])
def test_meta_gradient_of_every_meta_parameter_matches_unroll(model_name, steps, variant, backend):
    build, features = MODELS[model_name]
    torch.manual_seed(0)
    algo = make(build(), variant, steps)
    perturb(algo, seed=1)
    batch = regression_batch(tasks=3, points=4, seed=2, features=features)
    ref_loss, expected = reference(algo, batch, steps)
    if backend == "func":
        loss = VectorizedEngine(algo).meta_backward(batch, steps)
    else:
        loss = meta_backward(algo, batch, steps, backend)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    actual = named_grads(algo)
    assert set(actual) == set(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_first_order_variant_matches_unroll_without_inner_second_derivatives(variant):
    torch.manual_seed(3)
    algo = make(mlp(), variant, 2, first_order=True)
    perturb(algo, seed=4)
    batch = regression_batch(tasks=2, points=4, seed=5)
    _, expected = reference(algo, batch, 2, first_order=True)
    for backend in ("l2l", "higher", "func"):
        algo.zero_grad(set_to_none=True)
        if backend == "func":
            VectorizedEngine(algo).meta_backward(batch, 2)
        else:
            meta_backward(algo, batch, 2, backend)
        for name, grad in named_grads(algo).items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-9, atol=1e-12, msg=f"{backend} {name}")


def test_finite_differences_of_rate_and_curvature_entry():
    torch.manual_seed(6)
    algo = make(mlp(), "enhanced", 2)
    perturb(algo, seed=7)
    batch = regression_batch(tasks=2, points=4, seed=8)
    meta_backward(algo, batch, 2)
    targets = [(algo.lslr.rates, (1, 0)), (algo.curvature[0].m_out, (2, 3)), (algo.curvature[1].scale, (4,))]
    eps = 1e-6
    for tensor, index in targets:
        analytic = tensor.grad[index].item()
        values = []
        for delta in (eps, -2 * eps, eps):
            with torch.no_grad():
                tensor[index] += delta
            values.append(reference(algo, batch, 2)[0].item())
        up, down = values[0], values[1]
        assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("steps", [1, 3])
def test_identity_curvature_and_constant_rates_reproduce_maml_exactly(variant, steps):
    torch.manual_seed(9)
    base = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    batch = regression_batch(tasks=3, points=5, seed=10, features=(1,))
    batch = type(batch)(*(t.float() for t in batch))
    maml, enhanced = MAML(copy.deepcopy(base), lr=ALPHA), make(copy.deepcopy(base), variant, steps)
    meta_backward(maml, batch, steps)
    meta_backward(enhanced, batch, steps)
    for a, b in zip(grads_of(maml), grads_of(enhanced.module)):
        assert torch.equal(a, b)
    learner_a, learner_b = maml.clone(), enhanced.clone()
    for _ in range(steps):
        learner_a.adapt(((learner_a(batch.x_support[0]) - batch.y_support[0]) ** 2).mean())
        learner_b.adapt(((learner_b(batch.x_support[0]) - batch.y_support[0]) ** 2).mean())
    for a, b in zip(learner_a.parameters(), learner_b.module.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("build", [mlp, conv_net])
def test_our_transform_inside_learn2learn_gbml_matches_our_wrapper(build):
    torch.manual_seed(11)
    base = build()
    features = (2,) if build is mlp else (1, 5, 5)
    task = regression_batch(tasks=1, points=4, seed=12, features=features).task(0)
    ours = make(copy.deepcopy(base), "mc", 1)
    perturb(ours, seed=13)
    gbml = l2l.algorithms.GBML(copy.deepcopy(base), transform=MetaCurvatureTransform, lr=ALPHA)
    gbml.compute_update.transforms_modules.load_state_dict(ours.curvature.state_dict())
    l2l_own = l2l.algorithms.GBML(
        copy.deepcopy(base), transform=l2l.optim.MetaCurvatureTransform, lr=ALPHA
    ).double()
    with torch.no_grad():  # learn2learn names the factors by the other side of the product
        for mine, theirs in zip(ours.curvature, l2l_own.compute_update.transforms_modules):
            if hasattr(mine, "scale"):
                theirs.mc.copy_(mine.scale)
            else:
                theirs.mc_in.copy_(mine.m_out)
                theirs.mc_out.copy_(mine.m_in)
                if hasattr(mine, "m_filter"):
                    theirs.mc_f.copy_(mine.m_filter)
    results = []
    for algo in (ours, gbml, l2l_own):
        learner = algo.clone()
        learner.adapt(((learner(task.x_support) - task.y_support) ** 2).mean())
        results.append([p.detach() for p in learner.module.parameters()])
    assert_close_lists(results[1], results[0])
    assert_close_lists(results[2], results[0])


def test_transform_refuses_unsupported_shapes_and_mismatched_gradients():
    with pytest.raises(ValueError, match="supports 1-D"):
        MetaCurvatureTransform(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="supports 1-D"):
        MetaCurvatureTransform(torch.zeros(()))
    with pytest.raises(ValueError, match="gradient of shape"):
        MetaCurvatureTransform(torch.zeros(3, 2))(torch.zeros(2, 3))


def test_transform_starts_at_identity():
    for shape in [(5,), (3, 4), (3, 2, 2, 2)]:
        grad = torch.randn(shape)
        assert torch.equal(MetaCurvatureTransform(torch.zeros(shape))(grad), grad)


def test_layerwise_rates_start_at_lr_and_reuse_last_step():
    rates = LayerwiseLR(num_params=2, steps=3, lr=0.05)
    assert torch.equal(rates(0), torch.full((2,), 0.05))
    with torch.no_grad():  # distinct rates per tensor and step
        rates.rates.copy_(torch.tensor([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]]))
    for step in range(3):
        assert torch.equal(rates(step), rates.rates[:, step])
    # Beyond the 3 trained steps, step 3's rates (index 2), not a wrap-around to steps 1 or 2.
    for step in (3, 4, 5, 10):
        assert torch.equal(rates(step), torch.tensor([0.3, 3.0])), step
    with pytest.raises(ValueError):
        LayerwiseLR(num_params=0, steps=1, lr=0.1)


@pytest.mark.parametrize("variant", ["lslr", "enhanced"])
def test_evaluation_beyond_the_trained_steps_reuses_the_last_steps_rule(variant):
    torch.manual_seed(0)
    algo = make(mlp(), variant, 3)
    perturb(algo, seed=2)
    with torch.no_grad():
        algo.lslr.rates.copy_(algo.lslr.rates * torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64))
    task = regression_batch(tasks=1, points=5, seed=3)
    curve = VectorizedEngine(algo).query_curves(task, max_steps=5)["loss"][:, 0]
    # By hand: step s uses rates[:, min(s, 2)] and the one shared curvature transform.
    reference = copy.deepcopy(algo)
    params = [p.detach().clone().requires_grad_() for p in reference.module.parameters()]
    names = [n for n, _ in reference.module.named_parameters()]

    def loss(ps, x, y):
        return ((torch.func.functional_call(reference.module, dict(zip(names, ps)), x) - y) ** 2).mean()

    expected = [loss(params, task.x_query[0], task.y_query[0]).item()]
    rates = reference.lslr.rates.detach()
    for s in range(5):
        grads = torch.autograd.grad(loss(params, task.x_support[0], task.y_support[0]), params)
        if reference.curvature is not None:
            mats = [{n: m.detach() for n, m in t.named_parameters()} for t in reference.curvature]
            grads = [kron_transform(g, m) for g, m in zip(grads, mats)]
        params = [
            (p - rates[i, min(s, 2)] * g).detach().requires_grad_()
            for i, (p, g) in enumerate(zip(params, grads))
        ]
        expected.append(loss(params, task.x_query[0], task.y_query[0]).item())
    torch.testing.assert_close(curve, torch.tensor(expected, dtype=curve.dtype), rtol=1e-10, atol=1e-12)


def test_clone_shares_meta_parameters_and_advances_step():
    algo = make(mlp(), "enhanced", 2)
    learner = algo.clone()
    assert learner.curvature is algo.curvature and learner.lslr is algo.lslr
    x = torch.randn(4, 2, dtype=torch.float64)
    learner.adapt((learner(x) ** 2).mean())
    learner.adapt((learner(x) ** 2).mean())
    assert learner.step == 2 and algo.step == 0


@pytest.mark.parametrize("variant", ["lslr", "enhanced"])
def test_beyond_the_horizon_a_step_is_kept_only_where_it_lowers_the_support_loss(variant):
    torch.manual_seed(0)
    algo = make(mlp(), variant, 1)
    perturb(algo, seed=2)
    with torch.no_grad():  # rates large enough that repeating the step overshoots on some tasks
        algo.lslr.rates.mul_(40.0)
    support = regression_batch(tasks=8, points=5, seed=3)
    batch = TaskBatch(support.x_support, support.y_support, support.x_support, support.y_support)
    engine = VectorizedEngine(algo)
    guarded = engine.query_curves(batch, max_steps=6, guard_from=1)["loss"]  # [steps + 1, tasks]
    plain = engine.query_curves(batch, max_steps=6)["loss"]
    assert torch.equal(guarded[:2], plain[:2])  # the trained step is taken as trained
    assert (plain[2:] > plain[1:-1]).any()  # unguarded, the repeated step climbs on some task
    assert (guarded[2:] <= guarded[1:-1]).all()  # guarded, the support loss never rises
    # By hand, task by task: take the step, keep it only if the support loss went down.
    reference = copy.deepcopy(algo)
    names = [n for n, _ in reference.module.named_parameters()]

    def loss(ps, x, y):
        return ((torch.func.functional_call(reference.module, dict(zip(names, ps)), x) - y) ** 2).mean()

    rates = reference.lslr.rates.detach()[:, 0]
    mats = (
        None
        if reference.curvature is None
        else [{n: m.detach() for n, m in t.named_parameters()} for t in reference.curvature]
    )
    for t in range(8):
        x, y = support.x_support[t], support.y_support[t]
        params = [p.detach().clone() for p in reference.module.parameters()]
        expected = [loss(params, x, y).item()]
        for s in range(6):
            ps = [p.clone().requires_grad_() for p in params]
            grads = torch.autograd.grad(loss(ps, x, y), ps)
            if mats is not None:
                grads = [kron_transform(g, m) for g, m in zip(grads, mats)]
            stepped = [p - rates[i] * g for i, (p, g) in enumerate(zip(params, grads))]
            if s == 0 or loss(stepped, x, y) <= loss(params, x, y):
                params = stepped
            expected.append(loss(params, x, y).item())
        assert guarded[:, t].tolist() == pytest.approx(expected, rel=1e-9), t


def test_evaluation_guards_the_steps_beyond_the_horizon_it_is_given():
    from metakit.experiments.methods import build_algorithm
    from metakit.experiments.reports.evaluate import evaluate_algorithm
    from metakit.experiments.tasks import build_family
    from metakit.experiments.training.config import TrainConfig

    config = TrainConfig(method="enhanced", inner_steps=1)
    family = build_family(config)
    torch.manual_seed(0)
    algo = build_algorithm(config, family)
    with torch.no_grad():  # a one-step rule that overshoots when repeated (rates stored as log α)
        algo.lslr.log_rates.add_(math.log(30.0))
    rows = {
        horizon: evaluate_algorithm(algo, family, 50, (5,), (1, 10), seed=1, horizon=horizon)
        for horizon in (None, 1)
    }
    assert rows[None][0]["mse"] == rows[1][0]["mse"]  # step 1 lies within the horizon
    assert rows[None][1]["worse"] > 10  # unguarded, the repeated step climbs on many tasks
    assert rows[1][1]["diverged"] == 0 and rows[1][1]["mse"] < rows[1][0]["mse"]


# --- learn2learn's allow_nograd / allow_unused: a frozen layer, an unused parameter ---------------


def frozen_mlp():
    """``mlp()`` with its first layer frozen (``requires_grad=False``), as in fine-tuning a head."""
    torch.manual_seed(4)
    model = mlp()
    model[0].requires_grad_(False)
    return model


def clone_adapt_loss(algo, batch, steps, **options):
    """The mean query loss of learn2learn's loop: per task, clone, adapt ``steps`` times, query."""
    total = 0.0
    for i in range(batch.x_support.shape[0]):
        learner = algo.clone(**options)
        for _ in range(steps):
            learner.adapt(((learner(batch.x_support[i]) - batch.y_support[i]) ** 2).mean())
        total = total + ((learner(batch.x_query[i]) - batch.y_query[i]) ** 2).mean()
    return total / batch.x_support.shape[0]


def test_a_frozen_layer_stays_as_learn2learns_maml_leaves_it():
    batch = regression_batch(3, 5, seed=8)
    ours_model, theirs_model = frozen_mlp(), frozen_mlp()
    ours = MAMLEnhanced(ours_model, ALPHA, 2, curvature=False, layerwise_lr=False, allow_nograd=True)
    theirs = l2l.algorithms.MAML(theirs_model, lr=ALPHA, allow_nograd=True)
    ours_loss, theirs_loss = clone_adapt_loss(ours, batch, 2), clone_adapt_loss(theirs, batch, 2)
    ours_loss.backward()
    theirs_loss.backward()
    torch.testing.assert_close(ours_loss, theirs_loss, rtol=1e-14, atol=0)
    for mine, other in zip(ours_model.parameters(), theirs_model.parameters()):
        assert (mine.grad is None) == (other.grad is None) == (not mine.requires_grad)
        if mine.grad is not None:
            torch.testing.assert_close(mine.grad, other.grad, rtol=1e-13, atol=1e-15)
    learner = ours.clone()
    learner.adapt(((learner(batch.x_support[0]) - batch.y_support[0]) ** 2).mean())
    frozen, adapted = list(learner.module[0].parameters()), list(learner.module[2].parameters())
    assert all(torch.equal(a, b) and not a.requires_grad for a, b in zip(frozen, ours_model[0].parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(adapted, ours_model[2].parameters()))


def frozen_reference(algo, batch, steps):
    """The meta-gradient of MAML Enhanced on :func:`frozen_mlp` written out: the first layer is a
    constant, the head adapts by ``rate · M_o G M_i`` and ``rate · m ⊙ g``; float64 autograd."""
    w0, b0 = (p.detach() for p in algo.module[0].parameters())
    w1, b1 = (p.detach().clone().requires_grad_() for p in algo.module[2].parameters())
    m_out, m_in = (
        algo.curvature[2].get_parameter(n).detach().clone().requires_grad_() for n in ("m_out", "m_in")
    )
    scale = algo.curvature[3].scale.detach().clone().requires_grad_()
    rates = algo.lslr.rates.detach().clone().requires_grad_()
    total = 0.0
    for i in range(batch.x_support.shape[0]):
        w, b = w1, b1
        head = lambda x: torch.tanh(x @ w0.T + b0) @ w.T + b  # noqa: E731
        for s in range(steps):
            loss = ((head(batch.x_support[i]) - batch.y_support[i]) ** 2).mean()
            g_w, g_b = torch.autograd.grad(loss, (w, b), create_graph=True)
            w, b = w - rates[2, s] * (m_out @ g_w @ m_in), b - rates[3, s] * (scale * g_b)
        total = total + ((head(batch.x_query[i]) - batch.y_query[i]) ** 2).mean()
    loss = total / batch.x_support.shape[0]
    leaves = (w1, b1, m_out, m_in, scale, rates)
    names = ("module.2.weight", "module.2.bias", "curvature.2.m_out", "curvature.2.m_in", "curvature.3.scale")
    return loss, dict(zip((*names, "lslr.rates"), torch.autograd.grad(loss, leaves)))


@pytest.mark.parametrize("where", ["constructor", "clone", "adapt"])
def test_a_frozen_layer_under_enhanced_matches_an_unroll_of_the_head(where):
    batch = regression_batch(3, 5, seed=9)
    algo = MAMLEnhanced(frozen_mlp(), ALPHA, 2, allow_nograd=where == "constructor")
    perturb(algo, seed=2)
    with pytest.raises(RuntimeError, match=r"parameter 0.weight has requires_grad=False .*allow_nograd=True"):
        clone_adapt_loss(algo, batch, 2, allow_nograd=False)  # learn2learn's default
    if where == "adapt":
        learner = algo.clone()
        learner.adapt(((learner(batch.x_support[0]) - batch.y_support[0]) ** 2).mean(), allow_nograd=True)
        assert torch.equal(learner.module[0].weight, algo.module[0].weight)
        algo.allow_nograd = True  # the loop below then adapts with the learner's own setting
    options = {"allow_nograd": True} if where == "clone" else {}
    loss = clone_adapt_loss(algo, batch, 2, **options)
    loss.backward()
    expected_loss, expected = frozen_reference(algo, batch, 2)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-13, atol=0)
    grads = named_grads(algo)
    for name, value in expected.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-10, atol=1e-13, msg=name)
    assert expected["lslr.rates"][:2].abs().max() == 0 < expected["lslr.rates"][2:].abs().min()
    frozen = [n for n in grads if n.startswith(("module.0.", "curvature.0.", "curvature.1."))]
    assert len(frozen) == 5 and all(grads[n] is None for n in frozen)  # no gradient: nothing adapted them


class HalfUsed(torch.nn.Module):
    """Two linear layers of which ``forward`` uses one."""

    def __init__(self):
        super().__init__()
        self.used, self.unused = torch.nn.Linear(2, 1).double(), torch.nn.Linear(2, 1).double()

    def forward(self, x):
        return self.used(x)


def test_an_unused_parameter_is_left_as_learn2learns_maml_leaves_it():
    batch = regression_batch(2, 4, seed=10)
    torch.manual_seed(5)
    ours_model = HalfUsed()
    theirs_model = copy.deepcopy(ours_model)
    ours = MAMLEnhanced(ours_model, ALPHA, 1, curvature=False, layerwise_lr=False)
    with pytest.raises(RuntimeError, match=r"parameter unused.weight is not used .*allow_unused=True"):
        clone_adapt_loss(ours, batch, 1)
    theirs = l2l.algorithms.MAML(theirs_model, lr=ALPHA, allow_unused=True)
    ours_loss = clone_adapt_loss(ours, batch, 1, allow_unused=True)
    theirs_loss = clone_adapt_loss(theirs, batch, 1)
    ours_loss.backward()
    theirs_loss.backward()
    torch.testing.assert_close(ours_loss, theirs_loss, rtol=1e-14, atol=0)
    assert ours_model.unused.weight.grad is None and theirs_model.unused.weight.grad is None
    torch.testing.assert_close(ours_model.used.weight.grad, theirs_model.used.weight.grad, rtol=1e-13, atol=0)


def test_a_frozen_layer_in_a_detached_clone_takes_sgd_on_the_rest():
    batch = regression_batch(1, 5, seed=11)
    reptile = Reptile(frozen_mlp(), ALPHA)
    head = list(reptile.module[2].parameters())
    loss_of = lambda m: ((m(batch.x_support[0]) - batch.y_support[0]) ** 2).mean()  # noqa: E731
    expected = [p - ALPHA * g for p, g in zip(head, torch.autograd.grad(loss_of(reptile.module), head))]
    with pytest.raises(RuntimeError, match="allow_nograd=True"):
        reptile.clone().adapt(loss_of(reptile.module))
    learner = reptile.clone(allow_nograd=True)
    learner.adapt(loss_of(learner))
    frozen = zip(learner.module[0].parameters(), reptile.module[0].parameters())
    assert all(torch.equal(a, b) for a, b in frozen)
    assert_close_lists(list(learner.module[2].parameters()), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("backend", ["func", "higher"])
def test_engines_that_cannot_freeze_a_layer_refuse_it_by_name(backend):
    from metakit.wrappers.engines import make_engine

    algo = MAMLEnhanced(frozen_mlp(), ALPHA, 1, allow_nograd=True)
    with pytest.raises(ValueError, match=r"frozen parameters \(0\.weight, 0\.bias\); use the l2l backend"):
        make_engine(algo, backend=backend)
    make_engine(algo, backend="l2l")  # l2l leaves them as they are


def test_query_curves_measure_only_the_recorded_steps_and_the_same_numbers_there():
    torch.manual_seed(0)
    algo = make(mlp(), "enhanced", 2)
    perturb(algo, seed=4)
    batch = regression_batch(tasks=5, points=4, seed=6)
    engine = VectorizedEngine(algo)
    every = engine.query_curves(batch, max_steps=6, guard_from=2)["loss"]
    some = engine.query_curves(batch, max_steps=6, guard_from=2, record=[5, 0, 2])["loss"]
    assert some.shape == every.shape == (7, 5)
    assert torch.equal(some[[0, 2, 5]], every[[0, 2, 5]])
    assert torch.isnan(some[[1, 3, 4, 6]]).all()
