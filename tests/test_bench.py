"""`metakit bench`: the quick smoke run, its JSON schema, the paper-protocol timer and option checks."""

import copy
import json

import pytest
import torch
from click.testing import CliRunner

from metakit._l2l import learn2learn as l2l
from metakit.cli import cli
from metakit.experiments.reports import bench
from metakit.experiments.tasks import build_family
from metakit.experiments.tasks.vision.convnet import BatchStatNorm2d, conv_net, with_fused_batch_norm
from metakit.experiments.training.config import TrainConfig

RESULT_KEYS = {
    "method",
    "meta_batch",
    "inner_steps",
    "contender",
    "seconds_per_iteration",
    "tasks_per_second",
    "speedup",
    "peak_memory_bytes",
    "compile_seconds",
    "gflop_per_iteration",
    "gflops",
    "gemm_fraction",
}


def invoke(*args):
    return CliRunner().invoke(cli, ["bench", *args])


@pytest.fixture(scope="module")
def quick_report():
    result = invoke("--quick", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_quick_json_schema(quick_report):
    assert quick_report["baseline"] == bench.BASELINE == "learn2learn"
    assert quick_report["plan"]["contenders"] == list(bench.QUICK.contenders)
    assert {"task", "torch", "memory_metric", "plan", "results"} <= set(quick_report)
    results = quick_report["results"]
    assert [r["contender"] for r in results] == ["func", "l2l", "higher", "learn2learn"]
    for r in results:
        assert set(r) == RESULT_KEYS
        assert (r["method"], r["meta_batch"], r["inner_steps"]) == ("maml", 5, 1)
        assert r["seconds_per_iteration"] > 0
        assert r["tasks_per_second"] == pytest.approx(5 / r["seconds_per_iteration"])
        assert r["speedup"] > 0
        assert r["peak_memory_bytes"] is None or (
            isinstance(r["peak_memory_bytes"], int) and r["peak_memory_bytes"] >= 0
        )
        assert r["compile_seconds"] is None
        assert r["gflops"] == pytest.approx(r["gflop_per_iteration"] / r["seconds_per_iteration"])
        gemm = sum(quick_report["gemm_gflops"]) / 2
        assert r["gemm_fraction"] == pytest.approx(r["gflops"] / gemm)
    assert results[-1]["speedup"] == 1.0
    assert len(quick_report["gemm_gflops"]) == 2 and min(quick_report["gemm_gflops"]) > 0
    # Every contender does the same products: MAML on the 1-40-40-1 MLP, meta-batch 5, K = 10.
    assert len({round(r["gflop_per_iteration"], 12) for r in results}) == 1


def test_table_lists_every_contender(quick_report):
    table = bench.format_table(quick_report)
    lines = table.splitlines()
    assert "speed-up" in lines[2] and "peak MiB" in lines[2] and "% GEMM" in lines[2]
    assert [line.split()[3] for line in lines[3:]] == ["func", "l2l", "higher", "learn2learn"]
    assert lines[-1].split()[6] == "1.0x"


def test_paper_protocol_times_a_short_training_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("--paper-protocol", "--protocol-iterations", "3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["protocol"]["iterations"] == 3 and report["protocol"]["backend"] == "func"
    assert report["seconds"] > 0 and report["iterations_per_second"] > 0
    assert report["engine"] == "func"  # three iterations never repay a compilation
    assert report["baseline_iterations_timed"] == 3 and report["baseline_seconds"] > 0
    assert report["speedup"] == pytest.approx(report["baseline_seconds"] / report["seconds"])
    assert list(tmp_path.iterdir()) == []  # no run left behind


def test_paper_protocol_of_an_image_family_times_its_protocol(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("--paper-protocol", "--task", "glyphs", "--protocol-iterations", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    protocol = report["protocol"]
    assert (protocol["task"], protocol["iterations"], protocol["meta_batch"], protocol["ways"]) == (
        "glyphs",
        2,
        32,
        5,
    )
    assert report["baseline_iterations_timed"] == 2 and report["baseline_seconds"] > 0
    assert list(tmp_path.iterdir()) == []
    text = bench.format_protocol(report)
    assert text.startswith("metakit train (glyphs, maml, 2 iterations, meta-batch 32, 5-way 1-shot, ")
    assert f"speed-up {report['speedup']:.2f}x" in text
    refused = invoke("--paper-protocol", "--task", "nav2d")
    assert refused.exit_code == 2 and "--task nav2d has a bench of its own" in refused.stderr


def test_plan_overrides_and_name_checks():
    plan = bench.make_plan(True, methods="enhanced, maml,enhanced", meta_batch=[3], repeats=2)
    assert plan.methods == ("enhanced", "maml") and plan.meta_batch == (3,) and plan.repeats == 2
    assert plan.contenders == bench.QUICK.contenders and "func-compiled" in bench.BenchPlan().contenders
    with pytest.raises(ValueError, match="unknown nope"):
        bench.make_plan(contenders="func,nope")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "nope"], "--methods: unknown nope"),
        (["--methods", "reptile"], "--methods reptile does not run on higher; use --contenders func,"),
        (["--contenders", ","], "--contenders: unknown (none given)"),
        (["--meta-batch", "0"], "--meta-batch"),
        (["--inner-steps", "1,x"], "--inner-steps"),
        (["--repeats", "0"], "--repeats"),
        (["--min-time", "nan"], "--min-time"),
        (["--threads", "0"], "--threads"),
        (["--paper-protocol", "--quick", "--repeats", "2"], "drop --quick, --repeats"),
        (["--protocol-iterations", "5"], "--paper-protocol only"),
        (["--ways", "5"], "--ways does not apply to --task sinusoid"),
        (["--task", "glyphs", "--ways", "1"], "--ways must be at least 2, got 1"),
        (["--task", "glyphs", "--shots", "0"], "--shots must be at least 1, got 0"),
    ],
)
def test_bad_options_are_usage_errors(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output


def test_help_names_every_contender():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in bench.CONTENDERS + bench.BENCH_METHODS:
        assert name in result.output


def test_flops_are_the_counted_products():
    a, b = torch.randn(64, 32, requires_grad=True), torch.randn(32, 16)

    def step():
        (a @ b).sum().backward()  # forward 2·64·32·16, backward (grad of a only) the same again

    assert bench.iteration_flops(step) == 2 * (2 * 64 * 32 * 16)
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    conv = bench.iteration_flops(lambda: torch.nn.functional.conv2d(x, w))
    assert conv == 2 * (2 * 4 * 6 * 6) * (3 * 3 * 3)  # outputs × multiply-adds per output


def test_gemm_rate_is_products_per_second(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock) * 0.1)
    # A clock of 0.1 s a reading: the loop stops after 3 timed products (0.3 s), 2·64³ FLOP each.
    rate = bench.gemm_rate(torch.device("cpu"), size=64, min_time=0.3)
    assert rate == pytest.approx(3 * 2 * 64**3 / 0.3 / 1e9)


