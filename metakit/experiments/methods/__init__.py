"""The method registry: name → :class:`MethodSpec` (how to build the algorithm, and what applies).

A new method is one file defining a learner (a :class:`~metakit.wrappers.base.Learner` subclass)
and a :class:`MethodSpec`, plus one :func:`register_method` call (or one line below for a built-in
one). Specs import the wrappers inside ``build``, so listing and checking methods stays cheap.
"""

from dataclasses import dataclass
from typing import Callable, Optional

from metakit.experiments.util.errors import MetakitError, flag
from metakit.experiments.util.registry import Registry

BACKENDS = ("func", "l2l", "higher")


@dataclass(frozen=True)
class MethodSpec:
    """What the rest of metakit needs to know about a method.

    Attributes:
        build: ``build(config, model) -> algorithm`` (an ``nn.Module`` with ``module``,
            ``inner_updates``, ``clone`` and ``adapt``).
        summary: one line for help texts and the README.
        backends: the backends it runs on.
        maml_plus_plus: whether ``--multi-step-loss`` and ``--first-order-until`` apply.
        always_first_order: first-order by construction (``--first-order-until`` is meaningless).
        learned_inner_rule: its inner rule is learned per step for ``inner_steps`` steps (evaluation
            marks the steps beyond them; there the last trained step's rule is reused).
        all_points: ``--inner-all-points`` applies (its meta-update holds no query set out).
        rl: it runs on reinforcement-learning families (its inner rule is ``inner_updates`` on a
            policy gradient, or it is the ``JOINT`` pretraining baseline).
        classification: it runs on classification families only (its build reads ``config.ways``).
        transfer: it trains a classifier over every meta-train class (``--head``): its batches label
            each example by its meta-train class (``family.sample(..., global_labels=True)``) and its
            model's head has one output per meta-train class (``family.train_classes()``).
        test_steps: the adaptation its own paper tests with, where the family's reported steps
            leave it out (``metakit reproduce`` evaluates and tables it too), or ``None``.
    """

    build: Callable
    summary: str
    backends: tuple = BACKENDS
    maml_plus_plus: bool = True
    always_first_order: bool = False
    learned_inner_rule: bool = False
    all_points: bool = False
    rl: bool = False
    classification: bool = False
    transfer: bool = False
    test_steps: Optional[int] = None


METHODS = Registry(
    "method",
    {
        "maml": "metakit.experiments.methods.builtin:MAML_SPEC",
        "fomaml": "metakit.experiments.methods.builtin:FOMAML_SPEC",
        "reptile": "metakit.experiments.methods.builtin:REPTILE_SPEC",
        "mc": "metakit.experiments.methods.builtin:MC_SPEC",
        "lslr": "metakit.experiments.methods.builtin:LSLR_SPEC",
        "enhanced": "metakit.experiments.methods.builtin:ENHANCED_SPEC",
        "metasgd": "metakit.experiments.methods.builtin:METASGD_SPEC",
        "anil": "metakit.experiments.methods.builtin:ANIL_SPEC",
        "pretrain": "metakit.experiments.methods.builtin:PRETRAIN_SPEC",
        "protonet": "metakit.experiments.methods.builtin:PROTONET_SPEC",
        "finetune": "metakit.experiments.methods.builtin:FINETUNE_SPEC",
    },
)


def build_algorithm(config, family, device="cpu"):
    """The algorithm of ``config.method`` around a freshly initialised model of ``family`` on
    ``device`` (the seed is the caller's); a ``transfer`` method's model has a head over the
    family's meta-train classes."""
    spec = METHODS.get(config.method)
    if not spec.transfer:
        return spec.build(config, family.build_model().to(device))
    classes = family.train_classes()
    if classes is None:
        raise MetakitError(
            f"{flag('method')} {config.method} trains on every meta-train class, but the batches of "
            f"{flag('task')} {config.task} are labelled within each task only"
        )
    return spec.build(config, family.build_model(classes).to(device))


def register_method(name: str, spec: MethodSpec, replace: bool = False) -> None:
    """Make ``spec`` available as ``--method name`` (``TrainConfig(method=name)``, train, eval,
    plot, reproduce and bench) in this process."""
    METHODS.register(name, spec, replace=replace)
