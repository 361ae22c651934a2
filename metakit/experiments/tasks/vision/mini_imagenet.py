"""miniImageNet (Vinyals et al. 2016) in Ravi & Larochelle's split, with the MAML paper's protocol."""

from pathlib import Path

from metakit.experiments.tasks.family import Reproduction, Variant
from metakit.experiments.tasks.vision.episodes import (
    FEW_SHOT_METHODS,
    REPTILE_AS_PUBLISHED,
    ImageEpisodes,
    published_line,
)
from metakit.experiments.tasks.vision.mini_imagenet_files import LAYOUT, load_mini_imagenet
from metakit.experiments.util.errors import flag


class MiniImageNet(ImageEpisodes):
    """N-way K-shot classification of 84×84 colour images: 64 meta-train, 16 validation and 20
    meta-test ImageNet classes of 600 images (Ravi & Larochelle 2017), read from the pickled caches
    or Ravi's ``images/`` folder in ``--data-root``
    (:func:`~metakit.experiments.tasks.vision.mini_imagenet_files.load_mini_imagenet`).

    The MAML paper's protocol (Finn et al. 2017, §5.2): 4 conv blocks of 32 filters with max-pool,
    α = 0.01, 5 inner steps in training, meta-batch 4 (at 1-shot), 15 query images per class (in
    training and in held-out episodes), 60,000 iterations; evaluation reports up to 10 inner steps.
    """

    protocol = {
        **ImageEpisodes.protocol,
        "inner_lr": 0.01,
        "inner_steps": 5,
        "meta_batch": 4,
        "iterations": 60_000,
        "rotations": False,
        "query": 15,
    }
    eval_protocol = {"shots": (1, 5), "steps": (0, 1, 5, 10)}
    eval_query = 15
    """The MAML paper's 15 query images per class, at test as in training."""
    channels = 32
    image_size = 84
    eval_chunk = 1  # 84 px episodes one at a time: 0.6-0.8× the time of 2 to 8 at once (8 5w5s, one core)
    bench_plan = {**ImageEpisodes.bench_plan, "meta_batch": (4,), "inner_steps": (5,)}
    """``metakit bench``: the MAML paper's miniImageNet setting, 5-way 1-shot, meta-batch 4, 5 steps."""
    reproduction = Reproduction(
        methods=FEW_SHOT_METHODS,
        method_overrides=REPTILE_AS_PUBLISHED,
        description=(
            "miniImageNet (Ravi & Larochelle split), 4-block conv net (32 filters), the MAML paper's "
            "settings: 60,000 iterations, α = 0.01, 5 inner steps, 15 query images per class; meta-batch "
            "4 at 1-shot, 2 at 5-shot"
        ),
        variants=(Variant("1-shot", {"shots": 1}), Variant("5-shot", {"shots": 5, "meta_batch": 2})),
        eval_shots=None,
        eval_steps=(0, 1, 5, 10),
        reported_steps=(0, 1, 5, 10),
        published_elsewhere={
            "1-shot": published_line(
                "MAML 48.70 ± 1.84 and first-order MAML 48.07 ± 1.75 (Finn et al. 2017, Table 1); "
                "ProtoNets 49.42 ± 0.78 (Snell et al. 2017, Table 2, trained 30-way); Meta-SGD 50.47 ± 1.87 "
                "(Li et al. 2017, Table 3); ANIL 46.7 ± 0.4 (Raghu et al. 2020, Table 2, ± a std over 3 "
                "seeds); Baseline 42.11 and Baseline++ 48.24 (Chen et al. 2019, Conv4); Reptile 47.07 ± "
                "0.26 (Nichol et al. 2018, Table 1, not transductive); MAML++ 52.15 ± 0.26 (Antoniou et al. "
                "2019, an ensemble of the best validation checkpoints, ± a std over 3 seeds)",
                "miniImageNet",
            ),
            "5-shot": published_line(
                "MAML 63.11 ± 0.92 and first-order MAML 63.15 ± 0.91 (Finn et al. 2017, Table 1); "
                "ProtoNets 68.20 ± 0.66 (Snell et al. 2017, Table 2, trained 20-way); Meta-SGD 64.03 ± 0.94 "
                "(Li et al. 2017, Table 3); ANIL 61.5 ± 0.5 (Raghu et al. 2020, Table 2, ± a std over 3 "
                "seeds); Baseline 62.53 and Baseline++ 66.43 (Chen et al. 2019, Conv4); Reptile 62.74 ± "
                "0.37 (Nichol et al. 2018, Table 1, not transductive); MAML++ 68.32 ± 0.44 (Antoniou et al. "
                "2019, ensemble as above)",
                "miniImageNet",
            ),
        },
    )

    @classmethod
    def check_config(cls, config) -> None:
        """miniImageNet needs ``--data-root``."""
        if not config.data_root:
            raise ValueError(f"{flag('task')} mini-imagenet needs {flag('data_root')} DIR holding {LAYOUT}")

    def load(self):
        """The meta-train, validation and meta-test classes; every class must have ``shots + query``
        images."""
        return load_mini_imagenet(Path(self.data_root), self.min_images)
