"""The learner contract: what every engine needs from an algorithm, and one base that provides it.

An engine (learn2learn loop, ``higher``, the vectorised ``torch.func`` engine, the RL objective)
asks an algorithm four things and never tests its class:

* ``objective``: what meta-training optimises (:class:`Objective`);
* ``adapted_names``: which of the model's parameters the inner loop adapts, by name;
* ``inner_updates(grads, step)``: the inner rule, a pure map from the adapted parameters'
  gradients to the steps subtracted from them;
* ``describe()``: one line on what the algorithm learned besides the model, for reports.

Two things an engine may ask of the model: a model whose forward takes the inner step
(``takes_step = True``: ``forward(x, step)``) is called with the number of inner steps its
parameters have taken (0 before adapting; the query forward after k steps gets k), so that it can
keep per-step state (:func:`step_kwargs`); and a submodule that is a :class:`MetaOnly` holds
meta-learned parameters that no inner loop adapts (:func:`adaptable_names`) and buffers that its
forward never writes (e.g. MAML++'s per-step batch norm).

:class:`MetaLearner` names that contract as a ``typing.Protocol``; :class:`Learner` implements it
once, with learn2learn's ``clone()`` / ``adapt(loss)`` surface, for every metakit algorithm except
:class:`~metakit.wrappers.maml.MAML`, which stays a subclass of learn2learn's own ``MAML``.
"""

import copy
import enum
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from metakit._l2l import learn2learn as l2l
from metakit.wrappers.rules import scaled_updates


class Objective(enum.Enum):
    """What an algorithm's meta-training optimises; engines dispatch on it.

    * ``UNROLLED``: the query loss after a differentiable inner loop of ``inner_updates`` (the
      MAML family); second order unless ``first_order``.
    * ``INTERPOLATION``: Reptile's: the inner loop is not differentiated; the meta-gradient is
      ``θ − mean φ̃`` over the adapted parameters φ̃. The learner also gives
      ``inner_points(task, step)``, the points each inner step trains on.
    * ``JOINT``: the model's own loss on every point of every task, with no inner loop (the
      pretraining baseline); at test time it adapts by SGD like the others.
    * ``METRIC``: the learner maps a task's support set to query predictions without gradient
      steps, ``predict(forward, x_support, y_support, x_query)`` with ``forward`` the model as a
      function (e.g. class prototypes); the meta-loss is the task loss of those predictions.
    * ``TRANSFER``: trained like ``JOINT``, but the batch labels every example by its meta-train
      class (the family samples it with ``global_labels=True``) and the model's head has one output
      per meta-train class; at test time that head is dropped and the learner fits a fresh one to
      each task's support set on the frozen features, ``head_curves(x_support, y_support, x_query,
      steps)``: the query logits after 0, 1, …, ``steps`` steps of fitting (the fine-tuning
      baselines).
    """

    UNROLLED = "unrolled"
    INTERPOLATION = "interpolation"
    JOINT = "joint"
    METRIC = "metric"
    TRANSFER = "transfer"

    @property
    def differentiates_inner_loop(self) -> bool:
        """Whether the meta-gradient flows through adaptation (else clones are detached copies)."""
        return self in (Objective.UNROLLED, Objective.METRIC)


@runtime_checkable
class MetaLearner(Protocol):
    """What engines need from an algorithm (see the module docstring)."""

    module: nn.Module
    first_order: bool
    objective: Objective

    @property
    def adapted_names(self) -> tuple:
        """Names (as in ``module.named_parameters()``) of the parameters the inner loop adapts."""

    def inner_updates(self, grads: Sequence[torch.Tensor], step: int) -> list:
        """The steps subtracted from the adapted parameters at inner step ``step``."""

    def describe(self) -> str:
        """One line on what was learned besides the model ('' if nothing)."""


def parameter_names(module: nn.Module) -> tuple:
    """Names of ``module``'s parameters, in ``parameters()`` order."""
    return tuple(name for name, _ in module.named_parameters())


class MetaOnly(nn.Module):
    """A part of a model that the inner loop leaves alone: its parameters are learned by the outer
    loop only (no engine adapts them, see :func:`adaptable_names`), and its forward reads its
    buffers without writing them (they change between meta-batches, so that tasks can be
    vectorised), e.g. MAML++'s per-step batch-norm weights and running statistics."""


