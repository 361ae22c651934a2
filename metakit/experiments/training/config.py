"""The training configuration and every rule on how its options combine.

The rules live here, not in the command line, so that a config built in Python or loaded from a
run's ``config.json`` is checked exactly as ``metakit train`` checks its options. Each option is
declared once, as a :class:`TrainConfig` field made by :func:`option`: its type, default, help,
minimum and choices; ``metakit train`` generates its command-line options from these fields.
"""

import math
import os
from dataclasses import Field, asdict, dataclass, field, fields
from typing import Optional, get_args, get_type_hints

from metakit.experiments.methods import BACKENDS, METHODS
from metakit.experiments.tasks import FAMILIES
from metakit.experiments.util.errors import MetakitError, flag

DEVICES = ("auto", "cpu", "cuda")
OUTER_OPTIMIZERS = ("adam", "sgd-annealed")
"""``outer_optimizer``: Adam at ``meta_lr``, or SGD whose step size falls linearly from ``meta_lr``
to zero over the run (Reptile's outer rule, Nichol et al. 2018)."""
RATE_FORMS = ("log", "signed")
"""``rates``: learned inner rates stored as log α (positive, moved by ratios) or as α itself, signed
(the published form); see :data:`metakit.wrappers.lslr.RATE_FORMS`."""
HEADS = ("linear", "cosine")
"""``head``: the classifier of a fine-tuning baseline, Baseline's linear one or Baseline++'s scaled
cosine similarity; see :data:`metakit.wrappers.finetune.HEADS`."""
COMPILE_MODES = ("auto", "on", "off")
"""``compile``: ``auto`` compiles a func run long enough to repay the compilation (see
:func:`metakit.experiments.training.trainer.choose_compile`), ``on`` always, ``off`` never."""
SELECT_ON = ("last", "validation")
"""``select_on``: the model a run's evaluation uses: its last meta-parameters, or those that scored
best on the family's validation episodes (see :mod:`metakit.experiments.training.trainer`)."""
OMNIGLOT_SPLITS = ("vinyals", "background")
"""``omniglot_split``: the class split of Vinyals et al. 2016, or the official background/evaluation one."""
PLACEMENT = ("device", "compile")
"""Options that say where and how fast a run trains, not what it trains: a run continued with
other values (``train --resume RUN --device cpu``) is the same run, and ends where it would have
(up to floating-point differences between devices and between compiled and eager code)."""


MAX_SIZE = 100_000
"""The largest meta-batch, ways, shots or query: beyond it a meta-batch cannot fit in memory."""
MAX_STEPS = 10_000
"""The most inner steps: the unrolled graph of more would not fit in memory."""
MAX_ITERATIONS = 10**10
"""The most meta-updates (at a microsecond each, three hours; more cannot finish)."""
MAX_EXAMPLES = 10**7
"""The most examples in one meta-batch: ``meta_batch × (shots + query)``, times ``ways`` for
classification."""
LEARNED_RULE_CLIP = 10.0
"""``clip_grad``'s default for a learned inner rule over several steps. Measured on sinusoid (10 inner
steps, log rates, 3,000 iterations): unclipped, enhanced diverged at iteration 2,764; clipped at
10, it trained 10,000 iterations without one skipped batch. Its meta-gradient norms are 2–13 early
and 0.2–0.6 late, so the clip only cuts rare spikes; with one inner step it never reached 10 (a
clipped and an unclipped 2,000-iteration run were identical)."""
TRAIN_SEEDS = 2**31
"""Training seeds are below 2**31; held-out streams use seeds at or above it (see
:func:`~metakit.experiments.tasks.family.held_out_generator`)."""


class ConfigError(MetakitError):
    """Options that are invalid alone or together; the message is one line."""


