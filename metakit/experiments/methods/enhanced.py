"""MAML Enhanced and its halves: Meta-Curvature (mc) and layerwise per-step learning rates (lslr)."""

from metakit.experiments.methods import MethodSpec


def _build(curvature: bool, layerwise_lr: bool):
    def build(config, model):
        from metakit.wrappers import MAMLEnhanced

        return MAMLEnhanced(
            model,
            lr=config.inner_lr,
            inner_steps=config.inner_steps,
            curvature=curvature,
            layerwise_lr=layerwise_lr,
        )

    return build


MC_SPEC = MethodSpec(_build(True, False), "MAML with Meta-Curvature", learned_inner_rule=True)
LSLR_SPEC = MethodSpec(
    _build(False, True), "MAML with layerwise, per-step learned rates", learned_inner_rule=True
)
ENHANCED_SPEC = MethodSpec(
    _build(True, True), "MAML Enhanced: Meta-Curvature and layerwise rates", learned_inner_rule=True
)
