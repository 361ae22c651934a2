"""Vanilla policy gradient (REINFORCE with a linear baseline) as pure functions of tensors.

Every function works on a batch of tasks at once (leading ``tasks`` dimension, then
``trajectories`` and time) or, where it says so, on one task under ``vmap``. The choices follow the
MAML paper's RL set-up (Finn et al. 2017, §5.3 and App. A.2) and the authors' code
(cbfinn/maml_rl):

* returns and advantages with discount γ = 0.99 and GAE λ = 1 (``BatchMAMLPolopt`` defaults,
  ``sandbox/rocky/tf/algos/batch_maml_polopt.py``; pytorch-maml-rl ``configs/maml/2d-navigation.yaml``
  ``gamma: 0.99``, ``gae-lambda: 1.0``), the episode end (terminal or horizon) valued 0
  (``rllab/sampler/base.py``, ``process_samples`` pads the baseline with a 0);
* rllab's ``LinearFeatureBaseline`` (``rllab/baselines/linear_feature_baseline.py``): features
  ``[o, o², t/100, (t/100)², (t/100)³, 1]`` with ``o`` clipped to ±10, ridge regression onto the
  discounted returns with ``reg_coeff = 1e-5``, "fitted separately at each iteration for each
  sampled task" (paper §5.3). It is fitted to a task's trajectories and then evaluated on them,
  as pytorch-maml-rl's sampler does (``baseline.fit(episodes)`` then ``compute_advantages``).
  rllab's ``process_samples`` instead predicts with the *previous* fit and refits afterwards, with
  one baseline object shared by the tasks in turn; and it retries with 10× the ridge coefficient
  when the solution has NaNs, which the float64 solve here does not need;
* advantages standardised per task (``center_adv=True`` in ``BatchMAMLPolopt``);
* the surrogate ``−mean(log π(a|s) · Â)`` over a task's valid steps, whose gradient is the vanilla
  policy gradient (``maml_npo.py``: ``surr_objs.append(- tf.reduce_mean(logli * adv_vars[i]))``).
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch

CURVATURES = ("reinforce", "lvc")
"""The inner surrogates :func:`surrogate_loss` offers."""


@dataclass(frozen=True)
class PGConfig:
    """Settings of the policy-gradient estimator (defaults: the MAML paper's 2D navigation).

    Attributes:
        trajectories: episodes sampled per task for each gradient step (paper: 20 in training,
            40 in evaluation).
        discount: γ.
        gae_lambda: λ of generalised advantage estimation (1: Monte-Carlo returns minus baseline).
        baseline_reg: ridge coefficient of the linear baseline.
        normalize_advantages: standardise each task's advantages.
        curvature: the inner surrogate, which fixes the second-order term of the MAML meta-gradient:
            ``"reinforce"`` (log π · Â, as the MAML paper's code) or ``"lvc"`` (π/⊥π · Â, ProMP's
            low-variance curvature); same value of the gradient, different Hessian; see
            :func:`surrogate_loss`.
    """

    trajectories: int = 20
    discount: float = 0.99
    gae_lambda: float = 1.0
    baseline_reg: float = 1e-5
    normalize_advantages: bool = True
    curvature: str = "reinforce"

    def __post_init__(self):
        if self.curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {self.curvature!r}")


class PGBatch(NamedTuple):
    """What a policy-gradient loss needs of sampled trajectories: observations, actions, advantages
    and the valid-step mask (shapes as in :class:`~metakit.experiments.tasks.rl.trajectories.Trajectories`,
    with or without the task dimension)."""

    observations: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor
    valid: torch.Tensor


def discount_matrix(horizon: int, factor: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """``M[k, t] = factor**(k − t)`` for ``k ≥ t``, else 0: ``x @ M`` is the discounted sum from ``t`` on."""
    k = torch.arange(horizon, device=device)
    lag = k[:, None] - k[None, :]
    powers = torch.full((), factor, dtype=torch.float64).pow(lag.clamp(min=0).double())
    return torch.where(lag >= 0, powers, torch.zeros_like(powers)).to(dtype)


def discounted_cumsum(values: torch.Tensor, factor: float) -> torch.Tensor:
    """``out[..., t] = Σ_{k ≥ t} factor**(k − t) · values[..., k]`` along the last (time) dimension."""
    return values @ discount_matrix(values.shape[-1], factor, values.dtype, values.device)


def returns_to_go(rewards: torch.Tensor, valid: torch.Tensor, discount: float) -> torch.Tensor:
    """Discounted returns-to-go ``R_t = Σ_{k ≥ t} γ^{k−t} r_k`` of every step (0 on invalid steps)."""
    return discounted_cumsum(rewards * valid, discount) * valid


def baseline_features(observations: torch.Tensor, valid: torch.Tensor, time_scale: float = 100.0):
    """rllab's LinearFeatureBaseline features ``[o, o², t, t², t³, 1]`` with ``o`` clipped to ±10 and
    ``t = step / time_scale``; rows of invalid steps are zero. Shape ``[..., horizon, 2·obs_dim + 4]``."""
    o = observations.clamp(-10.0, 10.0)
    horizon = observations.shape[-2]
    t = (torch.arange(horizon, dtype=o.dtype, device=o.device) / time_scale).expand(o.shape[:-1])[..., None]
    features = torch.cat([o, o.pow(2), t, t.pow(2), t.pow(3), torch.ones_like(t)], -1)
    return features * valid[..., None]


def fit_linear_baseline(features: torch.Tensor, targets: torch.Tensor, reg: float) -> torch.Tensor:
    """Per-task ridge regression ``w = (XᵀX + reg·I)⁻¹ Xᵀy`` (rllab's normal equations).

    ``features [tasks, trajectories, horizon, F]`` (zero rows are ignored), ``targets [tasks,
    trajectories, horizon]``; returns ``w [tasks, F]``. Solved in float64: the time features are
    nearly collinear and the float32 normal equations lose most of their digits.
    """
    x = features.flatten(1, -2).double()
    y = targets.flatten(1).double()
    gram = x.transpose(1, 2) @ x + reg * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    coeffs = torch.linalg.solve(gram, (x.transpose(1, 2) @ y[..., None]))[..., 0]
    return coeffs.to(features.dtype)


def linear_baseline_values(observations, returns, valid, reg: float = 1e-5) -> torch.Tensor:
    """Values of each task's linear baseline fitted on that task's own returns, ``[tasks, trajectories,
    horizon]`` (0 on invalid steps)."""
    features = baseline_features(observations, valid)
    coeffs = fit_linear_baseline(features, returns, reg)
    return (features * coeffs[:, None, None, :]).sum(-1) * valid


def gae(rewards, values, valid, discount: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates ``Â_t = Σ_k (γλ)^k δ_{t+k}``, ``δ_t = r_t + γ V_{t+1} − V_t``.

    The value after the last valid step (terminal state or horizon) is 0, as in rllab. With λ = 1
    this is the discounted return-to-go minus ``V_t``.
    """
    values = values * valid
    following = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], -1)
    deltas = (rewards + discount * following - values) * valid
    return discounted_cumsum(deltas, discount * lam) * valid


