"""The training configuration and every rule on how its options combine.

The rules live here, not in the command line, so that a config built in Python or loaded from a
run's ``config.json`` is checked exactly as ``metakit train`` checks its options.
"""

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

from metakit.experiments.methods import BACKENDS, METHODS
from metakit.experiments.tasks import FAMILIES
from metakit.experiments.util.errors import MetakitError

DEVICES = ("auto", "cpu", "cuda")
OUTER_OPTIMIZERS = ("adam", "sgd-annealed")
"""``--outer-optimizer``: Adam at ``--meta-lr``, or SGD whose step size falls linearly from
``--meta-lr`` to zero over the run (Reptile's outer rule, Nichol et al. 2018)."""
COMPILE_MODES = ("auto", "on", "off")
"""``--compile``: ``auto`` compiles a func run long enough to repay the compilation (see
:func:`metakit.experiments.training.trainer.choose_compile`), ``on`` always, ``off`` never."""
TRAIN_SEEDS = 2**31
"""Training seeds are below 2**31; held-out streams use seeds at or above it (see
:func:`~metakit.experiments.tasks.family.held_out_generator`)."""
FAMILY_DEFAULTS = (
    "ways",
    "shots",
    "inner_steps",
    "inner_lr",
    "meta_batch",
    "meta_lr",
    "iterations",
    "rotations",
)
"""Options whose default (``None``) is the task family's protocol."""
FAMILY_OPTIONS = ("shots", "query", "ways", "data_root", "rotations")
"""Options that only some families accept (see ``TaskFamily.options``; reinforcement-learning
families take no ``shots`` or ``query``)."""


class ConfigError(MetakitError):
    """Options that are invalid alone or together; the message is one line."""


