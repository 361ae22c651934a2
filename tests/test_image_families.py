"""Few-shot image classification: episodes, the held-out set, data errors and conv-net meta-gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from metakit.experiments.reports.evaluate import evaluate_algorithm
from metakit.experiments.tasks import FAMILIES, build_family, register_family
from metakit.experiments.tasks.vision import convnet
from metakit.experiments.tasks.vision.convnet import BatchStatNorm2d, conv_net
from metakit.experiments.tasks.vision.episodes import ImageEpisodes
from metakit.experiments.tasks.vision.image_sets import ClassImages, DataError
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.runs import load_run
from metakit.experiments.training.trainer import train
from metakit.wrappers import MAML, MAMLEnhanced, TaskBatch, VectorizedEngine, meta_backward

TRAIN_CLASSES, VALIDATION_CLASSES, TEST_CLASSES, PER_CLASS = 12, 10, 8, 20


def tagged_images(classes: int, offset: int) -> ClassImages:
    """One-channel images whose pixel (0, 0) names the class (offset + c + 1) and pixel (0, 1) the
    drawing."""
    images = torch.zeros(classes, PER_CLASS, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 0, 0, 0] = torch.arange(offset + 1, offset + classes + 1, dtype=torch.uint8)[:, None]
    images[:, :, 0, 0, 1] = torch.arange(1, PER_CLASS + 1, dtype=torch.uint8)
    names = tuple(f"a/{offset + c}" for c in range(classes))
    return ClassImages(images, names, ("a",) * classes)


class Tagged(ImageEpisodes):
    """An image family defined in the test, with tagged images and a tiny conv net."""

    channels = 4
    protocol = dict(ways=3, shots=2, inner_steps=1, inner_lr=0.1, meta_batch=4, meta_lr=1e-3, iterations=5)

    def load(self):
        return {
            "train": tagged_images(TRAIN_CLASSES, 0),
            "validation": tagged_images(VALIDATION_CLASSES, 50),
            "test": tagged_images(TEST_CLASSES, 100),
        }


def tags(x: torch.Tensor):
    """(class tag, drawing tag) of float images ``[..., 1, 28, 28]``."""
    pixels = (x[..., 0, 0, :2] * 255).round().long()
    return pixels[..., 0], pixels[..., 1]


def test_episodes_are_class_major_disjoint_and_from_the_training_classes():
    family = Tagged(ways=3, min_images=6)
    batch = family.sample(50, 2, 4, torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (50, 6, 1, 28, 28) and batch.x_query.shape == (50, 12, 1, 28, 28)
    assert (
        batch.x_support.dtype == torch.float32 and 0 <= batch.x_support.min() and batch.x_support.max() <= 1
    )
    assert torch.equal(batch.y_support[0], torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(batch.y_query[0], torch.arange(3).repeat_interleave(4))
    s_class, s_drawing = tags(batch.x_support)
    q_class, q_drawing = tags(batch.x_query)
    assert s_class.min() >= 1 and s_class.max() <= TRAIN_CLASSES and q_class.max() <= TRAIN_CLASSES
    for t in range(50):
        per_label = [set(s_class[t][batch.y_support[t] == k].tolist()) for k in range(3)]
        assert all(len(c) == 1 for c in per_label) and len(set.union(*per_label)) == 3
        for k in range(3):
            assert set(q_class[t][batch.y_query[t] == k].tolist()) == per_label[k]
            drawings = (
                s_drawing[t][batch.y_support[t] == k].tolist() + q_drawing[t][batch.y_query[t] == k].tolist()
            )
            assert len(set(drawings)) == 6  # no image is both support and query
    # Every training class is used, in several label positions.
    assert set(s_class.flatten().tolist()) == set(range(1, TRAIN_CLASSES + 1))


def test_rotations_add_rotated_classes():
    plain = Tagged(ways=3, min_images=2).sample(200, 1, 1, torch.Generator().manual_seed(1))
    rotated = Tagged(ways=3, rotations=True, min_images=2).sample(200, 1, 1, torch.Generator().manual_seed(1))
    corner = lambda x: x[..., 0, 0, 0] > 0  # noqa: E731  (the tag stays at (0, 0) only unrotated)
    assert corner(plain.x_support).all()
    assert 0.15 < corner(rotated.x_support).float().mean() < 0.35


def test_held_out_episodes_are_fixed_and_independent_of_what_is_asked():
    family = Tagged(ways=3)
    a = family.held_out(20, 5, seed=1)
    assert torch.equal(a.support, family.held_out(20, 5, seed=1).support)
    assert not torch.equal(a.support, family.held_out(20, 5, seed=2).support)
    one, fewer = family.held_out(20, 1, seed=1), family.held_out(7, 10, seed=1)
    assert torch.equal(one.batch(1).x_support, a.batch(1).x_support)
    assert torch.equal(one.batch(1).x_query, a.batch(1).x_query)
    assert torch.equal(fewer.batch(5).x_support, a.batch(5).x_support[:7])
    batch = a.batch(5)
    assert batch.x_support.shape == (20, 15, 1, 28, 28) and batch.x_query.shape == (
        20,
        3 * Tagged.eval_query,
        1,
        28,
        28,
    )
    s_class, s_drawing = tags(batch.x_support)
    q_class, q_drawing = tags(batch.x_query)
    assert s_class.min() > 100 and q_class.min() > 100  # meta-test classes only
    for t in range(20):
        for k in range(3):
            support = set(s_drawing[t][batch.y_support[t] == k].tolist())
            assert not support & set(q_drawing[t][batch.y_query[t] == k].tolist())


def label_orders(class_tags: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Per episode, the class tag of the images with label 0, 1, …, ways−1 (``[episodes, ways]``)."""
    episodes = class_tags.shape[0]
    return torch.stack([class_tags[labels == k].view(episodes, -1)[:, 0] for k in range(ways)], 1)


