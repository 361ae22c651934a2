"""Training over several processes (torchrun, gloo on the CPU): one meta-batch split across ranks,
the same run whatever the world size, elastic restarts and one writer per run."""

import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import grads_of
from test_cli import RUN_FILES, invoke, option_args

from metakit.experiments.tasks import FAMILIES, register_family
from metakit.experiments.training import distributed, runs
from metakit.experiments.training.config import ConfigError, TrainConfig
from metakit.experiments.training.distributed import World
from metakit.experiments.training.trainer import build_training, train
from metakit.wrappers import TaskBatch

# --- the meta-gradient of a batch split over two processes ------------------------------------

GRADIENT_CASES = {
    "maml": dict(method="maml"),
    "fomaml": dict(method="fomaml"),
    "reptile": dict(method="reptile"),
    "mc": dict(method="mc"),
    "lslr": dict(method="lslr"),
    "enhanced": dict(method="enhanced", multi_step_loss=True),
    "pretrain": dict(method="pretrain"),
    "maml-l2l": dict(method="maml", backend="l2l"),
}
# meta-batch 5: slices of 3 and 2
GRADIENT_COMMON = dict(meta_batch=5, inner_steps=2, shots=4, seed=3, device="cpu", compile="off")


def float64_gradients(world: World) -> dict:
    """``{case: (loss, grads, which grads are None)}`` of the first batch of every case, in float64."""
    results = {}
    for name, options in GRADIENT_CASES.items():
        setup = build_training(TrainConfig(**GRADIENT_COMMON, **options), world=world)
        setup.algo.double()
        sample = setup.family.sample
        setup.family.sample = lambda *args, sample=sample: TaskBatch(*(t.double() for t in sample(*args)))
        loss, _, _ = setup.step(0)
        results[name] = (loss, grads_of(setup.algo), [p.grad is None for p in setup.algo.parameters()])
    return results


def free_port() -> int:
    """A TCP port free at the moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _computing_worker(rank: int, port: int, out: str, compute) -> None:
    """Process ``rank`` of two: save ``compute(world)`` to ``out.<rank>``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = World(rank, 2, rank)
    with distributed.process_group(world):
        torch.save(compute(world), f"{out}.{rank}")


def in_two_processes(compute, out: str, monkeypatch) -> list:
    """``compute(world)`` of rank 0 (this process) and rank 1 (a spawned one), in rank order."""
    port = free_port()
    other = mp.get_context("spawn").Process(target=_computing_worker, args=(1, port, out, compute))
    other.start()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    _computing_worker(0, port, out, compute)
    other.join(timeout=120)
    assert other.exitcode == 0
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]


def test_two_processes_compute_the_meta_gradient_of_the_whole_batch(tmp_path, monkeypatch):
    ranks = in_two_processes(float64_gradients, str(tmp_path / "grads"), monkeypatch)
    reference = float64_gradients(World())
    for name, (loss, grads, missing) in reference.items():
        for rank in ranks:
            other_loss, other_grads, other_missing = rank[name]
            assert other_missing == missing, name
            assert other_loss == pytest.approx(loss, rel=1e-12), name
            for a, b in zip(other_grads, grads):
                torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13, msg=name)
        assert all(torch.equal(a, b) for a, b in zip(ranks[0][name][1], ranks[1][name][1])), name


