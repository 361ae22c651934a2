"""The func engine against the learn2learn and higher backends: adapted parameters and training runs."""

import pytest
import torch
from helpers import mlp, regression_batch
from torch.func import vmap

from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.runs import CHECKPOINT
from metakit.experiments.training.trainer import train
from metakit.wrappers import MAML, MAMLEnhanced, Reptile, TaskBatch, VectorizedEngine

ALGOS = {
    "maml": lambda m: MAML(m, lr=0.2),
    "fomaml": lambda m: MAML(m, lr=0.2, first_order=True),
    "reptile": lambda m: Reptile(m, lr=0.2),
    "enhanced": lambda m: MAMLEnhanced(m, lr=0.2, inner_steps=3),
}


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name", list(ALGOS))
def test_func_adapted_parameters_equal_learn2learn_clone_adapt(name, steps):
    torch.manual_seed(0)
    algo = ALGOS[name](mlp())
    if isinstance(algo, MAMLEnhanced):
        with torch.no_grad():
            for p in algo.curvature.parameters():
                p.add_(0.1 * torch.randn_like(p))
    batch = regression_batch(tasks=3, points=5, seed=1)
    engine = VectorizedEngine(algo)
    theta = dict(algo.module.named_parameters())
    adapted = vmap(lambda *task: engine.unroll(theta, TaskBatch(*task), steps, False, (steps,))[0])(*batch)
    for i in range(3):
        learner = algo.clone()
        for _ in range(steps):
            learner.adapt(((learner(batch.x_support[i]) - batch.y_support[i]) ** 2).mean())
        for name, reference in learner.module.named_parameters():
            torch.testing.assert_close(adapted[name][i], reference, rtol=1e-12, atol=1e-13)


def final_parameters(run_dir):
    return torch.load(run_dir / CHECKPOINT, weights_only=True)["algorithm"]


@pytest.mark.parametrize(
    "method, backends",
    [
        ("maml", ["l2l", "higher"]),
        ("fomaml", ["l2l", "higher"]),
        ("reptile", ["l2l"]),
        ("mc", ["l2l"]),
        ("lslr", ["l2l"]),
        ("enhanced", ["l2l", "higher"]),
        ("pretrain", ["l2l"]),
    ],
)
def test_short_training_runs_end_at_the_same_parameters_on_every_backend(tmp_path, method, backends):
    options = dict(
        method=method, iterations=8, meta_batch=4, inner_steps=2, meta_lr=1e-2, seed=5, log_every=4
    )
    train(TrainConfig(**options, backend="func"), tmp_path / "func", progress=False)
    expected = final_parameters(tmp_path / "func")
    for backend in backends:
        train(TrainConfig(**options, backend=backend), tmp_path / backend, progress=False)
        actual = final_parameters(tmp_path / backend)
        assert actual.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(
                actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=f"{backend} {key}"
            )


def test_func_backend_refuses_models_with_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match="buffers.*--backend l2l"):
        VectorizedEngine(MAML(model, lr=0.1))
