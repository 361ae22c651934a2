"""Reptile (Nichol et al. 2018)."""

from metakit.experiments.methods import MethodSpec


def _build(config, model):
    from metakit.wrappers import Reptile

    return Reptile(model, lr=config.inner_lr, all_points=config.inner_all_points)


REPTILE_SPEC = MethodSpec(_build, "Reptile", backends=("func", "l2l"), maml_plus_plus=False, all_points=True)
