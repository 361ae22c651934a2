"""The task-family registry: name → :class:`~metakit.experiments.tasks.family.TaskFamily` subclass.

A new family is one file in this package plus one line below; user code calls
:func:`register_family` instead. Entries load on first use, so listing names imports nothing.
"""

from metakit.experiments.util.registry import Registry

FAMILIES = Registry(
    "task family",
    {
        "sinusoid": "metakit.experiments.tasks.regression.sinusoid:Sinusoid",
        "harmonic": "metakit.experiments.tasks.regression.harmonic:Harmonic",
        "sinusoid-line": "metakit.experiments.tasks.regression.sinusoid_line:SinusoidLine",
        "glyphs": "metakit.experiments.tasks.vision.glyphs:Glyphs",
        "omniglot": "metakit.experiments.tasks.vision.omniglot:Omniglot",
        "mini-imagenet": "metakit.experiments.tasks.vision.mini_imagenet:MiniImageNet",
        "tiered-imagenet": "metakit.experiments.tasks.vision.tiered_imagenet:TieredImageNet",
        "cifar-fs": "metakit.experiments.tasks.vision.cifar100:CifarFS",
        "fc100": "metakit.experiments.tasks.vision.cifar100:FC100",
        "nav2d": "metakit.experiments.tasks.rl.nav2d:Nav2DFamily",
        "halfcheetah-dir": "metakit.experiments.tasks.rl.halfcheetah:HalfCheetahDirection",
        "halfcheetah-vel": "metakit.experiments.tasks.rl.halfcheetah:HalfCheetahVelocity",
    },
)


def register_family(name: str, family_class, replace: bool = False) -> None:
    """Make a :class:`~metakit.experiments.tasks.family.TaskFamily` subclass available as
    ``TrainConfig(task=name)`` (and to ``train``, ``evaluate`` and ``plots`` in this process)."""
    FAMILIES.register(name, family_class, replace=replace)


def build_family(config):
    """The family of ``config.task``, set up for ``config``."""
    return FAMILIES.get(config.task).from_config(config)
