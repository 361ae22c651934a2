"""Meta-reinforcement learning as a task family: the MAML-RL protocol shared by 2D navigation and
HalfCheetah (:mod:`metakit.experiments.tasks.rl`).

A task is a reward function (a goal position, a direction, a velocity); adapting to it means
sampling episodes with the policy and taking policy-gradient steps. Such a family samples its own
episodes, so it plugs into the trainer through :meth:`RLFamily.meta_engine` instead of the
supervised engine: ``Training.sample`` draws a :class:`GoalBatch` from the run's task stream and
the meta-step hands it here. Everything else in the loop (zeroing, the ``torchrun`` all-reduce,
finite checks, Adam, checkpoints, exact resume, progress, logging) is the trainer's own.

Protocol (MAML paper §5.3 and App. A.2; cbfinn/maml_rl; pytorch-maml-rl's
``configs/maml/2d-navigation.yaml``): 20 tasks per meta-update, 20 episodes per task and step,
one policy-gradient inner step with α = 0.1, the 2×100 ReLU Gaussian policy, and 40 episodes per
task and step in evaluation, where the step size is halved after the trained steps ("α = 0.1 for
the first step, and α = 0.05 for all future steps").

The outer optimiser is Adam at 3e-3 instead of the paper's TRPO (KL ≤ 0.01): TRPO needs
Fisher-vector products through the inner step and a line search that re-samples the objective,
which would give RL an update rule of its own outside the trainer, and it could not train MAML
Enhanced's curvature and rates, which have no natural KL geometry. Adam needs one backward, as
every other family's meta-step does. On 2D navigation (20 tasks × 20 episodes) 3e-3 was stable
over hundreds of updates while 1e-2 diverged after ~60 (see :mod:`metakit.experiments.tasks.rl.objective`).

Iterations: 300 meta-updates (pytorch-maml-rl trains 500 with TRPO), about 5 minutes of one CPU
core on 2D navigation (~1 s per update); the returns after 1–3 steps stop improving after
~100–150 of them there.
"""

import math
from pathlib import Path
from typing import Dict, NamedTuple

import torch

from metakit.experiments.methods import METHODS
from metakit.experiments.tasks.family import RETURN, CurveAxis, TaskFamily, held_out_generator
from metakit.experiments.tasks.rl.objective import sample_adaptation, sample_and_backward
from metakit.experiments.tasks.rl.policy import GaussianMLPPolicy
from metakit.experiments.tasks.rl.policy_gradient import PGConfig
from metakit.experiments.util import progress
from metakit.experiments.util.errors import MetakitError, flag
from metakit.experiments.util.statistics import mean_ci95
from metakit.wrappers.base import Objective

TRAIN_NOISE_SEEDS = 2**31
"""Episode-noise seeds of training batches are below this; held-out streams are at or above it
(:func:`~metakit.experiments.tasks.family.held_out_generator`)."""