def normalize_advantages(advantages, valid, eps: float = 1e-8) -> torch.Tensor:
    """Standardise each task's advantages over its valid steps: ``(Â − mean) / (std + eps)``
    (population std, as rllab's ``center_advantages``); 0 on invalid steps."""
    dims = tuple(range(1, advantages.dim()))
    count = valid.sum(dims, keepdim=True)
    mean = (advantages * valid).sum(dims, keepdim=True) / count
    var = ((advantages - mean).pow(2) * valid).sum(dims, keepdim=True) / count
    return (advantages - mean) / (var.sqrt() + eps) * valid


def advantages(trajectories, config: PGConfig = PGConfig()) -> torch.Tensor:
    """Advantages of a batch of :class:`Trajectories` (task dimension first): returns-to-go, each
    task's linear baseline, GAE, then per-task standardisation if configured."""
    obs, _, rewards, valid = trajectories
    returns = returns_to_go(rewards, valid, config.discount)
    values = linear_baseline_values(obs, returns, valid, config.baseline_reg)
    adv = gae(rewards, values, valid, config.discount, config.gae_lambda)
    return normalize_advantages(adv, valid) if config.normalize_advantages else adv


def pg_batch(trajectories, config: PGConfig = PGConfig()) -> PGBatch:
    """The :class:`PGBatch` of sampled trajectories (advantages computed as configured)."""
    return PGBatch(
        trajectories.observations, trajectories.actions, advantages(trajectories, config), trajectories.valid
    )


def surrogate_loss(log_probs, advantages, valid, curvature: str = "reinforce") -> torch.Tensor:
    """Policy-gradient surrogate of one task, ``−Σ_valid w · Â / #valid`` (advantages held fixed).

    * ``"reinforce"``: ``w = log π(a|s)``. Its gradient is the vanilla policy gradient; its
      Hessian is ``Σ ∇² log π · Â`` only. That is what the MAML paper's code differentiates
      through (the inner step of ``maml_npo.py``), but it is not an unbiased estimate of the Hessian
      of the expected return, which also has ``Σ ∇log π ∇log πᵀ · Â``-type terms.
    * ``"lvc"``: ``w = π(a|s) / ⊥π(a|s) = exp(log π − stop_grad(log π))`` (value 1), Rothfuss et
      al.'s low-variance curvature (ProMP, ICLR 2019, arXiv:1810.06784). Same value of the
      gradient; its Hessian adds the per-step ``∇log π ∇log πᵀ · Â`` term (cross-time terms dropped).

    ``log_probs``, ``advantages`` and ``valid`` share one shape (any, e.g. ``[trajectories, horizon]``).
    """
    if curvature == "reinforce":
        weight = log_probs
    elif curvature == "lvc":
        weight = torch.exp(log_probs - log_probs.detach())
    else:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    return -(weight * advantages * valid).sum() / valid.sum()