def option(
    default=None,
    *,
    help: str,
    minimum=None,
    maximum=None,
    choices=None,
    family_default: bool = False,
    family_option: bool = False,
    default_text: Optional[str] = None,
    noun: Optional[str] = None,
) -> Field:
    """A :class:`TrainConfig` field with everything its ``metakit train`` option needs in its metadata.

    Args:
        default: the value when the option is not given.
        help: the option's ``--help`` text.
        minimum: the smallest accepted value (numbers; floats are also always finite and > 0).
        maximum: the largest accepted value (sizes beyond it could not fit in memory or time).
        choices: the accepted values, or a function returning them (for registries that can grow).
        family_default: the ``None`` default stands for the task family's protocol.
        family_option: only the families listing it in ``TaskFamily.options`` accept it.
        default_text: what a ``None`` default means, for the help (options without a family default).
        noun: what a value is called in the "unknown ..." error of a choice; default: the name in words.
    """
    if default is None and not family_default and default_text is None:
        raise TypeError("an option whose default is None needs family_default or default_text")
    metadata = dict(
        help=help,
        minimum=minimum,
        maximum=maximum,
        choices=choices,
        family_default=family_default,
        family_option=family_option,
        default_text=default_text,
        noun=noun,
    )
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything that defines a meta-training run; each field's help is in its metadata (see :func:`option`).

    Options left at ``None`` take the task family's protocol (for sinusoid, the MAML paper's); a
    constructed config holds concrete values and has passed every rule (else :class:`ConfigError`).
    """

    method: str = option("maml", help="Meta-learning algorithm.", choices=METHODS.names)
    task: str = option("sinusoid", help="Task family.", choices=FAMILIES.names)
    ways: Optional[int] = option(
        help="Classification: classes per task, N.",
        minimum=2,
        maximum=MAX_SIZE,
        family_default=True,
        family_option=True,
    )
    shots: Optional[int] = option(
        help="Support examples per task (per class for classification), K.",
        minimum=1,
        maximum=MAX_SIZE,
        family_default=True,
        family_option=True,
    )
    query: Optional[int] = option(
        help="Query examples per task (per class for classification) in training.",
        minimum=1,
        maximum=MAX_SIZE,
        family_option=True,
        default_text=flag("shots"),
    )
    inner_steps: Optional[int] = option(
        help="Inner-loop steps per task.", minimum=1, maximum=MAX_STEPS, family_default=True
    )
    inner_lr: Optional[float] = option(
        help="Inner learning rate α (initial value of learned rates).", family_default=True
    )
    meta_batch: Optional[int] = option(
        help="Tasks per meta-update.", minimum=1, maximum=MAX_SIZE, family_default=True
    )
    meta_lr: Optional[float] = option(
        help="Learning rate of the meta-update (sgd-annealed: its first value, ε).", family_default=True
    )
    iterations: Optional[int] = option(
        help="Meta-updates.", minimum=1, maximum=MAX_ITERATIONS, family_default=True
    )
    seed: int = option(
        0, help="Seed of the model initialisation and the task stream (below 2**31).", minimum=0
    )
    backend: str = option(
        "func",
        help="func: vectorised torch.func engine; l2l (learn2learn clone/adapt) / higher: per-task "
        "reference loops.",
        choices=BACKENDS,
    )
    compile: str = option(
        "auto",
        help="func backend: compile the meta-gradient with torch.compile (a compilation costs seconds, "
        "then ~3x faster); auto: for runs long enough to repay it.",
        choices=COMPILE_MODES,
        noun=flag("compile"),  # "unknown --compile 'x'": "unknown compile" would read as a verb
    )
    device: str = option("auto", help="auto: CUDA when available.", choices=DEVICES)
    data_root: Optional[str] = option(
        help="Image families: the data folder (required by all but glyphs) or the rendered cache (glyphs).",
        family_option=True,
        default_text="~/.cache/metakit for glyphs",
    )
    rotations: Optional[bool] = option(
        help="Image families: rotated training classes (90°, 180°, 270°) as new classes.",
        family_default=True,
        family_option=True,
    )
    omniglot_split: Optional[str] = option(
        help="Omniglot: vinyals (Vinyals et al. 2016: 1,028 / 172 / 423 characters from both folders) "
        "or background (images_background / images_evaluation).",
        choices=OMNIGLOT_SPLITS,
        family_default=True,
        family_option=True,
    )
    log_every: int = option(100, help="Iterations between lines of metrics.jsonl.", minimum=1)
    checkpoint_every: int = option(
        1000,
        help="Iterations between checkpoints (also written at the end and on Ctrl-C/SIGTERM).",
        minimum=1,
    )
    select_on: str = option(
        "last",
        help="The model that eval uses: the last one, or the one with the best validation score (image "
        f"families with a validation split), measured every {flag('select_every')} iterations and at "
        "the end.",
        choices=SELECT_ON,
        noun=flag("select_on"),
    )
    select_every: Optional[int] = option(
        help=f"{flag('select_on')} validation: iterations between validations.",
        minimum=1,
        maximum=MAX_ITERATIONS,
        default_text=flag("checkpoint_every"),
    )
    select_tasks: int = option(
        100,
        help=f"{flag('select_on')} validation: the fixed validation episodes scored each time, at the "
        "training ways, shots and inner steps.",
        minimum=2,
        maximum=2**24,
    )
    multi_step_loss: bool = option(
        False, help="MAML++ multi-step loss (query loss after every inner step, annealed weights)."
    )
    msl_anneal: int = option(
        10_000, help="Iterations over which multi-step weights move to the last step.", minimum=0
    )
    first_order_until: int = option(
        0, help="MAML++ derivative-order annealing: first-order for the first N iterations.", minimum=0
    )
    cosine_lr: bool = option(False, help="MAML++ cosine annealing of the meta learning rate to zero.")
    per_step_bn: Optional[bool] = option(
        help="Image families: MAML++ per-step batch norm, a meta-learned weight, bias and running "
        "statistics per inner step (not adapted in the inner loop).",
        family_option=True,
        default_text="off",
    )
    tensorboard: bool = option(
        False, help="Also log metrics to RUN/tensorboard (needs `pip install tensorboard`)."
    )
    clip_grad: Optional[float] = option(
        help="Clip the meta-gradient to this total norm before each outer step; 0: no clipping.",
        minimum=0,
        default_text=f"{LEARNED_RULE_CLIP:g} for a learned inner rule over more than one step, else 0",
    )
    outer_optimizer: str = option(
        "adam",
        help=f"adam; or sgd-annealed: SGD whose step size falls linearly from {flag('meta_lr')} to 0 "
        "(Reptile's paper).",
        choices=OUTER_OPTIMIZERS,
    )
    rates: str = option(
        "log",
        help="lslr, enhanced, metasgd: learned inner rates stored as log α (positive, relative outer "
        "steps) or signed α (as published).",
        choices=RATE_FORMS,
        noun=flag("rates"),
    )
    max_skips: int = option(
        10,
        help="Meta-batches in a row whose meta-loss or gradient is non-finite that are skipped (no "
        "outer step) before training stops as diverged.",
        minimum=1,
    )
    head: Optional[str] = option(
        help="finetune: the classifier over the meta-train classes and, fresh, over each task's "
        "classes at test time: linear (Chen et al.'s Baseline) or cosine (Baseline++: scaled cosine "
        "similarity of the normalised features and class weights).",
        choices=HEADS,
        default_text="linear for finetune",
        noun=flag("head"),
    )
    inner_all_points: bool = option(
        False,
        help="Reptile: inner steps train on support + query points, in mini-batches of the support size.",
    )

    def __post_init__(self):
        _check_choice(self, "task")
        family = FAMILIES.get(self.task)
        for name in FAMILY_OPTIONS:
            if getattr(self, name) is not None and name not in family.options:
                raise ConfigError(f"{flag(name)} does not apply to {_setting(self, 'task')}")
        for name in FAMILY_DEFAULTS:
            if getattr(self, name) is None and name in family.protocol:
                setattr(self, name, family.protocol[name])
        if self.query is None:
            self.query = family.protocol.get("query", self.shots)
        if self.clip_grad is None:
            _check_choice(self, "method")
            self.clip_grad = default_clip_grad(self.method, self.inner_steps)
        if self.head is None and self.method in METHODS and METHODS.get(self.method).transfer:
            self.head = "linear"
        if isinstance(self.data_root, str) and self.data_root:  # usable from any working directory
            self.data_root = os.path.abspath(os.path.expanduser(self.data_root))
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
        if "rates" not in data:  # runs saved before --rates: their rates are signed
            data = {**data, "rates": "signed"}
        if "max_skips" not in data:  # runs saved before skipping: the first non-finite batch stopped them
            data = {**data, "max_skips": 1}
        if data.get("clip_grad", 0.0) is None:  # runs saved before the default clip were not clipped
            data = {**data, "clip_grad": 0.0}
        return cls(**data)


def variant_config(base: TrainConfig, changes: dict) -> TrainConfig:
    """A new run's config made from an existing run's (``train --from RUN``): ``base``'s options
    with ``changes`` on top. An option ``base`` had at its default follows the changes, as it would
    on the command line: from a 1-step ``enhanced`` run, ``inner_steps=10`` gets that setting's
    default ``clip_grad``, and another ``task`` gets that family's protocol."""
    saved = base.to_dict()

    def defaults(*names):  # the defaults that follow from ``base``'s values of ``names``
        return TrainConfig(**{k: saved[k] for k in names if saved[k] is not None}).to_dict()

    identity = ("task", "method", "data_root")  # kept as they are
    family = defaults(*identity)  # e.g. the family's inner_steps and shots
    derived = defaults(*identity, "inner_steps", "shots")  # e.g. query (shots), clip_grad (inner steps)
    kept = {
        k: v
        for k, v in saved.items()
        if k in identity or v != (family if k in ("inner_steps", "shots") else derived)[k]
    }
    return TrainConfig(**{**kept, **changes})


