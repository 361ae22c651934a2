"""The func engine takes a meta-batch in chunks of tasks when memory is short: the same
meta-gradient and loss for every objective (added to the gradient already there, the memory probe
leaving it alone), the chunk size from the measured memory, and the memory measurements."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_lists, grads_of, mlp, regression_batch
from test_per_step_bn import image_batch, tiny_net
from test_protonet import episodes, model

import metakit.wrappers.engines.vectorized as vectorized
from metakit.wrappers import MAML, MAMLEnhanced, MetaSGD, ProtoNet, Reptile, VectorizedEngine
from metakit.wrappers.engines.memory import available_memory, peak_memory_growth


def short_of_memory(monkeypatch, free, per_task):
    """Make the engine see ``free`` bytes available and measure ``per_task`` bytes for one task
    (the probe still runs); returns the list of probe calls."""
    probes = []

    def measured(fn, device):
        probes.append(device)
        fn()
        return per_task

    monkeypatch.setattr(vectorized, "available_memory", lambda device: free)
    monkeypatch.setattr(vectorized, "peak_memory_growth", measured)
    return probes


def whole_batch(monkeypatch):
    """Make the engine see no memory figure: it takes the whole batch and probes nothing."""
    monkeypatch.setattr(vectorized, "available_memory", lambda device: None)


def meta_backward_from(algo, batch, prefill, **kwargs):
    """``(loss, grads)`` of the func engine's ``meta_backward`` on a copy of ``algo`` whose
    ``.grad`` starts at ``prefill``."""
    for p, g in zip(algo.parameters(), prefill):
        p.grad = g.clone()
    loss = VectorizedEngine(algo, **kwargs.pop("engine", {})).meta_backward(batch, **kwargs)
    return loss, grads_of(algo)


CASES = {
    "maml": (lambda: MAML(mlp(), lr=0.3), dict(steps=2)),
    "maml multi-step loss": (lambda: MAML(mlp(), lr=0.3), dict(steps=3, step_weights=[0.2, 0.3, 0.5])),
    "fomaml": (lambda: MAML(mlp(), lr=0.3, first_order=True), dict(steps=2)),
    "enhanced": (lambda: MAMLEnhanced(mlp(), lr=0.3, inner_steps=2), dict(steps=2)),
    "metasgd": (lambda: MetaSGD(mlp(), lr=0.3), dict(steps=1)),
    "reptile": (lambda: Reptile(mlp(), lr=0.3), dict(steps=3)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("free, chunk", [(100, 2), (100, 3), (10, 1)])
def test_a_meta_batch_in_chunks_gives_the_whole_batch_meta_gradient(monkeypatch, case, free, chunk):
    build, kwargs = CASES[case]
    batch = regression_batch(tasks=6, points=4, seed=3)
    torch.manual_seed(0)
    prefill = [torch.randn_like(p) for p in build().parameters()]
    torch.manual_seed(1)
    whole_batch(monkeypatch)
    whole = meta_backward_from(build(), batch, prefill, **kwargs)

    per_task = vectorized.MEMORY_SHARE * free / (chunk + 0.5)  # the share of ``free`` fits ``chunk`` tasks
    probes = short_of_memory(monkeypatch, free, per_task)
    torch.manual_seed(1)
    with pytest.warns(UserWarning, match=f"taking it {chunk} task"):
        chunked = meta_backward_from(build(), batch, prefill, **kwargs)
    assert len(probes) == 1
    assert chunked[0] == pytest.approx(whole[0], rel=1e-12)
    assert_close_lists(chunked[1], whole[1], rtol=1e-11, atol=1e-13)


def test_protonet_in_chunks_gives_the_whole_batch_meta_gradient(monkeypatch):
    batch = episodes(4)  # 2 tasks, taken one at a time
    prefill = [torch.randn_like(p) for p in ProtoNet(model(), ways=3).parameters()]
    engine = dict(loss_fn=F.cross_entropy)
    whole_batch(monkeypatch)
    whole = meta_backward_from(ProtoNet(model(), ways=3), batch, prefill, steps=1, engine=engine)
    short_of_memory(monkeypatch, free=100, per_task=60)
    with pytest.warns(UserWarning, match="taking it 1 task"):
        chunked = meta_backward_from(ProtoNet(model(), ways=3), batch, prefill, steps=1, engine=engine)
    assert chunked[0] == pytest.approx(whole[0], rel=1e-12)
    assert_close_lists(chunked[1], whole[1])


@pytest.mark.parametrize(
    "tasks, free, per_task, expected",
    [
        (12, 1000, 100, 4),  # 0.4 (the share) · 1000 / 100 = 4 tasks fit; 4 divides 12
        (10, 1000, 100, 2),  # 4 fit; the largest divisor of 10 up to 4
        (7, 1000, 100, 1),  # 7 is prime
        (8, 1000, 300, 1),  # not even one fits by the share: one at a time (one did run)
        (8, 1000, 50, 8),  # all 8 fit
        (8, None, 100, 8),  # memory unknown: the whole batch
        (8, 1000, None, 8),  # growth unmeasurable: the whole batch
    ],
)
def test_the_chunk_is_the_largest_divisor_of_the_batch_that_fits(
    monkeypatch, tasks, free, per_task, expected
):
    probes = short_of_memory(monkeypatch, free, per_task)
    engine = VectorizedEngine(MAML(mlp(), lr=0.3))
    batch = regression_batch(tasks=tasks, points=3, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert engine.task_chunk(batch, 1, False) == expected
        assert engine.task_chunk(batch, 1, False) == expected
        assert len(probes) == (0 if free is None else 1)  # measured once per batch shape and setting
        assert len(caught) == (1 if expected < tasks else 0)
        engine.task_chunk(batch, 2, False)
        assert len(probes) == (0 if free is None else 2)


def test_the_memory_measurements_see_an_allocation():
    free = available_memory()
    if free is None:
        pytest.skip("memory is measured on Linux only")
    assert free > 2**26
    size = 50_000_000  # 200 MB of float32, touched
    growth = peak_memory_growth(lambda: torch.ones(size).sum())
    assert 0.95 * 4 * size <= growth <= 1.5 * 4 * size
    assert peak_memory_growth(lambda: None) < 0.1 * 4 * size


def test_the_compiled_engine_in_chunks_gives_the_whole_batch_meta_gradient_and_probes_eagerly(monkeypatch):
    batch = regression_batch(tasks=6, points=4, seed=3)
    prefill = [torch.zeros_like(p) for p in MAML(mlp(), lr=0.3).parameters()]
    torch.manual_seed(1)
    whole_batch(monkeypatch)
    whole = meta_backward_from(MAML(mlp(), lr=0.3), batch, prefill, steps=2)

    short_of_memory(monkeypatch, free=100, per_task=vectorized.MEMORY_SHARE * 100 / 2.5)
    torch.manual_seed(1)
    algo = MAML(mlp(), lr=0.3)
    for p in algo.parameters():
        p.grad = None
    engine = VectorizedEngine(algo, compile=True)
    compiled, sizes = engine._compiled, []
    engine._compiled = lambda params, chunk, *rest: (
        sizes.append(chunk.num_tasks) or compiled(params, chunk, *rest)
    )
    with pytest.warns(UserWarning, match="taking it 2 task"):
        loss = engine.meta_backward(batch, 2)
    assert sizes == [2, 2, 2]  # the one-task probe ran eagerly: no compilation for its shape
    assert loss == pytest.approx(whole[0], rel=1e-12)
    assert_close_lists(grads_of(algo), whole[1], rtol=1e-10, atol=1e-12)


def test_per_step_batch_moments_in_chunks_equal_the_whole_batch(monkeypatch):
    batch = image_batch(tasks=4)
    whole_batch(monkeypatch)
    whole = VectorizedEngine(MAML(tiny_net(2), lr=0.1), F.cross_entropy).step_moments(batch, 2)
    probes = short_of_memory(monkeypatch, free=100, per_task=vectorized.MEMORY_SHARE * 100 / 2.5)
    algo = MAML(tiny_net(2), lr=0.1)
    with pytest.warns(UserWarning, match="taking it 2 task"):
        chunked = VectorizedEngine(algo, F.cross_entropy).step_moments(batch, 2)
    assert len(probes) == 1 and all(p.grad is None for p in algo.parameters())
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-14)
