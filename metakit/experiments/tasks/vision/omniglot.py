"""Omniglot (Lake et al. 2015), read from the official extracted folders or zips in ``--data-root``."""

from pathlib import Path

from metakit.experiments.tasks.vision.episodes import ImageEpisodes
from metakit.experiments.tasks.vision.omniglot_folder import load_omniglot
from metakit.experiments.util.errors import flag


class Omniglot(ImageEpisodes):
    """N-way K-shot classification of handwritten characters: ``images_background`` is meta-train,
    ``images_evaluation`` meta-test; images are resized to 28×28 (one channel), and the rotations of
    every meta-train class are further classes (on by default, as in the MAML paper).

    The official background/evaluation layout has no validation split, so there is none here.
    """

    protocol = {**ImageEpisodes.protocol, "iterations": 60_000, "rotations": True}

    @classmethod
    def check_config(cls, config) -> None:
        """Omniglot needs ``--data-root``."""
        if not config.data_root:
            raise ValueError(
                f"{flag('task')} omniglot needs {flag('data_root')} DIR: a folder with images_background/ "
                "and images_evaluation/ (or their zips), optionally under omniglot-py/"
            )

    def load(self):
        """The background (meta-train) and evaluation (meta-test) alphabets; ``"validation"`` is
        ``None``, as the official layout has no validation split."""
        splits = load_omniglot(Path(self.data_root), self.image_size)
        return {"train": splits["background"], "validation": None, "test": splits["evaluation"]}