@dataclass
class TrainConfig:
    """Everything that defines a meta-training run.

    Options left at ``None`` take the task family's protocol (for sinusoid, the MAML paper's); a
    constructed config holds concrete values and has passed every rule (else :class:`ConfigError`).
    """

    method: str = "maml"
    """A registered method: maml, fomaml, reptile, mc, lslr, enhanced, pretrain, ..."""
    task: str = "sinusoid"
    """A registered task family: sinusoid, harmonic, sinusoid-line, glyphs, omniglot, ..."""
    ways: Optional[int] = None
    """Classification: classes per task, N."""
    shots: Optional[int] = None
    """Support examples per task (regression) or per class (classification), K."""
    query: Optional[int] = None
    """Query examples per task or per class during training; default: the same as shots."""
    inner_steps: Optional[int] = None
    """Inner-loop steps per task during meta-training."""
    inner_lr: Optional[float] = None
    """Inner learning rate α (initial value of learned rates)."""
    meta_batch: Optional[int] = None
    """Tasks per meta-update."""
    meta_lr: Optional[float] = None
    """Learning rate of the meta-update (with ``outer_optimizer="sgd-annealed"``: its first value, ε)."""
    iterations: Optional[int] = None
    """Meta-updates."""
    seed: int = 0
    """Seeds the model initialisation and the training task stream."""
    backend: str = "func"
    """func (vectorised torch.func engine), l2l (learn2learn clone/adapt) or higher."""
    compile: str = "auto"
    """func backend: compile the meta-gradient with torch.compile: auto, on or off (see
    :data:`COMPILE_MODES`; seconds to a minute of compiling, then about 3x faster)."""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda."""
    data_root: Optional[str] = None
    """Image families: folder of the data (omniglot: required) or of the rendered cache (glyphs)."""
    rotations: Optional[bool] = None
    """Image families: add the 90°, 180° and 270° rotations of every training class as new classes."""
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
    clip_grad: Optional[float] = None
    """Clip the meta-gradient to this total norm before each outer step (none by default)."""
    outer_optimizer: str = "adam"
    """adam, or sgd-annealed: SGD at ε_i = meta_lr·(1 − i/iterations) at iteration i (Reptile's
    published outer rule; with Reptile one step is θ ← θ + ε_i (mean φ̃ − θ))."""
    inner_all_points: bool = False
    """Reptile: the inner loop trains on all of a task's points, support and query, in mini-batches
    of the support size (as published) instead of on the support points alone."""

    def __post_init__(self):
        if self.task not in FAMILIES:
            raise ConfigError(f"unknown task {self.task!r}; choose from {', '.join(FAMILIES.names())}")
        family = FAMILIES.get(self.task)
        for name in FAMILY_OPTIONS:
            if getattr(self, name) is not None and name not in family.options:
                raise ConfigError(f"--{_flag(name)} does not apply to --task {self.task}")
        for name in FAMILY_DEFAULTS:
            if getattr(self, name) is None and name in family.protocol:
                setattr(self, name, family.protocol[name])
        if self.query is None:
            self.query = self.shots
        _check(self, family)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Rebuild from :meth:`to_dict` and check every value; anything invalid is a :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        if isinstance(data.get("compile"), bool):  # runs saved before --compile took auto/on/off
            data = {**data, "compile": "on" if data["compile"] else "off"}
        return cls(**data)


def _flag(name: str) -> str:
    return name.replace("_", "-")


TYPES = {
    "method": str, "task": str, "ways": int, "shots": int, "query": int, "inner_steps": int,
    "inner_lr": float, "meta_batch": int, "meta_lr": float, "iterations": int, "seed": int,
    "backend": str, "compile": str, "device": str, "data_root": str, "rotations": bool,
    "log_every": int, "checkpoint_every": int, "multi_step_loss": bool, "msl_anneal": int,
    "first_order_until": int, "cosine_lr": bool, "tensorboard": bool, "outer_optimizer": str,
    "inner_all_points": bool, "clip_grad": float,
}  # fmt: skip
MINIMUM = {
    "ways": 2, "shots": 1, "query": 1, "inner_steps": 1, "meta_batch": 1, "iterations": 1,
    "seed": 0, "log_every": 1, "checkpoint_every": 1, "msl_anneal": 0, "first_order_until": 0,
}  # fmt: skip


def _check_types(config: TrainConfig) -> None:
    for name, kind in TYPES.items():
        value = getattr(config, name)
        if value is None and (name in FAMILY_OPTIONS or name == "clip_grad"):
            continue
        accepted = (int, float) if kind is float else kind
        if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"{name} must be of type {kind.__name__}, got {value!r}")
        if name in MINIMUM and value < MINIMUM[name]:
            raise ConfigError(f"--{_flag(name)} must be at least {MINIMUM[name]}, got {value}")
        if kind is float and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--{_flag(name)} must be a finite number > 0, got {value!r}")
    if config.seed >= TRAIN_SEEDS:
        raise ConfigError(f"--seed must be below 2**31, got {config.seed}")


def _check(config: TrainConfig, family) -> None:
    """Every rule on the options, alone and together."""
    if config.method not in METHODS:
        raise ConfigError(f"unknown method {config.method!r}; choose from {', '.join(METHODS.names())}")
    if config.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {config.backend!r}; choose from {', '.join(BACKENDS)}")
    if config.device not in DEVICES:
        raise ConfigError(f"unknown device {config.device!r}; choose from {', '.join(DEVICES)}")
    if config.outer_optimizer not in OUTER_OPTIMIZERS:
        raise ConfigError(
            f"unknown outer optimizer {config.outer_optimizer!r}; choose from {', '.join(OUTER_OPTIMIZERS)}"
        )
    if config.compile not in COMPILE_MODES:
        raise ConfigError(f"unknown --compile {config.compile!r}; choose from {', '.join(COMPILE_MODES)}")
    _check_types(config)
    spec = METHODS.get(config.method)
    if config.backend not in spec.backends:
        raise ConfigError(
            f"--method {config.method} does not run on --backend {config.backend}; "
            f"use {' or '.join(spec.backends)}"
        )
    if not spec.maml_plus_plus and (config.multi_step_loss or config.first_order_until):
        raise ConfigError(
            f"--multi-step-loss and --first-order-until apply to MAML-family methods, not {config.method}"
        )
    if spec.always_first_order and config.first_order_until:
        raise ConfigError(
            f"--first-order-until has no effect with --method {config.method} (always first-order)"
        )
    if config.outer_optimizer == "sgd-annealed" and config.cosine_lr:
        raise ConfigError("--cosine-lr and --outer-optimizer sgd-annealed both anneal --meta-lr; choose one")
    if config.inner_all_points and not spec.all_points:
        raise ConfigError(
            f"--inner-all-points applies to reptile, not {config.method} (whose meta-loss needs held-out "
            "query points)"
        )
    if config.multi_step_loss and config.inner_steps < 2:
        raise ConfigError("--multi-step-loss needs --inner-steps of at least 2")
    if config.compile == "on" and config.backend != "func":
        raise ConfigError("--compile on applies to --backend func only")
    try:
        family.check_config(config)
    except ValueError as err:
        raise ConfigError(str(err)) from None