def _skip_worker(rank: int, port: int, out: str) -> None:
    """Two steps of lslr where, at the first, one task of rank 1's slice alone explodes."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = World(rank, 2, rank)
    with distributed.process_group(world):
        setup = build_training(TrainConfig(**GRADIENT_COMMON, method="lslr"), world=world)
        start = [p.detach().clone() for p in setup.algo.parameters()]
        sample = setup.sample
        poisoned = iter([rank == 1, False])

        def sample_once():
            batch = sample()
            if next(poisoned):
                batch.y_query[0] = 1e38
            return batch

        setup.sample = sample_once
        skipped, after = [], []
        for i in range(2):
            skipped.append(setup.step(i)[2])
            after.append([p.detach().clone() for p in setup.algo.parameters()])
        torch.save((skipped, start, after), f"{out}.{rank}")


def test_a_task_exploding_on_one_process_makes_every_process_skip_the_batch(tmp_path, monkeypatch):
    port, out = free_port(), str(tmp_path / "skips")
    other = mp.get_context("spawn").Process(target=_skip_worker, args=(1, port, out))
    other.start()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    _skip_worker(0, port, out)
    other.join(timeout=120)
    assert other.exitcode == 0
    ranks = [torch.load(f"{out}.{rank}") for rank in range(2)]
    for skipped, start, (first, second) in ranks:
        assert skipped == [True, False]
        assert all(torch.equal(a, b) for a, b in zip(first, start))  # the skipped step changed nothing
        assert not all(torch.equal(a, b) for a, b in zip(second, start))
    assert all(torch.equal(a, b) for a, b in zip(ranks[0][2][1], ranks[1][2][1]))  # stepped alike


def per_step_statistics(world: World) -> list:
    """The running statistics of a ``--per-step-bn`` run after its first meta-batch (3 tasks:
    slices of 2 and 1)."""
    from test_per_step_bn import Tiny

    register_family("test-per-step-bn", Tiny)
    try:
        config = TrainConfig(task="test-per-step-bn", per_step_bn=True, meta_batch=3, seed=2, compile="off")
        setup = build_training(config, world=world)
        setup.step(0)
    finally:
        FAMILIES.unregister("test-per-step-bn")
    return [b.clone() for name, b in setup.algo.named_buffers() if "running" in name]


def test_two_processes_record_the_running_statistics_of_the_whole_batch(tmp_path, monkeypatch):
    ranks = in_two_processes(per_step_statistics, str(tmp_path / "moments"), monkeypatch)
    reference = per_step_statistics(World())
    assert len(reference) == 4  # mean and variance of two batch norm layers
    for a, b, expected in zip(*ranks, reference):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, expected, rtol=1e-6, atol=1e-7)


def _writer_worker(rank: int, port: int, root: str) -> None:
    """Train a 3-iteration run with a checkpoint every iteration as process ``rank`` of two, each
    process given a run folder of its own (``root/rank<r>``: only rank 0's is used); the summary
    goes to ``root``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    config = TrainConfig(iterations=3, meta_batch=2, checkpoint_every=1, log_every=1, device="cpu")
    summary = train(config, Path(root) / f"rank{rank}", progress=False)
    (Path(root) / f"summary{rank}.json").write_text(json.dumps(summary))


def test_a_process_other_than_rank_zero_never_writes_a_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "rank1").mkdir()  # rank 1's own folder exists, so a write there would succeed
    port = free_port()
    other = mp.get_context("spawn").Process(target=_writer_worker, args=(1, port, str(tmp_path)))
    other.start()
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.setenv(name, "")  # recorded, so that teardown removes what rank 0 below sets
    _writer_worker(0, port, str(tmp_path))
    other.join(timeout=120)
    assert other.exitcode == 0
    summaries = [json.loads((tmp_path / f"summary{rank}.json").read_text()) for rank in range(2)]
    assert [s["iterations"] for s in summaries] == [3, 3] and summaries[0]["engine"] == summaries[1]["engine"]
    assert (tmp_path / "rank0" / runs.CHECKPOINT).is_file() and (tmp_path / "rank0" / runs.METRICS).is_file()
    assert list((tmp_path / "rank1").iterdir()) == []  # rank 1 trained alongside and wrote nothing


def test_slices_cover_the_batch_and_too_small_a_batch_is_refused():
    for batch, size in [(5, 2), (25, 2), (7, 3), (4, 4)]:
        bounds = [distributed.slice_bounds(batch, r, size) for r in range(size)]
        assert bounds[0][0] == 0 and bounds[-1][1] == batch
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
    with pytest.raises(ConfigError, match="--meta-batch 1 is smaller than the 2 processes"):
        build_training(TrainConfig(meta_batch=1, device="cpu"), world=World(0, 2))


