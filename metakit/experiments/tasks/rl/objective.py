"""MAML for reinforcement learning: sampling, the inner policy-gradient step, the meta-objective
and its gradient.

An environment is any object with ``rollout(act, goals, trajectories, generator)`` returning
:class:`~metakit.experiments.tasks.rl.trajectories.Trajectories`, where ``goals`` holds the task
parameters with the task dimension first (:class:`~metakit.experiments.tasks.rl.nav2d_env.Nav2D`: goal
positions) and ``generator`` draws whatever randomness the environment has of its own (initial
states). Any algorithm with ``module`` (a policy such as
:class:`~metakit.experiments.tasks.rl.policy.GaussianMLPPolicy`), ``inner_updates(grads, step)`` and
``first_order`` works: :class:`~metakit.wrappers.MAML` and :class:`~metakit.wrappers.MAMLEnhanced`
(Meta-Curvature and layerwise rates are meta-parameters of the same objective), Meta-SGD, and ANIL,
whose ``adapted_names`` limit the inner step to the policy's last layer.

The meta-objective (what :func:`meta_loss` differentiates), per task, for ``S`` inner steps:

1. sample ``D_0`` with θ_0 = θ; for k < S: θ_{k+1} = θ_k − U_k(∇ L_in(θ_k; D_k)) and sample
   ``D_{k+1}`` with θ_{k+1} (sampling is not differentiated; advantages are constants);
2. outer loss ``L_out(θ_S; D_S) = −mean(π_{θ_S}(a|s) / ⊥π_{θ_S}(a|s) · Â)`` (value −mean Â,
   gradient the policy gradient at θ_S), mean over tasks; one ``backward()``.

Here ``L_in`` is :func:`~metakit.experiments.tasks.rl.policy_gradient.surrogate_loss` and ``U_k`` the
algorithm's ``inner_updates``. Differentiating (2) through the unrolled θ_S(θ) with fixed samples
is the standard MAML-RL estimator (cbfinn/maml_rl ``maml_npo.py``; pytorch-maml-rl
``MAMLTRPO.surrogate_loss``):

* included: the post-update policy score ``∇_{θ_S} log π_{θ_S}(D_S) · Â_S`` carried back through
  every ``∂θ_{k+1}/∂θ_k = I − ∂U_k/∂θ_k``, whose second-order part is the Hessian of the inner
  *surrogate* (``Σ ∇² log π · Â`` with ``curvature="reinforce"``; plus the per-step
  ``∇log π ∇log πᵀ Â`` with ``"lvc"``) and, for MAML Enhanced, the dependence of ``U_k`` on the
  curvature matrices and rates;
* dropped: the dependence of the sampling distributions of ``D_0 … D_{S−1}`` on θ (the
  ``∇ log π_θ(D_k) · L_out`` term that E-MAML (Stadie et al. 2018) and DiCE (Foerster et al. 2018)
  keep), and, with ``"reinforce"``, the score outer-product part of the inner Hessian; so the
  meta-gradient is biased, as it is in the paper's code. ``first_order=True`` drops the whole
  ``∂U_k/∂θ_k`` term (first-order MAML).

Outer optimiser. The paper uses TRPO (KL ≤ 0.01, finite-difference Hessian-vector products). Here
any ``torch.optim`` optimizer steps on the gradient of the surrogate (:func:`sample_and_backward`); we
recommend Adam with lr 3e-3 (2D navigation, 20 tasks × 20 episodes: stable over 100 updates, while
1e-2 learned faster at first and then diverged after ~60, with or without clipping the gradient
norm at 1). Adam needs one backward, trains the policy and MAML Enhanced's curvature and rates
together, and is what metakit's trainer already does. TRPO's trust region needs Fisher-vector
products of the post-update policy through the inner step and a line search that re-evaluates the
objective, which ties the update rule to this file. If Adam proves unstable on harder tasks, a
PPO-style clipped ratio on the outer surrogate (as in ProMP) fits the same interface, since
``L_out`` is already written as a likelihood ratio.
"""

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.func import vmap

from metakit.experiments.tasks.rl.policy import batched_policy_forward, log_probs, policy_forward
from metakit.experiments.tasks.rl.policy_gradient import PGBatch, PGConfig, pg_batch, surrogate_loss
from metakit.wrappers.engines.inner_step import functional_inner_step

StepScale = Optional[Callable[[int], float]]


def parameter_names(module: nn.Module) -> List[str]:
    """Names of ``module``'s parameters, in ``parameters()`` order."""
    return [name for name, _ in module.named_parameters()]


def per_task(params: Sequence[torch.Tensor], tasks: int) -> Tuple[torch.Tensor, ...]:
    """Shared parameters, detached, with a leading task dimension (expanded views, no copy)."""
    return tuple(p.detach().expand(tasks, *p.shape) for p in params)


def sample_trajectories(
    env, module: nn.Module, names, params, goals: torch.Tensor, trajectories: int, generator, shared=False
):
    """``trajectories`` episodes per task of the Gaussian policy, not differentiable.

    ``params`` has a leading task dimension (each task its own policy) or, with ``shared=True``,
    none (one policy for every task: a plain batched forward, 3× faster than ``vmap``).
    ``env.rollout(act, goals, trajectories, generator)`` runs the episodes; actions are
    ``mean + std · ε`` with ε drawn from ``generator``, which also serves the environment's own draws.
    """
    forward = policy_forward if shared else batched_policy_forward

    def act(observations):
        mean, log_std = forward(module, names, params, observations)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=generator.device)
        noise = noise.to(mean.device)  # drawn where the generator lives (a CPU one for a GPU policy)
        return mean + log_std.exp() * noise

    with torch.no_grad():
        return env.rollout(act, goals, trajectories, generator)


