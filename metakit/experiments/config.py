"""The training configuration and how it maps to an algorithm."""

from dataclasses import asdict, dataclass, fields

METHODS = ("maml", "fomaml", "reptile", "mc", "lslr", "enhanced", "pretrain")
BACKENDS = ("func", "l2l", "higher")


@dataclass
class TrainConfig:
    """Everything that defines a meta-training run; defaults are the MAML paper's sinusoid protocol."""

    method: str = "maml"
    """maml, fomaml, reptile, mc (Meta-Curvature), lslr (layerwise rates), enhanced (both) or
    pretrain (joint regression on all tasks, fine-tuned at test time: the MAML paper's baseline)."""
    task: str = "sinusoid"
    """Task family."""
    shots: int = 10
    """Support (and query) points per training task, K."""
    inner_steps: int = 1
    """Inner-loop steps per task during meta-training."""
    inner_lr: float = 0.01
    """Inner learning rate α (initial value of learned rates)."""
    meta_batch: int = 25
    """Tasks per meta-update."""
    meta_lr: float = 1e-3
    """Adam learning rate of the meta-update."""
    iterations: int = 70_000
    """Meta-updates."""
    seed: int = 0
    """Seeds the model initialisation and the training task stream."""
    backend: str = "func"
    """func (vectorised torch.func engine), l2l (learn2learn clone/adapt) or higher."""
    compile: bool = False
    """func backend: compile the meta-gradient with torch.compile (seconds to minutes of compiling,
    then about 3x faster; pays off from a few thousand iterations)."""
    log_every: int = 100
    """Iterations between lines of metrics.jsonl."""
    checkpoint_every: int = 1000
    """Iterations between checkpoints (one is also written at the end and on SIGINT/SIGTERM)."""
    multi_step_loss: bool = False
    """MAML++ multi-step loss: weighted query loss after every inner step."""
    msl_anneal: int = 10_000
    """Iterations over which the multi-step weights move to the last step."""
    first_order_until: int = 0
    """MAML++ derivative-order annealing: first-order for the first N iterations."""
    cosine_lr: bool = False
    """MAML++ cosine annealing of the meta learning rate to zero over the run."""
    tensorboard: bool = False
    """Also log the training metrics to RUN/tensorboard (needs the tensorboard package)."""

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Rebuild from :meth:`to_dict` and check every value; anything unknown is a ``ValueError``."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        for name, value in data.items():
            kind = (int, float) if known[name] is float else known[name]
            if not isinstance(value, kind) or (known[name] is int and isinstance(value, bool)):
                raise ValueError(f"{name} must be of type {known[name].__name__}, got {value!r}")
        config = cls(**data)
        if config.method not in METHODS or config.backend not in BACKENDS or config.task != "sinusoid":
            raise ValueError(f"unknown method, backend or task in {data}")
        return config


def build_algorithm(config: TrainConfig, model):
    """The wrapper for ``config.method`` around ``model`` (an ``nn.Module``)."""
    from metakit.wrappers import MAML, MAMLEnhanced, Pretrain, Reptile  # heavy: torch and learn2learn

    method, lr = config.method, config.inner_lr
    if method in ("maml", "fomaml"):
        return MAML(model, lr=lr, first_order=method == "fomaml")
    if method == "reptile":
        return Reptile(model, lr=lr)
    if method == "pretrain":
        return Pretrain(model, lr=lr)
    if method in ("mc", "lslr", "enhanced"):
        return MAMLEnhanced(
            model,
            lr=lr,
            inner_steps=config.inner_steps,
            curvature=method in ("mc", "enhanced"),
            layerwise_lr=method in ("lslr", "enhanced"),
        )
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
