"""Glyphs: an offline stand-in for Omniglot, rendered from the fonts that ship with matplotlib."""

from pathlib import Path

from metakit.experiments.tasks.family import Reproduction, Variant
from metakit.experiments.tasks.vision.episodes import (
    FEW_SHOT_METHODS,
    REPTILE_AS_PUBLISHED,
    ImageEpisodes,
    published_line,
)
from metakit.experiments.tasks.vision.glyph_set import glyph_splits, load_glyphs
from metakit.experiments.tasks.vision.omniglot import OMNIGLOT_PUBLISHED
from metakit.experiments.util.errors import flag

DIFFERENT = "a different data set from these glyphs, for scale only"


class Glyphs(ImageEpisodes):
    """N-way K-shot classification of Unicode characters, each drawn in several fonts with random
    affine jitter and stroke width (see :mod:`metakit.experiments.tasks.vision.glyph_set`).

    Meta-train, validation and meta-test classes come from disjoint alphabets (Unicode scripts,
    see :func:`~metakit.experiments.tasks.vision.glyph_set.glyph_splits`); the set is rendered once
    into ``--data-root`` (default: the user's cache folder) and loaded from there.
    """

    protocol = {**ImageEpisodes.protocol, "iterations": 1000, "rotations": False}
    reproduction = Reproduction(
        methods=FEW_SHOT_METHODS,
        method_overrides=REPTILE_AS_PUBLISHED,
        description=(
            "Glyphs, 4-block conv net (64 filters), MAML's Omniglot settings sized for a CPU: "
            "1,000 iterations; 5-way with meta-batch 32 at 1-shot and 8 at 5-shot (about the same "
            "images per iteration), 20-way 1-shot with meta-batch 16"
        ),
        variants=(
            Variant("1-shot", {"shots": 1}),
            Variant("5-shot", {"shots": 5, "meta_batch": 8}),
            Variant("20-way 1-shot", {"ways": 20, "shots": 1, "meta_batch": 16}),
        ),
        eval_shots=None,
        eval_steps=(0, 1, 2, 3, 5, 10),
        reported_steps=(0, 1, 5, 10),
        published_elsewhere={  # the same number of ways and shots on Omniglot
            label: published_line(OMNIGLOT_PUBLISHED[setting], f"Omniglot, {setting}; {DIFFERENT}")
            for label, setting in (
                ("1-shot", "5-way 1-shot"),
                ("5-shot", "5-way 5-shot"),
                ("20-way 1-shot", "20-way 1-shot"),
            )
        },
    )

    @classmethod
    def check_config(cls, config) -> None:
        """A ``--data-root`` must be a folder, or a path where one can be made."""
        if config.data_root:
            root = Path(config.data_root)
            existing = next(p for p in [root, *root.absolute().parents] if p.exists())
            if not existing.is_dir():
                raise ValueError(
                    f"{flag('data_root')} {root}: {existing} is not a folder; give a folder for the "
                    "rendered glyph set (it is made if missing)"
                )

    def load(self):
        """The glyph set's meta-train, validation and meta-test alphabets."""
        return glyph_splits(load_glyphs(Path(self.data_root) if self.data_root else None, self.image_size))