class GoalBatch(NamedTuple):
    """A meta-training batch of RL tasks: ``goals [tasks, ...]`` (the task parameters) and
    ``seeds [tasks]``. The episodes of a (slice of a) batch draw their noise from a generator seeded
    with its first task's seed, so the run's task stream fixes them."""

    goals: torch.Tensor
    seeds: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of tasks in the batch."""
        return self.goals.shape[0]


class RLFamily(TaskFamily):
    """A meta-RL task family; subclasses set :attr:`env` (an environment with ``sample_tasks`` and
    ``rollout``, see :mod:`metakit.experiments.tasks.rl.objective`) and the protocol.

    Rows of its evaluation report the mean undiscounted return per episode (higher is better).
    Methods: those whose spec says ``rl`` (:attr:`~metakit.experiments.methods.MethodSpec.rl`):
    the ones whose inner rule is ``inner_updates`` on a policy gradient (maml, fomaml, mc, lslr,
    enhanced, metasgd, anil) and ``pretrain``, the paper's pretrained-policy baseline (one policy
    trained by policy gradient on all tasks, i.e. the meta-objective with 0 inner steps, fine-tuned
    by the same policy-gradient steps at test time). Reptile is not wired for RL.
    """

    metric = RETURN
    protocol = dict(inner_lr=0.1, inner_steps=1, meta_batch=20, meta_lr=3e-3, iterations=300)
    eval_protocol = {"steps": (0, 1, 2, 3)}
    plot_steps = (0, 1, 2, 3)
    steps_label = "policy-gradient steps at test time"
    options = ()
    compile_after = math.inf  # never compiled: the meta-gradient runs eagerly under torch.func
    eval_chunk = 100
    env = None
    """The environment: goal distribution, dynamics, reward, horizon."""
    training = PGConfig(trajectories=20)
    """The policy-gradient estimator of meta-training (20 episodes per task and step)."""
    evaluation = PGConfig(trajectories=40)
    """The estimator of evaluation (40 episodes per task and step, as the paper reports)."""
    position_observations = False
    """Whether observations begin with the agent's 2D position (``metakit plot`` draws paths)."""

    def __init__(self, inner_steps: int = 1):
        self.inner_steps = inner_steps

    @classmethod
    def from_config(cls, config) -> "RLFamily":
        """The family for a run with ``config.inner_steps`` trained steps (the evaluation schedule)."""
        return cls(config.inner_steps)

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse the methods and options that have no meaning, or no implementation, for RL."""
        task = f"{flag('task')} {config.task}"
        if not METHODS.get(config.method).rl:
            usable = [name for name in METHODS.names() if METHODS.get(name).rl]
            raise ValueError(
                f"{flag('method')} {config.method} does not apply to {task} (reinforcement learning); "
                f"choose from {', '.join(usable)}"
            )
        if config.backend != "func":
            raise ValueError(
                f"{task} runs on {flag('backend')} func only (its meta-objective is written with torch.func)"
            )
        if config.compile == "on":
            raise ValueError(f"{flag('compile')} on does not apply to {task}: its meta-gradient runs eagerly")
        if config.multi_step_loss:
            raise ValueError(f"{flag('multi_step_loss')} does not apply to {task}")

    def build_model(self) -> GaussianMLPPolicy:
        """The paper's policy: a Gaussian MLP, 2×100 ReLU, learned state-independent log-std."""
        return GaussianMLPPolicy(self.env.observation_dim, self.env.action_dim)

    def sample(self, tasks, shots, query, generator) -> GoalBatch:
        """``tasks`` new tasks and one episode-noise seed per task (``shots`` and ``query`` unused)."""
        goals = self.env.sample_tasks(tasks, generator)
        return GoalBatch(goals, torch.randint(0, TRAIN_NOISE_SEEDS, (tasks,), generator=generator))

    def meta_engine(self, algo, backend: str, compile: bool) -> "PolicyGradientEngine":
        """The MAML-RL meta-gradient of ``algo`` on this family's environment (``backend`` is func,
        ``compile`` off: :meth:`check_config` refuses the others)."""
        return PolicyGradientEngine(algo, self)

    @classmethod
    def bench(cls, task: str, quick: bool, threads: int, **options) -> tuple:
        """``metakit bench --task TASK``: the rollout throughput
        (:func:`~metakit.experiments.tasks.rl.rollout_bench.bench_task`) and its table."""
        from metakit.experiments.tasks.rl.rollout_bench import bench_task, format_rollouts

        report = bench_task(task, quick, threads, **options)
        return report, format_rollouts(report)

    def evaluate(self, algo, tasks, shots, steps, seed, horizon=None) -> list:
        """Rows ``{"steps", "return", "ci95", "tasks"}``: the mean return per episode after that many
        policy-gradient steps, ± the 95% CI over the held-out tasks (:meth:`adaptation_returns`);
        ``beyond_horizon`` past ``horizon``. RL tasks take no ``shots`` (pass none)."""
        if any(k is not None for k in shots):
            raise MetakitError(
                f"{flag('shots')} does not apply to reinforcement-learning runs "
                "(they adapt on sampled episodes)"
            )
        curves = self.adaptation_returns(algo, tasks, max(steps), seed)
        results = []
        for s in steps:
            mean, ci = mean_ci95(curves[s])
            row = {"steps": s, self.metric.key: mean, "ci95": ci, "tasks": tasks}
            if horizon is not None and s > horizon:
                row["beyond_horizon"] = True
            results.append(row)
        return results

    def figures(self, algos, out, shots, seed, extension="png"):
        """With position observations (2D navigation), the MAML paper's Fig. 4: paths before and
        after adaptation on held-out goals (``paths.png``)."""
        if not self.position_observations:
            return []
        path = Path(out) / f"paths.{extension}"
        plot_paths({label: (algo, self) for label, algo in algos.items()}, path, seed=seed)
        return [path]

    def training_curve_axis(self, objective: Objective) -> CurveAxis:
        """The logged meta-loss is minus the mean return per training episode after the inner
        steps (none for the pretrained-policy baseline): curves show that return, higher is better."""
        after = "no inner step" if objective is Objective.JOINT else "after the inner steps"
        return CurveAxis(f"mean return per training episode ({after})", sign=-1.0, log=False)

    def held_out_goals(self, tasks: int, seed: int) -> torch.Tensor:
        """``tasks`` fixed held-out tasks, ``[tasks, ...]``: task ``t`` is drawn from
        ``held_out_generator(seed, t, 0)``, disjoint from every training stream."""
        return torch.cat([self.env.sample_tasks(1, held_out_generator(seed, t, 0)) for t in range(tasks)])

    def step_scale(self, step: int) -> float:
        """Evaluation's step sizes: the trained steps as trained, later ones at half the rate (the
        paper's α = 0.1, then 0.05)."""
        return 1.0 if step < self.inner_steps else 0.5

    def adaptation(self, algo, goals: torch.Tensor, steps: int, generator: torch.Generator):
        """Evaluation episodes of ``algo`` on ``goals`` before and after each of ``steps``
        policy-gradient steps (:func:`~metakit.experiments.tasks.rl.objective.sample_adaptation`)."""
        return sample_adaptation(algo, self.env, goals, steps, generator, self.evaluation, self.step_scale)

    def adaptation_returns(self, algo, tasks: int, steps: int, seed: int) -> torch.Tensor:
        """Mean return per episode of every held-out task after 0 … ``steps`` steps,
        ``[steps + 1, tasks]``. Tasks are adapted :attr:`eval_chunk` at a time; the episodes' noise
        comes from ``held_out_generator(seed, 0, 1)``, in that order."""
        device = next(algo.parameters()).device
        goals = self.held_out_goals(tasks, seed).to(device)
        generator = held_out_generator(seed, 0, 1)
        curves = []
        with progress.bar(tasks, "adapting to held-out tasks", unit="task") as shown:
            for i in range(0, tasks, self.eval_chunk):
                sampled = self.adaptation(algo, goals[i : i + self.eval_chunk], steps, generator)
                curves.append(torch.stack([t.episode_returns().mean(1) for t in sampled.trajectories]))
                shown.update(curves[-1].shape[1])
        return torch.cat(curves, 1)


