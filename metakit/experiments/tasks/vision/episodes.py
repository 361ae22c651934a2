"""N-way K-shot image classification episodes drawn from a set of classes (glyphs, Omniglot, any images)."""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from metakit.experiments.tasks.family import ACCURACY, SupervisedFamily, held_out_generator
from metakit.experiments.tasks.vision.convnet import FusedNormEngine, accuracy, conv_net
from metakit.experiments.tasks.vision.image_sets import ClassImages, DataError
from metakit.experiments.util.errors import flag
from metakit.wrappers.engines.batch import TaskBatch


class ImageEpisodes(SupervisedFamily):
    """Few-shot classification: each task picks ``ways`` classes and ``shots`` + ``query`` images
    per class; labels 0..N−1 are assigned to the chosen classes in random order.

    Subclasses implement :meth:`load` (the meta-train, validation and meta-test classes), with
    images of any number of channels and any size, the same in every split. The model is the
    standard conv net (:func:`~metakit.experiments.tasks.vision.convnet.conv_net`: :attr:`blocks`
    blocks of :attr:`channels` filters) sized for them; with ``rotations`` every meta-train class
    also appears rotated by 90°, 180° and 270° as three new classes (square images only); with
    ``per_step_bn`` inner steps its batch norm is MAML++'s per-step one
    (:class:`~metakit.experiments.tasks.vision.convnet.PerStepBatchNorm2d`). Images are scaled
    from uint8 to [0, 1].
    """

    metric = ACCURACY
    reports_loss = True
    protocol = dict(ways=5, shots=1, inner_steps=1, inner_lr=0.4, meta_batch=32, meta_lr=1e-3)
    """The MAML paper's Omniglot settings; subclasses add ``iterations`` and ``rotations``."""
    eval_protocol = {"shots": (1, 5), "steps": (0, 1, 5)}
    options = ("shots", "query", "ways", "data_root", "rotations", "per_step_bn")
    channels = 64
    """Filters of every conv block."""
    blocks = 4
    """Conv blocks of the model."""
    eval_query = 10
    """Query images per class in held-out (and validation) episodes: fixed, so that every K sees the
    same query set; a family whose protocol tests on more (miniImageNet's 15) sets its own."""
    image_size = 28
    """Side that the glyph set is rendered at and Omniglot resized to (the model is sized from the data)."""
    eval_chunk = 2  # few episodes' activations stay in cache: 40-60 glyph episodes took 0.6-0.9× the
    # time at 2 that they took at 20 (one core, other work running; 5w1s, 5w5s and 20w1s)
    # measured (metakit bench, the four conv-net rows of the README, idle 2-core machine):
    # compilations of 46-206 s against 0.34-3.2 s saved per iteration over the eager engine, so
    # compiling pays off after 64-136 iterations; 500 leaves room for longer compilations
    # (enhanced, more inner steps)
    compile_after = 500
    bench_plan = dict(
        methods=("maml",),
        meta_batch=(32,),
        inner_steps=(1,),
        contenders=("func", "func-compiled", "l2l", "learn2learn"),
        repeats=3,
        min_time=1.0,
    )
    """``metakit bench``: the conv net at 5-way 1-shot, meta-batch 32, one inner step."""

    def __init__(
        self,
        ways: int,
        data_root: Optional[str] = None,
        rotations: bool = False,
        min_images: int = 2,
        per_step_bn: int = 0,
    ):
        self.ways = ways
        self.data_root = data_root
        self.rotations = rotations
        self.min_images = min_images
        self.per_step_bn = per_step_bn
        self._train: Optional[torch.Tensor] = None
        self._validation: Optional[ClassImages] = None
        self._test: Optional[ClassImages] = None

    @classmethod
    def from_config(cls, config) -> "ImageEpisodes":
        """The family for the config's ways, data root, rotations, shots + query and per-step batch
        norm (no data loaded)."""
        return cls(
            config.ways,
            config.data_root,
            bool(config.rotations),
            config.shots + config.query,
            per_step_bn=per_step_bn_steps(config),
        )

    def load(self) -> dict:
        """``{"train", "validation", "test"}`` :class:`ClassImages` with images of one shape;
        ``"validation"`` is ``None`` where the data has no validation split (a one-line
        :class:`DataError` if the data is bad)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Load the data once and check that it has enough classes and images for the config, one
        image shape, and square images for ``rotations``."""
        if self._test is not None:
            return
        splits = self.load()
        train, validation, test = splits["train"], splits["validation"], splits["test"]
        images = train.images
        if self.rotations:
            height, width = train.image_shape[1:]
            if height != width:
                where = f" in {self.data_root}" if self.data_root else ""
                raise DataError(
                    f"{flag('rotations')} needs square images; the meta-train images{where} are "
                    f"{height}×{width} px"
                )
            images = torch.cat([torch.rot90(images, k, dims=(3, 4)) for k in range(4)])
        named = [("meta-train", train, images.shape[0]), ("meta-test", test, test.num_classes)]
        if validation is not None:
            named.insert(1, ("validation", validation, validation.num_classes))
        for name, data, classes in named:
            if classes < self.ways:
                raise DataError(
                    f"the {name} split has {classes} classes; {self.ways}-way tasks need at least {self.ways}"
                )
            if data.image_shape != train.image_shape:
                raise DataError(
                    f"the {name} images are {_shape(data)}; the meta-train images are {_shape(train)}"
                )
        if self.min_images > train.images.shape[1]:
            raise DataError(
                f"{flag('shots')} + {flag('query')} = {self.min_images} images per class; the meta-train "
                f"classes have {train.images.shape[1]} images{_set_by(train)}"
            )
        self._train, self._validation, self._test = images, validation, test

    def sample(self, tasks, shots, query, generator, global_labels=False):
        """``tasks`` episodes from the meta-train classes: support ``[tasks, ways·shots, C, H, W]``,
        labels ``[tasks, ways·shots]`` (class-major), and the same for the query set. With
        ``global_labels`` an image's label is its meta-train class, ``0 … train_classes() − 1``
        (rotation ``k`` of class ``c`` is class ``c + k·C`` of the ``C`` unrotated ones)."""
        self.prepare()
        classes, per_class = self._train.shape[:2]
        chosen = torch.rand(tasks, classes, generator=generator).argsort(1)[:, : self.ways]
        picks = torch.rand(tasks, self.ways, per_class, generator=generator).argsort(2)[..., : shots + query]
        images = self._train[chosen[..., None], picks]  # [tasks, ways, shots + query, C, H, W]
        batch = _episodes(images, shots)
        if not global_labels:
            return batch
        label = lambda n: chosen[..., None].expand(-1, -1, n).flatten(1)  # noqa: E731
        return batch._replace(y_support=label(shots), y_query=label(query))

    def train_classes(self) -> int:
        """The meta-train classes, rotated ones included (loads the data first)."""
        self.prepare()
        return self._train.shape[0]

    @classmethod
    def missing_validation(cls, config) -> Optional[str]:
        """Image families have a validation split (:meth:`load` says where the data has none)."""
        return None

    def held_out(self, tasks: int, max_shots: int, seed: int, split: str = "test") -> "EpisodeHeldOut":
        """``tasks`` fixed episodes from the meta-test classes (or, with ``split="validation"``, the
        validation classes) with up to ``max_shots`` support and :attr:`eval_query` query images per
        class; each episode has its own random stream."""
        data, count = self._split_for(max_shots, split).images, self.eval_query
        per_class = data.shape[1]
        support, query = [], []
        for t in range(tasks):
            generator = held_out_generator(seed, t, 0)
            chosen = torch.randperm(data.shape[0], generator=generator)[: self.ways]
            order = torch.stack([torch.randperm(per_class, generator=generator) for _ in range(self.ways)])
            images = data[chosen[:, None], order]  # [ways, per_class, C, H, W]
            support.append(images[:, :max_shots])
            query.append(images[:, per_class - count :])
        return EpisodeHeldOut(torch.stack(support), torch.stack(query))

    def check_held_out(self, shots: int) -> None:
        """A one-line ``DataError`` if the meta-test classes have too few images for ``shots`` support
        and :attr:`eval_query` query images per class (loads the data first)."""
        self._split_for(shots, "test")

    def _split_for(self, max_shots: int, split: str) -> ClassImages:
        """The prepared ``split`` ("test" or "validation"), checked to have ``max_shots`` +
        :attr:`eval_query` images per class (one-line ``DataError`` otherwise)."""
        self.prepare()
        episodes, classes, split_data = {
            "test": ("held-out", "meta-test", self._test),
            "validation": ("validation", "validation", self._validation),
        }[split]
        if split_data is None:
            where = f" in {self.data_root}" if self.data_root else ""
            raise DataError(f"the data{where} has no {classes} split")
        count, per_class = self.eval_query, split_data.images.shape[1]
        if max_shots + count > per_class:
            most = per_class - count
            limit = (
                f"so {flag('shots')} can be at most {most}"
                if most >= 1
                else f"too few for any {flag('shots')} (at least {count + 1} are needed)"
            )
            raise DataError(
                f"{episodes} episodes use {flag('shots')} + {count} query images per class; the {classes} "
                f"classes have {per_class} images{_set_by(split_data)}, {limit}"
            )
        return split_data

    def build_model(self, outputs=None):
        """The conv net for the data's channels and size, with a ``ways``-way head (``outputs``-way
        if given; loads the data first, see :meth:`prepare`)."""
        self.prepare()
        in_channels, height, width = self._test.image_shape
        return conv_net(
            outputs or self.ways, in_channels, (height, width), self.channels, self.blocks, self.per_step_bn
        )

    def meta_engine(self, algo, backend: str, compile: bool):
        """The engine of :class:`SupervisedFamily`; the per-task backends (``l2l``, ``higher``) run
        the conv net's batch norm as torch's fused kernel
        (:class:`~metakit.experiments.tasks.vision.convnet.FusedNormEngine`)."""
        engine = super().meta_engine(algo, backend, compile)
        return engine if backend == "func" else FusedNormEngine(engine, algo)

    def loss(self, prediction, target):
        """Cross-entropy."""
        return F.cross_entropy(prediction, target)

    def row_fields(self) -> dict:
        """Rows lead with the episodes' ``ways``."""
        return {"ways": self.ways}

    def score(self, prediction, target):
        """Accuracy."""
        return accuracy(prediction, target)


