"""Meta-SGD (Li et al. 2017): MAML with a learned inner rate for every parameter entry."""

from metakit.experiments.methods import MethodSpec


def _build(config, model):
    from metakit.wrappers import MetaSGD

    return MetaSGD(model, lr=config.inner_lr)


# Its rates are learned for the trained number of inner steps: evaluation marks the steps beyond them,
# as for Meta-Curvature (the same learned rule serves every step).
METASGD_SPEC = MethodSpec(_build, "Meta-SGD: learned per-parameter inner rates", learned_inner_rule=True)