class PolicyGradientEngine:
    """The engine of a meta-RL family: ``meta_backward`` accumulates the MAML-RL meta-gradient of a
    :class:`GoalBatch` into ``.grad`` (:func:`~metakit.experiments.tasks.rl.objective.sample_and_backward`),
    sampling the episodes itself; a ``JOINT`` learner (the pretrained-policy baseline) takes 0
    inner steps."""

    name = "func"

    def __init__(self, algo, family: RLFamily):
        self.algo = algo
        self.family = family

    def meta_backward(self, batch: GoalBatch, steps: int, first_order=None, step_weights=None) -> float:
        """Returns minus the mean return per episode after the inner steps, the run's logged
        ``meta_loss`` (the surrogate's own value, −mean Â, is 0 with standardised advantages).
        ``step_weights`` must be ``None`` (the family refuses the multi-step loss)."""
        if self.algo.objective is Objective.JOINT:
            steps, first_order = 0, True
        generator = torch.Generator().manual_seed(int(batch.seeds[0]))
        family = self.family
        out = sample_and_backward(
            self.algo, family.env, batch.goals, generator, family.training, steps, first_order
        )
        return -out["returns"][-1]


def plot_paths(runs: Dict[str, tuple], path: Path, tasks: int = 3, seed: int = 1, shown: int = 2):
    """2D navigation (MAML Fig. 4, left): the paths of ``shown`` episodes of each run's policy before
    adaptation, after one policy-gradient step and after the last evaluated one, on ``tasks``
    held-out goals (the evaluation's goals, episodes and step sizes); one column per run, one row
    per goal, equal axes, the start and the goal marked.

    ``runs`` maps a label to ``(algorithm, family)`` (an RL family with ``position_observations``).
    """
    from metakit.experiments.util.figures import plt, save  # matplotlib only when drawing

    fig, axes = plt.subplots(tasks, len(runs), figsize=(3.4 * len(runs), 3.2 * tasks + 0.4), squeeze=False)
    episodes_per_step = None
    for col, (name, (algo, family)) in enumerate(runs.items()):
        goals = family.held_out_goals(tasks, seed)
        steps = max(family.eval_protocol["steps"])
        sampled = family.adaptation(algo, goals, steps, held_out_generator(seed, 0, 1))
        episodes_per_step = family.evaluation.trajectories
        stages = sorted({0, min(1, steps), steps})
        colors = dict(zip(stages, plt.cm.viridis(torch.linspace(0.0, 0.85, len(stages)).tolist())))
        for t in range(tasks):
            ax = axes[t][col]
            for k in stages:
                episodes = sampled.trajectories[k]
                for j in range(min(shown, episodes.observations.shape[1])):
                    xy = episodes.observations[t, j, : int(episodes.valid[t, j].sum()), :2]
                    label = None
                    if j == 0:
                        label = "before adaptation" if k == 0 else f"after {k} step{'s' * (k > 1)}"
                    ax.plot(xy[:, 0], xy[:, 1], color=colors[k], lw=1.2, alpha=0.85, label=label)
            start = sampled.trajectories[0].observations[t, 0, 0, :2].tolist()
            ax.scatter(*start, marker="s", s=40, color="black", zorder=4, label="start")
            ax.scatter(*goals[t, :2].tolist(), marker="*", s=140, color="tab:red", zorder=4, label="goal")
            ax.set_aspect("equal", adjustable="datalim")
            ax.set_xlabel("x position")
            ax.set_ylabel("y position")
            ax.grid(alpha=0.3)
            if t == 0:
                ax.set_title(name)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"{tasks} held-out goals (seed {seed}); {shown} of {episodes_per_step} evaluation episodes shown "
        "per stage",
        fontsize=9,
    )
    save(fig, path)