def default_clip_grad(method: str, inner_steps: int) -> float:
    """``--clip-grad``'s default: :data:`LEARNED_RULE_CLIP` for a method whose inner rule is
    learned (mc, lslr, enhanced, metasgd) when it takes more than one inner step, else 0 (none)."""
    learned = METHODS.get(method).learned_inner_rule
    return LEARNED_RULE_CLIP if learned and inner_steps is not None and inner_steps > 1 else 0.0


OPTIONS = {f.name: f for f in fields(TrainConfig)}
"""Every training option's field, by name, in declaration order."""
FAMILY_DEFAULTS = tuple(name for name, f in OPTIONS.items() if f.metadata["family_default"])
"""Options whose default (``None``) is the task family's protocol."""
FAMILY_OPTIONS = tuple(name for name, f in OPTIONS.items() if f.metadata["family_option"])
"""Options that only some families accept (see ``TaskFamily.options``; reinforcement-learning
families take no ``shots`` or ``query``)."""
_HINTS = get_type_hints(TrainConfig)


def value_type(name: str) -> type:
    """The type of option ``name``'s values, from its annotation: ``int`` for ``Optional[int]``."""
    hint = _HINTS[name]
    return next((arg for arg in get_args(hint) if arg is not type(None)), hint)


def choices_of(name: str) -> tuple:
    """The values option ``name`` accepts; ``()`` for an option without choices."""
    choices = OPTIONS[name].metadata["choices"] or ()
    return tuple(choices() if callable(choices) else choices)


