"""MAML (Finn et al. 2017) and first-order MAML."""

from metakit.experiments.methods import MethodSpec


def _build(first_order: bool):
    def build(config, model):
        from metakit.wrappers import MAML

        return MAML(model, lr=config.inner_lr, first_order=first_order)

    return build


MAML_SPEC = MethodSpec(_build(False), "MAML, second order")
FOMAML_SPEC = MethodSpec(_build(True), "first-order MAML", always_first_order=True)
