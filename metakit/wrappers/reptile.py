"""Reptile on learn2learn's ``clone_module``."""

from metakit.wrappers.sgd import SGDLearner


class Reptile(SGDLearner):
    """Reptile (Nichol et al., 2018): move the initialisation toward task-adapted weights.

    ``clone()`` returns a detached copy of the model; ``adapt(loss)`` takes one plain SGD step on
    it. After adapting a batch of tasks, :func:`metakit.wrappers.functional.reptile_gradient`
    gives ``θ − mean φ̃``, which the backends write into ``.grad``: SGD with learning rate ε on
    it is exactly θ ← θ + ε (mean φ̃ − θ), and any other optimizer (e.g. Adam) works too.

    Args:
        model: any ``nn.Module``.
        lr: inner-loop SGD learning rate.

    Example::

        reptile = Reptile(model, lr=0.02)
        learner = reptile.clone()
        for _ in range(5):
            learner.adapt(loss_fn(learner(x), y))

    Reference: Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms",
    arXiv:1803.02999.
    """
