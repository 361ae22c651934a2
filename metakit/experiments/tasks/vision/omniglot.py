"""Omniglot (Lake et al. 2015), read from the official extracted folders or zips in ``--data-root``."""

from pathlib import Path
from typing import Optional

from metakit.experiments.tasks.family import Reproduction, Variant
from metakit.experiments.tasks.vision.episodes import (
    FEW_SHOT_METHODS,
    REPTILE_AS_PUBLISHED,
    ImageEpisodes,
    published_line,
)
from metakit.experiments.tasks.vision.omniglot_folder import load_omniglot, vinyals_splits
from metakit.experiments.util.errors import flag

OMNIGLOT_PUBLISHED = {
    "5-way 1-shot": (
        "MAML 98.7 ± 0.4 (Finn et al. 2017, Table 1); ProtoNets 98.8 (Snell et al. 2017, Table 1, trained "
        "60-way); Reptile 95.39 ± 0.09 (Nichol et al. 2018, Table 2, not transductive); Meta-SGD 99.53 ± "
        "0.26 (Li et al. 2017, Table 2); MAML++ 99.47 (Antoniou et al. 2019; an ensemble of the best "
        "validation checkpoints, as the authors' code does)"
    ),
    "5-way 5-shot": (
        "MAML 99.9 ± 0.1 (Finn et al. 2017, Table 1); ProtoNets 99.7 (Snell et al. 2017, Table 1, trained "
        "60-way); Reptile 98.90 ± 0.10 (Nichol et al. 2018, Table 2, not transductive); Meta-SGD 99.93 ± "
        "0.09 (Li et al. 2017, Table 2); MAML++ 99.93 (Antoniou et al. 2019, ensemble as above)"
    ),
    "20-way 1-shot": (
        "MAML 95.8 ± 0.3 (Finn et al. 2017, Table 1); ProtoNets 96.0 (Snell et al. 2017, Table 1, trained "
        "60-way); Reptile 88.14 ± 0.15 (Nichol et al. 2018, Table 2, not transductive); Meta-SGD 95.93 ± "
        "0.38 (Li et al. 2017, Table 2); ANIL 96.2 ± 0.5 (Raghu et al. 2020, Table 2, ± a std over 3 "
        "seeds); MAML++ 97.65 (Antoniou et al. 2019, ensemble as above)"
    ),
}
"""Published Omniglot accuracies (%) per setting, each after its paper's own protocol and test steps
(MAML++'s and Reptile's were read from later papers' tables that quote them)."""


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
    reproduction = Reproduction(
        methods=FEW_SHOT_METHODS,
        method_overrides=REPTILE_AS_PUBLISHED,
        description=(
            "Omniglot (Vinyals split, rotations as further classes), 4-block conv net (64 filters), the "
            "MAML paper's settings: 60,000 iterations, α = 0.4, one inner step; meta-batch 32 at 5-way, "
            "16 at 20-way"
        ),
        variants=(
            Variant("5-way 1-shot", {"shots": 1}),
            Variant("5-way 5-shot", {"shots": 5}),
            Variant("20-way 1-shot", {"ways": 20, "shots": 1, "meta_batch": 16}),
        ),
        eval_shots=None,
        eval_steps=(0, 1, 2, 3, 5, 10),
        reported_steps=(0, 1, 5, 10),
        published_elsewhere={
            label: published_line(rows, "Omniglot") for label, rows in OMNIGLOT_PUBLISHED.items()
        },
    )

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