def assert_labels_in_random_order(classes: torch.Tensor, tags: range) -> None:
    """Over the episodes, every class of ``tags`` gets every label, and the chosen classes come in
    each of the ``ways!`` orders about equally often (not sorted, nor in any fixed order)."""
    episodes, ways = classes.shape
    for k in range(ways):
        assert set(classes[:, k].tolist()) == set(tags), k
    orders = torch.unique(classes.argsort(1), dim=0, return_counts=True)[1]
    expected = episodes / math.factorial(ways)
    assert len(orders) == math.factorial(ways) and (orders - expected).abs().max() < 0.4 * expected, orders


def test_every_training_and_held_out_episode_assigns_labels_in_random_order():
    family = Tagged(ways=3, min_images=2)
    batch = family.sample(600, 1, 1, torch.Generator().manual_seed(4))
    train_classes = label_orders(tags(batch.x_support)[0], batch.y_support, 3)
    assert torch.equal(train_classes, label_orders(tags(batch.x_query)[0], batch.y_query, 3))
    assert_labels_in_random_order(train_classes, range(1, TRAIN_CLASSES + 1))
    held_out = family.held_out(600, 1, seed=1).batch(1)
    test_classes = label_orders(tags(held_out.x_support)[0], held_out.y_support, 3)
    assert torch.equal(test_classes, label_orders(tags(held_out.x_query)[0], held_out.y_query, 3))
    assert_labels_in_random_order(test_classes, range(101, 101 + TEST_CLASSES))


def test_with_rotations_held_out_episodes_hold_only_unrotated_meta_test_classes():
    family = Tagged(ways=3, rotations=True, min_images=2)
    training = family.sample(200, 1, 1, torch.Generator().manual_seed(1))
    assert (tags(training.x_support)[0] == 0).float().mean() > 0.5  # rotated classes: the tag moved
    originals = tagged_images(TEST_CLASSES, 100).images.float().div(255).flatten(0, 1)
    held_out = family.held_out(100, 5, seed=1).batch(5)
    for images in (held_out.x_support, held_out.x_query):
        images = images.flatten(0, 1)
        classes, drawings = tags(images)
        assert classes.min() > 100 and classes.max() <= 100 + TEST_CLASSES and drawings.min() >= 1
        index = (classes - 101) * PER_CLASS + drawings - 1  # the unrotated original of each image
        assert torch.equal(images, originals[index])


