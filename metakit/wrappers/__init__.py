"""The algorithms, usable from any learn2learn-style training loop."""

from metakit.wrappers.anil import ANIL
from metakit.wrappers.curvature import MetaCurvatureTransform
from metakit.wrappers.engines.loop import TaskBatch, meta_backward
from metakit.wrappers.engines.vectorized import VectorizedEngine
from metakit.wrappers.enhanced import MAMLEnhanced
from metakit.wrappers.lslr import LayerwiseLR
from metakit.wrappers.maml import MAML
from metakit.wrappers.metasgd import MetaSGD
from metakit.wrappers.pretrain import Pretrain
from metakit.wrappers.reptile import Reptile

__all__ = [
    "ANIL",
    "MAML",
    "MAMLEnhanced",
    "LayerwiseLR",
    "MetaCurvatureTransform",
    "MetaSGD",
    "Pretrain",
    "Reptile",
    "TaskBatch",
    "VectorizedEngine",
    "meta_backward",
]