def per_step_bn_steps(config) -> int:
    """The inner steps the conv net's per-step batch norm has entries for: the config's
    ``inner_steps`` with ``--per-step-bn``, else 0 (none)."""
    return config.inner_steps if config.per_step_bn else 0


def _set_by(data: ClassImages) -> str:
    """`` (the fewest of any class, in FOLDER)`` where the data says which class that is, else ''."""
    return f" (the fewest of any class, in {data.fewest})" if data.fewest else ""


def _shape(data: ClassImages) -> str:
    """``"channels×height×width"`` of the images, for messages."""
    return "×".join(map(str, data.image_shape)) + " (channels×height×width)"


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → float in [0, 1]."""
    return images.float() / 255.0


def _labels(tasks: int, ways: int, per_class: int) -> torch.Tensor:
    return torch.arange(ways).repeat_interleave(per_class).expand(tasks, -1)


def _episodes(images: torch.Tensor, shots: int) -> TaskBatch:
    """Split ``[tasks, ways, n, C, H, W]`` images into a support (first ``shots``) and a query batch."""
    tasks, ways = images.shape[:2]
    support = images[:, :, :shots].flatten(1, 2)
    query = images[:, :, shots:].flatten(1, 2)
    return TaskBatch(
        _to_float(support),
        _labels(tasks, ways, shots),
        _to_float(query),
        _labels(tasks, ways, images.shape[2] - shots),
    )


@dataclass(frozen=True)
class EpisodeHeldOut:
    """Held-out episodes: ``support`` ``[tasks, ways, max_shots, C, H, W]`` and ``query``
    ``[tasks, ways, eval_query, C, H, W]`` (uint8); ``batch(K)`` uses the first K support images."""

    support: torch.Tensor
    query: torch.Tensor

    def batch(self, shots: int) -> TaskBatch:
        """The episodes with ``shots`` support images per class."""
        tasks, ways = self.support.shape[:2]
        return TaskBatch(
            _to_float(self.support[:, :, :shots].flatten(1, 2)),
            _labels(tasks, ways, shots),
            _to_float(self.query.flatten(1, 2)),
            _labels(tasks, ways, self.query.shape[2]),
        )


FEW_SHOT_METHODS = (
    "maml",
    "fomaml",
    "reptile",
    "mc",
    "lslr",
    "enhanced",
    "metasgd",
    "anil",
    "protonet",
    "finetune",
)
"""What ``metakit reproduce`` trains on an image family unless ``--methods`` says otherwise: the
MAML family and the field's baselines (``pretrain``, trained on per-episode labels, is left out)."""


REPTILE_AS_PUBLISHED = {"reptile": dict(inner_steps=5, outer_optimizer="sgd-annealed", meta_lr=1.0)}
"""The image reproductions' ``method_overrides``: Reptile after Nichol et al. (2018) — 5 inner
steps (their Omniglot training's count) and SGD outer steps with ε annealed linearly from 1 to 0
— where the family's protocol of one inner step would make it joint training on the tasks' losses,
which learns next to nothing here (miniImageNet's protocol has 5 steps already; only the outer
rule changes there). Not matched: the paper's inner loop is Adam on shuffled mini-batches of 10
drawn from 10 (Omniglot) or 15 (miniImageNet) training shots per class, with 5 tasks per
meta-batch; here the inner steps are SGD at the protocol's α on the support set, with the
protocol's meta-batch. (``inner_all_points`` is left off: its blocks of support-size points,
taken in order from the class-by-class support and query sets, would hold some classes only.)"""


def published_line(rows: str, data: str) -> str:
    """The line a reproduction prints under a table for published numbers that cannot be its rows
    (``rows``: "METHOD VALUE (SOURCE); ..."; ``data``: where they were measured)."""
    return f"Published on {data} (accuracy %, each paper's own protocol and test steps): {rows}."