def test_the_conv_nets_batch_norm_uses_eps_1e_5():
    model = Tagged(ways=3).build_model().double()
    norms = [m for m in model.modules() if isinstance(m, BatchStatNorm2d)]
    assert len(norms) == Tagged.blocks
    g = torch.Generator().manual_seed(6)
    x = 1e-3 * torch.randn(6, Tagged.channels, 4, 4, generator=g, dtype=torch.float64)  # variance ~1e-6
    for norm in norms:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2, generator=g)
            norm.bias.uniform_(-1, 1, generator=g)
        mean = x.mean((0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean((0, 2, 3), keepdim=True)
        scale, shift = norm.weight.view(1, -1, 1, 1), norm.bias.view(1, -1, 1, 1)
        expected = (x - mean) / torch.sqrt(var + 1e-5) * scale + shift
        torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)
        other = (x - mean) / torch.sqrt(var + 1e-3) * scale + shift  # eps matters at this variance
        assert (norm(x) - other).abs().max() > 0.1


@pytest.mark.parametrize(
    "family, action, message",
    [
        (Tagged(ways=13), lambda f: f.prepare(), "meta-train split has 12 classes; 13-way"),
        (Tagged(ways=11), lambda f: f.prepare(), "validation split has 10 classes; 11-way"),
        (Tagged(ways=9), lambda f: f.prepare(), "meta-test split has 8 classes; 9-way"),
        (
            Tagged(ways=3, min_images=21),
            lambda f: f.prepare(),
            "21 images per class; the meta-train classes have 20",
        ),
        (Tagged(ways=3), lambda f: f.held_out(5, 11, seed=0), "--shots can be at most 10"),
    ],
)
def test_too_few_classes_or_images_is_a_one_line_error(family, action, message):
    with pytest.raises(DataError, match=message) as err:
        action(family)
    assert "\n" not in str(err.value)


def test_model_has_no_buffers_and_batch_norm_uses_batch_statistics():
    model = Tagged(ways=3).build_model()
    assert not list(model.buffers())
    x = torch.rand(6, 1, 28, 28)
    model.eval()
    first = model(x)[0]
    assert not torch.allclose(first, model(torch.cat([x[:1], 3 * x[1:]]))[0])  # the batch changes the output


def image_batch(tasks=3, ways=3, shots=2, size=8, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    return TaskBatch(
        torch.randn(tasks, ways * shots, 1, size, size, generator=g, dtype=torch.float64),
        labels,
        torch.randn(tasks, ways * shots, 1, size, size, generator=g, dtype=torch.float64),
        labels,
    )


def small_conv() -> torch.nn.Module:
    torch.manual_seed(0)
    return conv_net(ways=3, in_channels=1, image_size=8, channels=3, blocks=2).double()


def unrolled_maml_loss(model, batch, steps, alpha, first_order=False):
    """Second-order MAML meta-loss written out with autograd (cross-entropy), nothing from metakit;
    with ``first_order`` the inner gradients are constants (first-order MAML's meta-gradient)."""
    names = [n for n, _ in model.named_parameters()]
    theta = list(model.parameters())
    total = 0.0
    for i in range(batch.num_tasks):
        fast = theta
        for _ in range(steps):
            logits = torch.func.functional_call(model, dict(zip(names, fast)), (batch.x_support[i],))
            loss = F.cross_entropy(logits, batch.y_support[i])
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast = [p - alpha * g for p, g in zip(fast, grads)]
        logits = torch.func.functional_call(model, dict(zip(names, fast)), (batch.x_query[i],))
        total = total + F.cross_entropy(logits, batch.y_query[i])
    return total / batch.num_tasks


def meta_grads(algo, batch, steps, backend):
    algo.zero_grad(set_to_none=True)
    if backend == "func":
        VectorizedEngine(algo, F.cross_entropy).meta_backward(batch, steps)
    else:
        meta_backward(algo, batch, steps, backend, loss_fn=F.cross_entropy)
    return {n: p.grad.clone() for n, p in algo.named_parameters()}


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("method", ["maml", "fomaml", "enhanced"])
def test_conv_net_meta_gradients_agree_across_backends(method, steps):
    batch = image_batch()
    if method in ("maml", "fomaml"):
        algo = MAML(small_conv(), lr=0.3, first_order=method == "fomaml")
    else:
        algo = MAMLEnhanced(small_conv(), lr=0.3, inner_steps=steps)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():  # curvature and rates away from the identity and α
            for p in list(algo.curvature.parameters()) + list(algo.lslr.parameters()):
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    reference = meta_grads(algo, batch, steps, "l2l")
    assert any(name.startswith("curvature") for name in reference) == (method == "enhanced")
    assert any("m_filter" in name for name in reference) == (method == "enhanced")  # conv weights: 3 factors
    for backend in ("func", "higher"):
        got = meta_grads(algo, batch, steps, backend)
        for name in reference:
            torch.testing.assert_close(got[name], reference[name], rtol=1e-9, atol=1e-11, msg=name)
    if method in ("maml", "fomaml"):
        model = algo.module
        model.zero_grad()
        loss = unrolled_maml_loss(model, batch, steps, 0.3, first_order=method == "fomaml")
        expected = torch.autograd.grad(loss, list(model.parameters()))
        for (name, _), e in zip(model.named_parameters(), expected):
            torch.testing.assert_close(reference[f"module.{name}"], e, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", ["l2l", "higher"])
def test_per_task_backends_run_the_fused_batch_norm_with_the_same_meta_gradient(backend, monkeypatch):
    batch = image_batch()
    algo = MAML(small_conv(), lr=0.3)
    norms = [m for m in algo.modules() if isinstance(m, BatchStatNorm2d)]
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a scale and shift other than the defaults
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5, generator=g)
            norm.bias.uniform_(-0.5, 0.5, generator=g)
    loss = unrolled_maml_loss(algo.module, batch, 2, 0.3)  # the element-wise layer, float64 autograd
    expected = torch.autograd.grad(loss, list(algo.module.parameters()))
    engine = Tagged(ways=3).meta_engine(algo, backend, compile=False)
    monkeypatch.setattr(convnet, "batch_moments", lambda x: pytest.fail("element-wise batch norm ran"))
    algo.zero_grad(set_to_none=True)
    engine.meta_backward(batch, 2)
    for (name, p), e in zip(algo.module.named_parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-11, msg=name)
    assert engine.name == backend and not any(norm.fused for norm in norms)  # element-wise again after
    assert isinstance(Tagged(ways=3).meta_engine(algo, "func", compile=False), VectorizedEngine)


def test_config_for_an_image_family_carries_its_protocol():
    config = TrainConfig(task="glyphs", ways=3, shots=2, query=4)
    assert (config.ways, config.shots, config.query, config.rotations) == (3, 2, 4, False)
    assert TrainConfig(task="omniglot", data_root="x").rotations is True


def test_batch_stat_norm_equals_torch_batch_norm_in_training_mode():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64)
    norm = BatchStatNorm2d(4).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2, generator=g)
        norm.bias.uniform_(-1, 1, generator=g)
    expected = F.batch_norm(x, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


COLOUR_SHAPE = (3, 20, 24)  # channels, height, width


def colour_images(classes: int, seed: int, shape=COLOUR_SHAPE) -> ClassImages:
    """Random uint8 images of ``shape``, 12 per class."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes, 12, *shape), generator=g, dtype=torch.uint8)
    return ClassImages(images, tuple(f"c/{seed}-{c}" for c in range(classes)), ("c",) * classes)


class Colour(ImageEpisodes):
    """Three-channel 20×24 images of a few classes, with a small two-block conv net."""

    channels = 4
    blocks = 2
    protocol = dict(ways=3, shots=1, inner_steps=1, inner_lr=0.1, meta_batch=2, meta_lr=1e-3, iterations=3)

    def load(self):
        return {"train": colour_images(5, 0), "validation": colour_images(3, 1), "test": colour_images(4, 2)}


def test_a_family_of_colour_non_square_images_trains_and_evaluates(tmp_path):
    register_family("test-colour", Colour)
    try:
        config = TrainConfig(task="test-colour", log_every=1)
        train(config, tmp_path / "run", progress=False)
        loaded, algo, _ = load_run(tmp_path / "run")  # builds the model without calling prepare
        rows = evaluate_algorithm(algo, build_family(loaded), tasks=4, shots=[1], steps=[0, 1], seed=1)
    finally:
        FAMILIES.unregister("test-colour")
    convs = [m for m in algo.modules() if isinstance(m, torch.nn.Conv2d)]
    heads = [m for m in algo.modules() if isinstance(m, torch.nn.Linear)]
    assert convs[0].in_channels == 3 and convs[0].out_channels == 4 and len(convs) == 2
    assert heads[-1].in_features == 4 * (20 // 4) * (24 // 4) and heads[-1].out_features == 3
    assert [(r["shots"], r["steps"]) for r in rows] == [(1, 0), (1, 1)]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    batch = Colour(ways=3).sample(2, 1, 2, torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (2, 3, *COLOUR_SHAPE) and batch.x_query.shape == (2, 6, *COLOUR_SHAPE)


def test_the_conv_net_head_uses_height_and_width():
    for height, width in ((20, 24), (24, 20), (16, 40)):
        model = conv_net(ways=5, in_channels=3, image_size=(height, width), channels=4, blocks=2)
        assert model(torch.rand(6, 3, height, width)).shape == (6, 5)
        assert model[-1].in_features == 4 * (height // 4) * (width // 4)
    with pytest.raises(ValueError, match="too small"):
        conv_net(ways=5, in_channels=1, image_size=(28, 12))


class Mismatched(Colour):
    """Validation images of another shape than the meta-train ones."""

    def load(self):
        return {**super().load(), "validation": colour_images(3, 1, shape=(3, 24, 20))}


def test_rotations_of_non_square_images_and_mixed_shapes_are_one_line_errors():
    with pytest.raises(DataError, match="--rotations needs square images; .* are 20×24 px") as err:
        Colour(ways=3, rotations=True).prepare()
    assert "\n" not in str(err.value)
    Colour(ways=3).prepare()  # the same images without rotations are fine
    with pytest.raises(DataError, match="validation images are 3×24×20 .*meta-train images are 3×20×24"):
        Mismatched(ways=3).build_model()