def meta_only_names(module: nn.Module, kind: str = "parameters") -> set:
    """Names (as in ``module.named_parameters()`` or, for ``kind="buffers"``, ``named_buffers()``)
    of the parameters or buffers of ``module``'s :class:`MetaOnly` parts."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, part in module.named_modules()
        if isinstance(part, MetaOnly)
        for name, _ in getattr(part, f"named_{kind}")()
    }


def adaptable_names(module: nn.Module) -> tuple:
    """Names of ``module``'s parameters that an inner loop may adapt, in ``parameters()`` order:
    every one outside the :class:`MetaOnly` submodules."""
    fixed = meta_only_names(module)
    return tuple(name for name in parameter_names(module) if name not in fixed)


def step_kwargs(module: nn.Module, step: int) -> dict:
    """The keyword arguments that tell ``module``'s forward the inner step: ``{"step": step}`` for a
    model that takes it (``takes_step = True``), else none."""
    return {"step": step} if getattr(module, "takes_step", False) else {}


def inner_gradients(
    loss: torch.Tensor,
    params: dict,
    differentiable: bool,
    allow_unused: bool = False,
    allow_nograd: bool = False,
) -> list:
    """The gradients of ``loss`` with respect to ``params`` (name → tensor), in order, as learn2learn's
    ``MAML.adapt`` takes them: with ``allow_nograd`` a parameter with ``requires_grad=False`` gets
    ``None`` (it is not adapted), with ``allow_unused`` so does one that ``loss`` does not use;
    otherwise either is a ``RuntimeError`` that names the parameter and the option."""
    frozen = [name for name, p in params.items() if not p.requires_grad]
    if frozen and not allow_nograd:
        raise RuntimeError(
            f"parameter {frozen[0]} has requires_grad=False ({len(frozen)} such); pass allow_nograd=True "
            "(as to learn2learn's MAML) to leave frozen parameters unadapted"
        )
    chosen = [name for name in params if name not in frozen]
    found = torch.autograd.grad(
        loss,
        [params[name] for name in chosen],
        create_graph=differentiable,
        retain_graph=differentiable,
        allow_unused=True,
    )
    unused = [name for name, g in zip(chosen, found) if g is None]
    if unused and not allow_unused:
        raise RuntimeError(
            f"parameter {unused[0]} is not used by the loss ({len(unused)} such); pass allow_unused=True "
            "(as to learn2learn's MAML) to leave unused parameters unadapted"
        )
    grads = dict(zip(chosen, found))
    return [grads.get(name) for name in params]


def adapt_module(
    module: nn.Module,
    loss: torch.Tensor,
    inner_updates: Callable,
    step: int,
    first_order: bool,
    adapted: Optional[Sequence[str]] = None,
    allow_unused: bool = False,
    allow_nograd: bool = False,
) -> None:
    """One inner step of ``module`` on ``loss``, in place (learn2learn's ``update_module``).

    The gradients of the parameters named ``adapted`` (default: all) go through
    ``inner_updates(grads, step)``, whose steps are subtracted; the other parameters are left as
    they are, and so are those without a gradient under ``allow_nograd`` / ``allow_unused`` (see
    :func:`inner_gradients`; ``inner_updates`` sees zeros for them, so that its rates and curvature
    stay aligned with the parameters). Unless ``first_order``, the step stays differentiable.
    """
    names = parameter_names(module)
    adapted = names if adapted is None else tuple(adapted)
    params = dict(module.named_parameters())
    wanted = {n: params[n] for n in adapted}
    grads = inner_gradients(loss, wanted, not first_order, allow_unused, allow_nograd)
    filled = [torch.zeros_like(wanted[n]) if g is None else g for n, g in zip(adapted, grads)]
    steps = {n: u for n, g, u in zip(adapted, grads, inner_updates(filled, step)) if g is not None}
    l2l.update_module(module, updates=[None if n not in steps else -steps[n] for n in names])


class Learner(nn.Module):
    """The base of metakit's algorithms: a wrapped model, an inner learning rate and the contract.

    Subclasses change the inner rule (``inner_updates``), which parameters adapt
    (``adapted_names``), the ``objective`` and ``describe()``; ``forward``, ``clone`` and ``adapt``
    are written here once. Meta-parameters of the inner rule (learned rates, curvature) are
    submodules or parameters of the learner: a clone shares them with its parent, so the
    meta-gradient reaches them through every clone.

    Args:
        model: any ``nn.Module``.
        lr: inner learning rate α.
        first_order: do not differentiate through the inner gradients.
        allow_unused: leave parameters that the loss does not use unadapted (default:
            ``allow_nograd``), as in learn2learn's ``MAML``.
        allow_nograd: leave parameters with ``requires_grad=False`` (a frozen layer) unadapted, as
            in learn2learn's ``MAML``; without it they are an error.

    Example::

        learner = algorithm.clone()
        learner.adapt(loss_fn(learner(x_support), y_support))
        loss_fn(learner(x_query), y_query).backward()
    """

    objective = Objective.UNROLLED

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        first_order: bool = False,
        allow_unused: Optional[bool] = None,
        allow_nograd: bool = False,
    ):
        super().__init__()
        if next(model.parameters(), None) is None:
            raise ValueError(
                f"{type(self).__name__} needs a model with parameters to adapt; "
                f"{type(model).__name__} has none"
            )
        self.module = model
        self.lr = lr
        self.first_order = first_order
        self.allow_nograd = allow_nograd
        self.allow_unused = allow_nograd if allow_unused is None else allow_unused
        self.step = 0
        """Inner steps this learner has taken (``adapt`` advances it; a clone starts at 0)."""

    def forward(self, *args, **kwargs):
        """Run the wrapped model (telling a model that takes it the inner :attr:`step`)."""
        return self.module(*args, **{**step_kwargs(self.module, self.step), **kwargs})

    @property
    def adapted_names(self) -> tuple:
        """Every parameter of the model adapts (but :class:`MetaOnly` parts; subclasses may choose
        fewer)."""
        return adaptable_names(self.module)

    def inner_updates(self, grads: Sequence[torch.Tensor], step: int) -> list:
        """The inner-loop step ``α·g`` for each gradient."""
        return scaled_updates(grads, [self.lr] * len(grads))

    def describe(self) -> str:
        """Nothing is learned besides the model."""
        return ""

    def clone(
        self,
        first_order: Optional[bool] = None,
        allow_unused: Optional[bool] = None,
        allow_nograd: Optional[bool] = None,
    ) -> "Learner":
        """A copy of the model (learn2learn's ``clone_module``) ready for ``adapt``, sharing this
        learner's inner-rule meta-parameters; detached from the initialisation where the objective
        does not differentiate through adaptation. ``None`` keeps this learner's settings."""
        learner = copy.copy(self)
        for attribute in ("_modules", "_parameters", "_buffers"):
            setattr(learner, attribute, dict(getattr(self, attribute)))
        module = l2l.clone_module(self.module)
        if not self.objective.differentiates_inner_loop:
            l2l.detach_module(module, keep_requires_grad=True)
        learner.module = module
        pick = lambda value, default: default if value is None else value  # noqa: E731
        learner.first_order = pick(first_order, self.first_order)
        learner.allow_unused = pick(allow_unused, self.allow_unused)
        learner.allow_nograd = pick(allow_nograd, self.allow_nograd)
        learner.step = 0
        return learner

    def adapt(
        self,
        loss: torch.Tensor,
        first_order: Optional[bool] = None,
        allow_unused: Optional[bool] = None,
        allow_nograd: Optional[bool] = None,
    ) -> None:
        """One inner step on ``loss``, in place on this learner; advances :attr:`step`. ``None``
        keeps this learner's settings (see the class's arguments)."""
        allow_unused = self.allow_unused if allow_unused is None else allow_unused
        allow_nograd = self.allow_nograd if allow_nograd is None else allow_nograd
        if self.objective.differentiates_inner_loop:
            first_order = self.first_order if first_order is None else first_order
            adapt_module(
                self.module,
                loss,
                self.inner_updates,
                self.step,
                first_order,
                self.adapted_names,
                allow_unused,
                allow_nograd,
            )
        else:  # a detached copy: a plain SGD step, no graph
            params = dict(self.module.named_parameters())
            chosen = {n: params[n] for n in self.adapted_names}
            grads = inner_gradients(loss, chosen, False, allow_unused, allow_nograd)
            filled = [torch.zeros_like(p) if g is None else g for p, g in zip(chosen.values(), grads)]
            with torch.no_grad():
                for param, g, update in zip(chosen.values(), grads, self.inner_updates(filled, self.step)):
                    if g is not None:
                        param.sub_(update)
        self.step += 1
