"""Omniglot (Lake et al. 2015), read from the official extracted folders or zips in ``--data-root``."""

from pathlib import Path
from typing import Optional

from metakit.experiments.tasks.vision.episodes import ImageEpisodes
from metakit.experiments.tasks.vision.omniglot_folder import load_omniglot, vinyals_splits
from metakit.experiments.util.errors import flag


class Omniglot(ImageEpisodes):
    """N-way K-shot classification of handwritten characters, resized to 28×28 (one channel); the
    rotations of every meta-train class are further classes (on by default, as in the MAML paper).

    ``--omniglot-split vinyals`` (the default): the split of Vinyals et al. (2016) that Prototypical
    Networks and most later papers report on, 1,028 meta-train, 172 validation and 423 meta-test
    characters named ``Alphabet/characterNN`` in the lists shipped with metakit, drawn from both
    ``images_background`` and ``images_evaluation``
    (:func:`~metakit.experiments.tasks.vision.omniglot_folder.vinyals_splits`).
    ``--omniglot-split background``: the official layout, ``images_background`` as meta-train and
    ``images_evaluation`` as meta-test, with no validation split (the MAML paper's).
    """

    protocol = {
        **ImageEpisodes.protocol,
        "iterations": 60_000,
        "rotations": True,
        "omniglot_split": "vinyals",
    }
    options = (*ImageEpisodes.options, "omniglot_split")

    def __init__(self, *args, split: str = "vinyals", **kwargs):
        super().__init__(*args, **kwargs)
        self.split = split

    @classmethod
    def from_config(cls, config) -> "Omniglot":
        """:meth:`ImageEpisodes.from_config`, with the config's split."""
        family = super().from_config(config)
        family.split = config.omniglot_split
        return family

    @classmethod
    def check_config(cls, config) -> None:
        """Omniglot needs ``--data-root``."""
        if not config.data_root:
            raise ValueError(
                f"{flag('task')} omniglot needs {flag('data_root')} DIR: a folder with images_background/ "
                "and images_evaluation/ (or their zips), optionally under omniglot-py/"
            )

    @classmethod
    def missing_validation(cls, config) -> Optional[str]:
        """``--omniglot-split background`` has no validation split."""
        if config.omniglot_split == "background":
            return f"{flag('omniglot_split')} background has none (use {flag('omniglot_split')} vinyals)"
        return None

    def load(self):
        """The meta-train, validation and meta-test characters of the chosen split (``"validation"``
        is ``None`` for ``background``, as the official layout has none)."""
        root = Path(self.data_root)
        data = load_omniglot(root, self.image_size)
        if self.split == "vinyals":
            return vinyals_splits(data, root)
        return {"train": data["background"], "validation": None, "test": data["evaluation"]}