# --- whole runs: one process, two processes, resumed across world sizes, restarted ------------

RUN = dict(
    iterations=200,
    meta_batch=5,
    inner_steps=1,
    shots=5,
    log_every=20,
    checkpoint_every=100,
    seed=5,
    device="cpu",
)


def torchrun(*args, nproc=2, restarts=0, cwd=None, **popen):
    """Start ``torchrun --standalone ... -m metakit train --quiet ARGS`` (a ``Popen``)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += [f"--max-restarts={restarts}", "-m", "metakit", "train", "--quiet", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=cwd, env=env, text=True, **popen)


def run_torchrun(*args, timeout=180, **kwargs) -> subprocess.CompletedProcess:
    """Run ``torchrun ... metakit train ARGS`` to its successful end."""
    proc = torchrun(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def parameters(run_dir: Path) -> dict:
    """The meta-parameters in the run's newest checkpoint."""
    return torch.load(Path(run_dir) / runs.CHECKPOINT, weights_only=True)["algorithm"]


def relative_difference(a: dict, b: dict) -> float:
    """``‖a − b‖ / ‖b‖`` over all meta-parameters."""
    diff = sum(((a[k] - b[k]) ** 2).sum() for k in b)
    return (diff / sum((b[k] ** 2).sum() for k in b)).sqrt().item()


def metrics(run_dir: Path) -> list:
    """The records of ``metrics.jsonl``."""
    return [json.loads(line) for line in (Path(run_dir) / runs.METRICS).read_text().splitlines()]


LOGGED = list(range(RUN["log_every"], RUN["iterations"] + 1, RUN["log_every"]))


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one") / "run"
    train(TrainConfig(**RUN), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """A two-process run (with TensorBoard), started in an otherwise empty folder."""
    cwd = tmp_path_factory.mktemp("two")
    result = run_torchrun("--out", "run", "--tensorboard", *option_args(RUN), cwd=cwd)
    return cwd / "run", result


def test_two_processes_end_where_one_process_does(one_process_run, two_process_run):
    run_dir, _ = two_process_run
    assert relative_difference(parameters(run_dir), parameters(one_process_run)) <= 1e-5
    ours, reference = metrics(run_dir), metrics(one_process_run)
    assert [r["iteration"] for r in ours] == [r["iteration"] for r in reference] == LOGGED
    for a, b in zip(ours, reference):
        assert a["meta_loss"] == pytest.approx(b["meta_loss"], rel=1e-5)


def test_rank_zero_alone_writes(two_process_run):
    run_dir, result = two_process_run
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["run"]
    names = {p.name for p in run_dir.iterdir()}
    assert names == {*RUN_FILES, "checkpoint.prev.pt", ".lock", "tensorboard"}
    assert len(list((run_dir / "tensorboard").iterdir())) == 1  # one event file
    assert [r["iteration"] for r in metrics(run_dir)] == LOGGED  # one line per logged iteration
    assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith("trained maml")
    assert json.loads((run_dir / "config.json").read_text()) == TrainConfig(**RUN, tensorboard=True).to_dict()


def from_previous_checkpoint(run_dir: Path, to: Path) -> Path:
    """A copy of ``run_dir`` as it was at its previous checkpoint (iteration 100)."""
    shutil.copytree(run_dir, to)
    (to / runs.CHECKPOINT).unlink()
    return to


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path, one_process_run, two_process_run):
    run_dir = from_previous_checkpoint(two_process_run[0], tmp_path / "run")
    result = invoke("train", "--resume", run_dir, "--quiet")
    assert result.exit_code == 0 and "resumed at 100" in result.stdout, result.output
    assert relative_difference(parameters(run_dir), parameters(one_process_run)) <= 1e-5
    assert [r["iteration"] for r in metrics(run_dir)] == LOGGED