def inner_loss(module: nn.Module, names, params, batch: PGBatch, curvature: str = "reinforce"):
    """One task's policy-gradient surrogate at ``params`` (differentiable)."""
    logp = log_probs(module, names, params, batch.observations, batch.actions)
    return surrogate_loss(logp, batch.advantages, batch.valid, curvature)


def outer_loss(module: nn.Module, names, params, batch: PGBatch):
    """One task's post-update surrogate ``−mean(π/⊥π · Â)``; its gradient is the policy gradient."""
    return inner_loss(module, names, params, batch, "lvc")


def inner_step(algo, names, params, batch: PGBatch, step: int, first_order: bool, curvature: str, scale=1.0):
    """One task's policy-gradient step with the algorithm's rule: ``θ − scale · U_step(∇L_in(θ))``
    (:func:`~metakit.wrappers.engines.inner_step.functional_inner_step`, the supervised engine's
    step): only the parameters the algorithm adapts (``adapted_names``, e.g. ANIL's last layer)
    are differentiated and stepped; the others pass through unchanged."""

    def loss_of(named):
        return inner_loss(algo.module, names, tuple(named[n] for n in names), batch, curvature)

    stepped = functional_inner_step(algo, loss_of, dict(zip(names, params)), step, first_order, scale)
    return tuple(stepped[n] for n in names)


class Adaptation(NamedTuple):
    """What :func:`sample_adaptation` sampled, one entry per step count 0 … steps: the
    :class:`PGBatch`, the :class:`~metakit.experiments.tasks.rl.trajectories.Trajectories` and the
    per-task parameters (leading task dimension) that sampled them."""

    batches: List[PGBatch]
    trajectories: list
    params: list


def sample_adaptation(
    algo,
    env,
    goals: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    config: PGConfig = PGConfig(),
    step_scale: StepScale = None,
):
    """Sample ``D_0`` at θ, adapt, sample ``D_1`` at θ_1, …, up to ``D_steps``.

    Returns an :class:`Adaptation` (task dimension first everywhere). Nothing here is
    differentiated; the adapted parameters equal those :func:`meta_loss` rebuilds with a graph.
    ``step_scale(k)`` multiplies the updates of step ``k`` (evaluation schedules).
    """
    module, names = algo.module, parameter_names(algo.module)
    theta = tuple(p.detach() for p in module.parameters())
    params = per_task(theta, goals.shape[0])
    out = Adaptation([], [], [])
    for k in range(steps + 1):
        shared = (theta, True) if k == 0 else (params, False)
        trajectories = sample_trajectories(
            env, module, names, shared[0], goals, config.trajectories, generator, shared=shared[1]
        )
        batch = pg_batch(trajectories, config)
        out.batches.append(batch)
        out.trajectories.append(trajectories)
        out.params.append(params)
        if k < steps:
            scale = 1.0 if step_scale is None else step_scale(k)

            def adapt(p, *data, k=k, scale=scale):
                return inner_step(algo, names, p, PGBatch(*data), k, True, config.curvature, scale)

            with torch.no_grad():
                params = vmap(adapt)(params, *batch)
    return out


def meta_loss(
    algo, batches: Sequence[PGBatch], curvature: str = "reinforce", first_order=None
) -> torch.Tensor:
    """The MAML-RL meta-objective (module docstring), mean over tasks, differentiable with respect to
    ``algo``'s meta-parameters. ``batches[k]`` is ``D_k`` (task dimension first); ``len(batches) − 1``
    inner steps are unrolled."""
    module, names = algo.module, parameter_names(algo.module)
    theta = tuple(module.parameters())
    first_order = algo.first_order if first_order is None else first_order
    steps = len(batches) - 1
    width = len(PGBatch._fields)

    def task_loss(*flat):
        data = [PGBatch(*flat[width * k : width * (k + 1)]) for k in range(steps + 1)]
        params = theta
        for k in range(steps):
            params = inner_step(algo, names, params, data[k], k, first_order, curvature)
        return outer_loss(module, names, params, data[-1])

    return vmap(task_loss)(*[t for batch in batches for t in batch]).mean()


def sample_and_backward(
    algo,
    env,
    goals: torch.Tensor,
    generator: torch.Generator,
    config: PGConfig = PGConfig(),
    steps: int = 1,
    first_order: Optional[bool] = None,
) -> dict:
    """Sample and adapt on the tasks ``goals``, then accumulate the meta-gradient of
    :func:`meta_loss` into ``.grad`` of ``algo``'s meta-parameters (as ``backward()`` does; the
    caller zeroes and steps, like metakit's trainer does around its meta-steps).

    ``first_order`` overrides the algorithm's own setting (derivative-order annealing). Returns
    ``{"loss", "returns"}``: the meta-loss and the mean episode return after 0 … ``steps`` inner
    steps on the sampled trajectories.
    """
    sampled = sample_adaptation(algo, env, goals, steps, generator, config)
    loss = meta_loss(algo, sampled.batches, config.curvature, first_order)
    loss.backward()
    returns = [t.episode_returns().mean().item() for t in sampled.trajectories]
    return {"loss": loss.item(), "returns": returns}
