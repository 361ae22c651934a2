"""The MAML paper's baseline: joint training on all tasks, fine-tuned by SGD at test time."""

from metakit.experiments.methods import MethodSpec


def _build(config, model):
    from metakit.wrappers import Pretrain

    return Pretrain(model, lr=config.inner_lr)


PRETRAIN_SPEC = MethodSpec(_build, "joint pretraining baseline", maml_plus_plus=False)