def _setting(config: TrainConfig, name: str) -> str:
    """An option as given on the command line: ``--method maml``."""
    return f"{flag(name)} {getattr(config, name)}"


def _check_choice(config: TrainConfig, name: str) -> None:
    value, allowed = getattr(config, name), choices_of(name)
    if value not in allowed:
        noun = OPTIONS[name].metadata["noun"] or name.replace("_", " ")
        raise ConfigError(f"unknown {noun} {value!r}; choose from {', '.join(allowed)}")


def _check_values(config: TrainConfig) -> None:
    """Each option alone: its type, its minimum, and for a float a finite number > 0."""
    for name, declared in OPTIONS.items():
        value, kind, minimum = getattr(config, name), value_type(name), declared.metadata["minimum"]
        maximum = declared.metadata["maximum"]
        own_none = declared.default is None and not declared.metadata["family_default"]  # e.g. no clipping
        if value is None and (declared.metadata["family_option"] or own_none):
            continue
        accepted = (int, float) if kind is float else kind
        if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"{name} must be of type {kind.__name__}, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{flag(name)} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{flag(name)} must be at most {maximum}, got {value}")
        if kind is float and not (math.isfinite(value) and (value > 0 or value == minimum == 0)):
            bound = ">= 0" if minimum == 0 else "> 0"
            raise ConfigError(f"{flag(name)} must be a finite number {bound}, got {value!r}")
    if config.seed >= TRAIN_SEEDS:
        raise ConfigError(f"{flag('seed')} must be below 2**31, got {config.seed}")
    if config.shots is not None:  # reinforcement-learning families sample no examples
        examples = config.meta_batch * (config.shots + config.query) * (config.ways or 1)
        if examples > MAX_EXAMPLES:
            names = f"{flag('meta_batch')} × ({flag('shots')} + {flag('query')})" + (
                f" × {flag('ways')}" if config.ways else ""
            )
            raise ConfigError(
                f"{names} is {examples} examples per meta-batch, which cannot fit in memory; "
                f"at most {MAX_EXAMPLES}"
            )


