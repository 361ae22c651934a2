"""The method registry: name → :class:`MethodSpec` (how to build the algorithm, and what applies).

A new method is one file in this package defining a :class:`MethodSpec`, plus one line below.
Method files import the wrappers inside ``build``, so listing and checking methods stays cheap.
"""

from dataclasses import dataclass
from typing import Callable

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
    """

    build: Callable
    summary: str
    backends: tuple = BACKENDS
    maml_plus_plus: bool = True
    always_first_order: bool = False
    learned_inner_rule: bool = False
    all_points: bool = False


METHODS = Registry(
    "method",
    {
        "maml": "metakit.experiments.methods.maml:MAML_SPEC",
        "fomaml": "metakit.experiments.methods.maml:FOMAML_SPEC",
        "reptile": "metakit.experiments.methods.reptile:REPTILE_SPEC",
        "mc": "metakit.experiments.methods.enhanced:MC_SPEC",
        "lslr": "metakit.experiments.methods.enhanced:LSLR_SPEC",
        "enhanced": "metakit.experiments.methods.enhanced:ENHANCED_SPEC",
        "metasgd": "metakit.experiments.methods.metasgd:METASGD_SPEC",
        "anil": "metakit.experiments.methods.anil:ANIL_SPEC",
        "pretrain": "metakit.experiments.methods.pretrain:PRETRAIN_SPEC",
    },
)


def build_algorithm(config, model):
    """The algorithm of ``config.method`` wrapped around ``model``."""
    return METHODS.get(config.method).build(config, model)
