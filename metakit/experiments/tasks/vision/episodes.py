"""N-way K-shot image classification episodes drawn from a set of classes (glyphs, Omniglot, any images)."""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from metakit.experiments.tasks.family import ACCURACY, SupervisedFamily, held_out_generator
from metakit.experiments.tasks.vision.convnet import accuracy, conv_net
from metakit.experiments.tasks.vision.image_sets import ClassImages, DataError
from metakit.experiments.util.errors import flag
from metakit.wrappers.engines.batch import TaskBatch

EVAL_QUERY = 10
"""Query images per class in held-out episodes (fixed, so every K sees the same query set)."""


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
    image_size = 28
    """Side that the glyph set is rendered at and Omniglot resized to (the model is sized from the data)."""
    eval_chunk = 20  # 20 episodes of 5-way 5-shot: ~1,500 images through the conv net at once
    compile_after = 500  # an iteration costs about a second eagerly; compiling saves ~30% of it
    bench_plan = dict(
        methods=("maml",),
        meta_batch=(32,),
        inner_steps=(1,),
        contenders=("func", "func-compiled", "learn2learn"),
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
                "classes have "
                f"{train.images.shape[1]}"
            )
        self._train, self._test = images, test

    def sample(self, tasks, shots, query, generator):
        """``tasks`` episodes from the meta-train classes: support ``[tasks, ways·shots, C, H, W]``,
        labels ``[tasks, ways·shots]`` (class-major), and the same for the query set."""
        self.prepare()
        classes, per_class = self._train.shape[:2]
        chosen = torch.rand(tasks, classes, generator=generator).argsort(1)[:, : self.ways]
        picks = torch.rand(tasks, self.ways, per_class, generator=generator).argsort(2)[..., : shots + query]
        images = self._train[chosen[..., None], picks]  # [tasks, ways, shots + query, C, H, W]
        return _episodes(images, shots)

    def held_out(self, tasks: int, max_shots: int, seed: int) -> "EpisodeHeldOut":
        """``tasks`` fixed episodes from the meta-test classes with up to ``max_shots`` support and
        :data:`EVAL_QUERY` query images per class; each episode has its own random stream."""
        self.prepare()
        data = self._test.images
        per_class = data.shape[1]
        if max_shots + EVAL_QUERY > per_class:
            raise DataError(
                f"held-out episodes use {EVAL_QUERY} query images per class; the meta-test classes have "
                f"{per_class} images, so {flag('shots')} can be at most {per_class - EVAL_QUERY}"
            )
        support, query = [], []
        for t in range(tasks):
            generator = held_out_generator(seed, t, 0)
            chosen = torch.randperm(data.shape[0], generator=generator)[: self.ways]
            order = torch.stack([torch.randperm(per_class, generator=generator) for _ in range(self.ways)])
            images = data[chosen[:, None], order]  # [ways, per_class, C, H, W]
            support.append(images[:, :max_shots])
            query.append(images[:, per_class - EVAL_QUERY :])
        return EpisodeHeldOut(torch.stack(support), torch.stack(query))

    def build_model(self):
        """The conv net for the data's channels and size, with a ``ways``-way head (loads the data
        first, see :meth:`prepare`)."""
        self.prepare()
        in_channels, height, width = self._test.image_shape
        return conv_net(self.ways, in_channels, (height, width), self.channels, self.blocks, self.per_step_bn)

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
    ``[tasks, ways, EVAL_QUERY, C, H, W]`` (uint8); ``batch(K)`` uses the first K support images."""

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
