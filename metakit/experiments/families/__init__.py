"""The task-family registry: name → :class:`~metakit.experiments.families.base.TaskFamily` subclass.

A new family is one file in this package plus one line below; user code calls
:func:`register_family` instead. Entries load on first use, so listing names imports nothing.
"""

from metakit.experiments.registry import Registry

FAMILIES = Registry(
    "task family",
    {
        "sinusoid": "metakit.experiments.families.sinusoid:Sinusoid",
        "harmonic": "metakit.experiments.families.harmonic:Harmonic",
        "sinusoid-line": "metakit.experiments.families.sinusoid_line:SinusoidLine",
        "glyphs": "metakit.experiments.families.glyphs:Glyphs",
        "omniglot": "metakit.experiments.families.omniglot:Omniglot",
        "nav2d": "metakit.experiments.families.nav2d:Nav2DFamily",
        "halfcheetah-dir": "metakit.experiments.families.halfcheetah:HalfCheetahDirection",
        "halfcheetah-vel": "metakit.experiments.families.halfcheetah:HalfCheetahVelocity",
    },
)


def register_family(name: str, family_class, replace: bool = False) -> None:
    """Make a :class:`~metakit.experiments.families.base.TaskFamily` subclass available as
    ``TrainConfig(task=name)`` (and to ``train``, ``evaluate`` and ``plots`` in this process)."""
    FAMILIES.register(name, family_class, replace=replace)


def build_family(config):
    """The family of ``config.task``, set up for ``config``."""
    return FAMILIES.get(config.task).from_config(config)