@pytest.fixture
def mini_imagenet(tmp_path, monkeypatch):
    """A small generated miniImageNet (5-way tasks) and its config: meta-batch 2, 1-shot, 1 query."""
    import test_mini_imagenet

    for split in test_mini_imagenet.CLASSES:  # 5-way tasks
        monkeypatch.setitem(test_mini_imagenet.CLASSES, split, 5)
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    test_mini_imagenet.make_pickles(tmp_path / "data", per_class=2)
    config = TrainConfig(
        task="mini-imagenet", data_root=str(tmp_path / "data"), meta_batch=2, shots=1, query=1
    )
    return config, build_family(config)


def test_conv_flops_are_counted_per_task(mini_imagenet):
    # Under vmap, per-task conv weights are grouped convolutions, whose backward torch's counter
    # overcounts; the method's products are counted on the per-task l2l backend instead, the same
    # products as the plain loop's (second-order MAML).
    config, family = mini_imagenet
    counted = bench.counted_flops(config, family)
    assert counted == bench.iteration_flops(bench.plain_learn2learn_iteration(config, family)) > 0
    assert bench.iteration_flops(bench.metakit_iteration(config, family, "func")) > counted


def test_fused_batch_norm_is_the_same_model():
    # torch's fused batch norm in place of the element-wise one: the same logits and the same
    # second-order MAML meta-gradient (two inner steps, float64), outside vmap.
    torch.manual_seed(0)
    elementwise = conv_net(3, 1, 16, channels=4, blocks=2).double()
    for layer in (elementwise[1], elementwise[5]):  # a scale and shift other than the defaults
        layer.weight.data.uniform_(0.5, 1.5)
        layer.bias.data.uniform_(-0.5, 0.5)
    fused = with_fused_batch_norm(copy.deepcopy(elementwise))
    assert not any(isinstance(m, BatchStatNorm2d) for m in fused.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules()) == 2
    support, query = (
        torch.randn(6, 1, 16, 16, dtype=torch.float64),
        torch.randn(6, 1, 16, 16, dtype=torch.float64),
    )
    labels = torch.arange(6) % 3
    torch.testing.assert_close(fused(support), elementwise(support), rtol=0, atol=1e-12)

    def meta_gradient(net):
        learner = l2l.algorithms.MAML(net, lr=0.4).clone()
        for _ in range(2):
            learner.adapt(torch.nn.functional.cross_entropy(learner(support), labels))
        loss = torch.nn.functional.cross_entropy(learner(query), labels)
        return torch.autograd.grad(loss, list(net.parameters()))

    for a, b in zip(meta_gradient(fused), meta_gradient(elementwise)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_plain_loop_runs_the_fused_batch_norm(mini_imagenet, monkeypatch):
    iteration = bench.plain_learn2learn_iteration(*mini_imagenet)
    monkeypatch.setattr(
        BatchStatNorm2d, "forward", lambda self, x: pytest.fail("element-wise batch norm ran")
    )
    iteration()


def test_metakit_contenders_report_the_counted_products(monkeypatch):
    monkeypatch.setattr(bench, "counted_flops", lambda config, family: 7e9)
    result = invoke("--quick", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["contender"]: r["gflop_per_iteration"] for r in json.loads(result.stdout)["results"]}
    assert rows.pop("learn2learn") < 1 and set(rows.values()) == {7.0}


def test_shots_and_ways_shape_the_timed_tasks(monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def capture(config):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(bench, "build_family", capture)
    plan = bench.make_plan(task="glyphs", ways=20, shots=2, meta_batch=[16])
    with pytest.raises(Stop):
        bench.bench_setting(plan, "maml", 16, 1)
    assert (seen[0].ways, seen[0].shots, seen[0].query, seen[0].meta_batch) == (20, 2, 2, 16)