def _check(config: TrainConfig, family) -> None:
    """Every rule on the options, alone and together."""
    for name, declared in OPTIONS.items():
        if declared.metadata["choices"] is not None and getattr(config, name) is not None:
            _check_choice(config, name)  # a family option that the family does not take stays None
    _check_values(config)
    spec = METHODS.get(config.method)
    if config.backend not in spec.backends:
        raise ConfigError(
            f"{_setting(config, 'method')} does not run on {_setting(config, 'backend')}; "
            f"use {' or '.join(spec.backends)}"
        )
    if not spec.maml_plus_plus and (config.multi_step_loss or config.first_order_until):
        raise ConfigError(
            f"{flag('multi_step_loss')} and {flag('first_order_until')} apply to MAML-family methods, "
            f"not {config.method}"
        )
    if not spec.maml_plus_plus and config.per_step_bn:
        raise ConfigError(
            f"{flag('per_step_bn')} applies to MAML-family methods, whose meta-gradient reaches every "
            f"inner step, not {config.method}"
        )
    if spec.classification and config.ways is None:
        raise ConfigError(
            f"{_setting(config, 'method')} needs a classification task, not {_setting(config, 'task')}"
        )
    if config.head is not None and not spec.transfer:
        takers = ", ".join(m for m in METHODS.names() if METHODS.get(m).transfer)
        raise ConfigError(f"{flag('head')} applies to {takers}, not {config.method}")
    if spec.always_first_order and config.first_order_until:
        raise ConfigError(
            f"{flag('first_order_until')} has no effect with {_setting(config, 'method')} "
            "(always first-order)"
        )
    if config.outer_optimizer == "sgd-annealed" and config.cosine_lr:
        raise ConfigError(
            f"{flag('cosine_lr')} and {flag('outer_optimizer')} sgd-annealed both anneal {flag('meta_lr')}; "
            "choose one"
        )
    if config.inner_all_points and not spec.all_points:
        raise ConfigError(
            f"{flag('inner_all_points')} applies to reptile, not {config.method} (whose meta-loss needs "
            "held-out query points)"
        )
    if config.multi_step_loss and config.inner_steps < 2:
        raise ConfigError(f"{flag('multi_step_loss')} needs {flag('inner_steps')} of at least 2")
    if config.select_on == "validation":
        missing = family.missing_validation(config)
        if missing:
            raise ConfigError(f"{flag('select_on')} validation needs a validation split; {missing}")
    elif config.select_every is not None or config.select_tasks != OPTIONS["select_tasks"].default:
        given = flag("select_every") if config.select_every is not None else flag("select_tasks")
        raise ConfigError(f"{given} applies to {flag('select_on')} validation")
    if config.compile == "on" and config.backend != "func":
        raise ConfigError(f"{flag('compile')} on applies to {flag('backend')} func only")
    try:
        family.check_config(config)
    except ValueError as err:
        raise ConfigError(str(err)) from None
