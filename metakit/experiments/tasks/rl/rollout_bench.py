"""Rollout throughput: batched torch episodes of 2D navigation against one environment at a time."""

import time

import torch

from metakit.experiments.tasks.rl.nav2d_env import Nav2D, Nav2DEnv
from metakit.experiments.tasks.rl.objective import parameter_names, per_task, sample_trajectories
from metakit.experiments.tasks.rl.policy import GaussianMLPPolicy
from metakit.experiments.util.errors import flag


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_rollouts(tasks: int = 20, trajectories: int = 20, seed: int = 0, task: Nav2D = Nav2D()) -> dict:
    """Environment steps per second of sampling the paper's policy (2×100 ReLU, untrained) on
    ``tasks × trajectories`` episodes, three ways:

    * ``batched``: :func:`sample_trajectories` with one parameter set per task (``vmap``, as after
      adaptation), every episode stepped at once;
    * ``batched_shared``: the same with the shared pre-update parameters (plain batched forward);
    * ``sequential``: the same episodes one after the other, one policy forward and one
      :class:`Nav2DEnv` step per environment step, as per-environment samplers do.

    The batched runs step every episode for the full horizon (finished ones are padded), so they
    count ``tasks · trajectories · horizon`` steps; the sequential run counts the steps it takes
    (the same number unless an episode reaches its goal, rare for an untrained policy). Set
    ``torch.set_num_threads`` before calling. Returns steps, seconds and steps per second of each,
    and ``ratio`` = batched ÷ sequential steps per second.
    """
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(task.observation_dim, task.action_dim)
    names = parameter_names(policy)
    generator = torch.Generator().manual_seed(seed)
    goals = task.sample_tasks(tasks, generator)
    theta = tuple(p.detach() for p in policy.parameters())
    steps = tasks * trajectories * task.horizon
    report = {}
    for name, params, shared in (("batched", per_task(theta, tasks), False), ("batched_shared", theta, True)):
        sample_trajectories(task, policy, names, params, goals, trajectories, generator, shared)  # warm-up
        _, seconds = _timed(
            lambda: sample_trajectories(task, policy, names, params, goals, trajectories, generator, shared)
        )
        report[name] = {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds}

    def sequential():
        count = 0
        with torch.no_grad():
            for goal in goals.tolist():
                for _ in range(trajectories):
                    env = Nav2DEnv(goal, task)
                    obs, done = env.reset(), False
                    while not done:
                        mean, log_std = policy(torch.tensor(obs))
                        noise = torch.randn(mean.shape, generator=generator)
                        obs, _, done = env.step((mean + log_std.exp() * noise).tolist())
                        count += 1
        return count

    count, seconds = _timed(sequential)
    report["sequential"] = {"steps": count, "seconds": seconds, "steps_per_s": count / seconds}
    report["ratio"] = report["batched"]["steps_per_s"] / report["sequential"]["steps_per_s"]
    return report


def bench_task(task: str, quick: bool = False, threads: int = 1, seed: int = 0, **options) -> dict:
    """``metakit bench --task nav2d``: :func:`bench_rollouts` on the family's environment at its
    training batch (meta-batch × episodes per task; ``quick``: 4 × 5) with ``threads`` intra-op
    threads. Other bench options, and families without a one-at-a-time environment, raise
    :class:`ValueError` (one line)."""
    from metakit.experiments.tasks import FAMILIES

    if options:
        given = ", ".join(flag(name) for name in options)
        raise ValueError(
            f"{flag('task')} {task} benches rollouts (--quick, --seed, --threads, --json); drop {given}"
        )
    family = FAMILIES.get(task)
    if not isinstance(family.env, Nav2D):
        raise ValueError(
            f"the rollout bench has a one-environment-at-a-time baseline for nav2d only, not {task}"
        )
    tasks, trajectories = (4, 5) if quick else (family.protocol["meta_batch"], family.training.trajectories)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        report = bench_rollouts(tasks, trajectories, seed, family.env)
    finally:
        torch.set_num_threads(previous)
    shape = {"tasks": tasks, "trajectories": trajectories, "horizon": family.env.horizon}
    return {"task": task, "threads": threads, "torch": torch.__version__, **shape, **report}


def format_rollouts(report: dict) -> str:
    """A plain-text table of a :func:`bench_task` report."""
    lines = [
        f"{report['task']}: {report['tasks']} tasks × {report['trajectories']} episodes × "
        f"{report['horizon']} steps, untrained policy, {report['threads']} thread(s)",
        f"{'rollout':<15} {'steps':>8} {'seconds':>8} {'steps/s':>10}",
    ]
    for name in ("batched", "batched_shared", "sequential"):
        r = report[name]
        lines.append(f"{name:<15} {r['steps']:>8} {r['seconds']:>8.2f} {r['steps_per_s']:>10.0f}")
    lines.append(f"batched (one policy per task) ÷ sequential: {report['ratio']:.1f}x steps/s")
    return "\n".join(lines)
