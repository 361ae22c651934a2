"""ANIL (Raghu et al. 2020): MAML whose inner loop adapts only the model's last layer."""

from metakit.experiments.methods import MethodSpec


def _build(config, model):
    from metakit.wrappers import ANIL

    return ANIL(model, lr=config.inner_lr)


ANIL_SPEC = MethodSpec(_build, "ANIL: inner loop on the last layer only")
