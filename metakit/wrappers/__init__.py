"""The algorithms, usable from any learn2learn-style training loop, and the engines that train them."""

from metakit.wrappers.anil import ANIL
from metakit.wrappers.base import Learner, MetaLearner, Objective
from metakit.wrappers.curvature import MetaCurvatureTransform
from metakit.wrappers.engines import LoopEngine, TaskBatch, VectorizedEngine, make_engine, meta_backward
from metakit.wrappers.enhanced import MAMLEnhanced
from metakit.wrappers.finetune import Finetune
from metakit.wrappers.lslr import LayerwiseLR
from metakit.wrappers.maml import MAML
from metakit.wrappers.metasgd import MetaSGD
from metakit.wrappers.pretrain import Pretrain
from metakit.wrappers.protonet import ProtoNet
from metakit.wrappers.reptile import Reptile

__all__ = [
    "ANIL",
    "Finetune",
    "Learner",
    "LoopEngine",
    "MAML",
    "MAMLEnhanced",
    "LayerwiseLR",
    "MetaCurvatureTransform",
    "MetaLearner",
    "MetaSGD",
    "Objective",
    "Pretrain",
    "ProtoNet",
    "Reptile",
    "TaskBatch",
    "VectorizedEngine",
    "make_engine",
    "meta_backward",
]