def test_a_one_process_checkpoint_resumes_in_two_processes(tmp_path, one_process_run, two_process_run):
    run_dir = from_previous_checkpoint(one_process_run, tmp_path / "run")
    result = run_torchrun("--resume", run_dir)
    assert "resumed at 100" in result.stdout
    assert relative_difference(parameters(run_dir), parameters(one_process_run)) <= 1e-5
    assert relative_difference(parameters(run_dir), parameters(two_process_run[0])) <= 1e-5
    assert [r["iteration"] for r in metrics(run_dir)] == LOGGED


def metric_lines(run_dir: Path) -> int:
    """Lines of ``metrics.jsonl`` so far (0 before it exists)."""
    path = run_dir / runs.METRICS
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def lock_holder_pid(run_dir: Path):
    """The pid recorded in the run's lock file, or ``None``."""
    try:
        return json.loads((run_dir / runs.LOCK).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def wait_for(condition, proc, timeout=120):
    """Poll ``condition`` until it holds, while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the training ended too early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(tmp_path, two_process_run):
    run_dir = tmp_path / "run"
    args = ["--out", run_dir, *option_args(RUN)]  # as the reference, less TensorBoard
    proc = torchrun(*args, restarts=1, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: metric_lines(run_dir) >= 6, proc)  # past the checkpoint at 100
    killed = lock_holder_pid(run_dir)  # rank 0, the writer
    os.kill(killed, signal.SIGKILL)
    out, err = proc.communicate(timeout=180)  # torchrun restarts both workers once
    assert proc.returncode == 0 and "resumed at 100" in out, err[-3000:]
    assert lock_holder_pid(run_dir) != killed
    reference = two_process_run[0]
    ours, theirs = parameters(run_dir), parameters(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert strip(metrics(run_dir)) == strip(metrics(reference))


# --- one writer per run -----------------------------------------------------------------------

LOCKED = dict(iterations=400, meta_batch=2, log_every=50, checkpoint_every=100, device="cpu")


def test_one_process_trains_a_run_at_a_time_and_a_killed_one_leaves_no_lock(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "metakit", "train", "--quiet", "--force", "--out", str(run_dir)]
    args += option_args(LOCKED)
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trainings = [subprocess.Popen(args, **pipes), subprocess.Popen(args, **pipes)]
    wait_for(lambda: lock_holder_pid(run_dir) is not None, trainings[0])
    (winner,) = [p for p in trainings if p.pid == lock_holder_pid(run_dir)]
    (loser,) = [p for p in trainings if p is not winner]
    winner.send_signal(signal.SIGSTOP)  # holds the lock, whenever the other one gets there
    _, err = loser.communicate(timeout=120)
    busy = f"{run_dir} is being trained by process {winner.pid}"
    assert loser.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"Error: {busy}"), err

    winner.send_signal(signal.SIGCONT)
    wait_for(lambda: (run_dir / runs.CHECKPOINT).exists(), winner)
    winner.send_signal(signal.SIGSTOP)
    config = (run_dir / runs.CONFIG).read_bytes()
    for contender in (
        ["--resume", run_dir],
        ["--out", run_dir, "--force", *option_args(LOCKED)],
        ["--out", run_dir, *option_args(LOCKED)],
    ):
        result = invoke("train", "--quiet", *contender)
        assert result.exit_code == 2 and result.stdout == "", result.output
        assert result.stderr.splitlines() == [result.stderr.strip()] and busy in result.stderr
    with pytest.raises(runs.RunError, match=busy):  # the Python API too, before it clears anything
        train(TrainConfig(**LOCKED), run_dir, progress=False)
    assert invoke("eval", run_dir, "--tasks", "5", "--json").exit_code == 0  # reading is fine
    assert (run_dir / runs.CONFIG).read_bytes() == config  # nothing cleared or rewritten

    winner.send_signal(signal.SIGKILL)
    assert winner.wait() == -signal.SIGKILL
    result = invoke("train", "--resume", run_dir, "--quiet")
    assert result.exit_code == 0 and "resumed at" in result.stdout, result.output
    logged = list(range(LOCKED["log_every"], LOCKED["iterations"] + 1, LOCKED["log_every"]))
    assert [r["iteration"] for r in metrics(run_dir)] == logged  # none missing, none twice
