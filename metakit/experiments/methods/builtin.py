"""The built-in methods: one :class:`~metakit.experiments.methods.MethodSpec` each.

The wrappers are imported inside each ``build``, so that listing and checking methods stays cheap.
"""

from metakit.experiments.methods import MethodSpec


def _maml(first_order: bool):
    def build(config, model):
        from metakit.wrappers import MAML

        return MAML(model, lr=config.inner_lr, first_order=first_order)

    return build


def _enhanced(curvature: bool, layerwise_lr: bool):
    def build(config, model):
        from metakit.wrappers import MAMLEnhanced

        return MAMLEnhanced(
            model,
            lr=config.inner_lr,
            inner_steps=config.inner_steps,
            curvature=curvature,
            layerwise_lr=layerwise_lr,
            rate_form=config.rates,
        )

    return build


def _reptile(config, model):
    from metakit.wrappers import Reptile

    return Reptile(model, lr=config.inner_lr, all_points=config.inner_all_points)


def _metasgd(config, model):
    from metakit.wrappers import MetaSGD

    return MetaSGD(model, lr=config.inner_lr, rate_form=config.rates)


def _anil(config, model):
    from metakit.wrappers import ANIL

    return ANIL(model, lr=config.inner_lr)


def _protonet(config, model):
    from metakit.wrappers import ProtoNet

    return ProtoNet(model, ways=config.ways, lr=config.inner_lr)


def _finetune(config, model):
    from metakit.wrappers import Finetune

    return Finetune(model, head=config.head)


def _pretrain(config, model):
    from metakit.wrappers import Pretrain

    return Pretrain(model, lr=config.inner_lr)


# MAML (Finn et al. 2017) and first-order MAML.
MAML_SPEC = MethodSpec(_maml(False), "MAML, second order", rl=True)
FOMAML_SPEC = MethodSpec(_maml(True), "first-order MAML", always_first_order=True, rl=True)
# Reptile (Nichol et al. 2018); not wired for reinforcement learning.
REPTILE_SPEC = MethodSpec(
    _reptile, "Reptile", backends=("func", "l2l"), maml_plus_plus=False, all_points=True
)
# MAML Enhanced and its halves: Meta-Curvature (mc) and layerwise per-step learned rates (lslr).
MC_SPEC = MethodSpec(_enhanced(True, False), "MAML with Meta-Curvature", learned_inner_rule=True, rl=True)
LSLR_SPEC = MethodSpec(
    _enhanced(False, True), "MAML with layerwise, per-step learned rates", learned_inner_rule=True, rl=True
)
ENHANCED_SPEC = MethodSpec(
    _enhanced(True, True),
    "MAML Enhanced: Meta-Curvature and layerwise rates",
    learned_inner_rule=True,
    rl=True,
)
# Meta-SGD (Li et al. 2017). Its rates are learned for the trained number of inner steps: evaluation
# marks the steps beyond them, as for Meta-Curvature (the same learned rule serves every step).
METASGD_SPEC = MethodSpec(
    _metasgd, "Meta-SGD: learned per-parameter inner rates", learned_inner_rule=True, rl=True
)
# ANIL (Raghu et al. 2020): MAML whose inner loop adapts only the model's last layer.
ANIL_SPEC = MethodSpec(_anil, "ANIL: inner loop on the last layer only", rl=True)
# The MAML paper's baseline: joint training on all tasks, fine-tuned by SGD at test time (in RL: one
# policy trained by policy gradient on all tasks).
PRETRAIN_SPEC = MethodSpec(_pretrain, "joint pretraining baseline", maml_plus_plus=False, rl=True)
# Prototypical Networks (Snell et al. 2017): nearest class mean of the embeddings, no inner steps;
# the conv net without its head is the embedding.
PROTONET_SPEC = MethodSpec(
    _protonet, "Prototypical Networks: nearest class prototype", maml_plus_plus=False, classification=True
)
# Chen et al. 2019's Baseline and Baseline++: a classifier over every meta-train class, then a fresh
# head per task fit to its support set on the frozen body; not a meta-learner. Chen et al. fit
# the head for 100 iterations on the support set: its steps are passes.
FINETUNE_SPEC = MethodSpec(
    _finetune,
    "Baseline / Baseline++: a classifier over all meta-train classes, a fresh head per task",
    maml_plus_plus=False,
    classification=True,
    transfer=True,
    test_steps=100,
)
