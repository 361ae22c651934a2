"""The rollout bench runs and counts the steps it claims (tiny sizes; the timing itself is not tested)."""

from metakit.experiments.tasks.rl.nav2d_env import Nav2D
from metakit.experiments.tasks.rl.rollout_bench import bench_rollouts


def test_bench_rollouts_reports_every_way_with_its_step_count():
    report = bench_rollouts(tasks=2, trajectories=3, task=Nav2D(horizon=7))
    assert report["batched"]["steps"] == report["batched_shared"]["steps"] == 2 * 3 * 7
    assert 2 * 3 <= report["sequential"]["steps"] <= 2 * 3 * 7
    for name in ("batched", "batched_shared", "sequential"):
        entry = report[name]
        assert entry["seconds"] > 0 and abs(entry["steps_per_s"] - entry["steps"] / entry["seconds"]) < 1e-6
    assert report["ratio"] == report["batched"]["steps_per_s"] / report["sequential"]["steps_per_s"]
