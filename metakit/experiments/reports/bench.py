"""``metakit bench``: meta-training throughput and peak memory of every backend on a task family.

Each contender runs whole meta-training iterations (sample a task batch, zero the gradients,
meta-gradient, Adam step) from the same initialisation and task stream; metakit's own contenders
run :meth:`~metakit.experiments.training.trainer.Training.step`, the training loop's iteration:

* ``func``: metakit's vectorised ``torch.func`` engine, eager;
* ``func-compiled``: the same engine with ``compile=True`` (its compilation is timed apart);
* ``l2l`` and ``higher``: metakit's per-task reference backends (:func:`meta_backward`);
* ``learn2learn``: the plain loop of learn2learn's own sine example (``l2l.algorithms.MAML``,
  ``clone()`` / ``adapt()`` per task, one ``backward()`` per task, gradients divided by the
  batch; conv nets with torch's fused batch norm, as learn2learn's own), the baseline of every
  speed-up. It is second-order MAML whatever the method.

Contenders are interleaved round by round (in a rotating order, so none always follows the
same one); the reported time is the median over rounds.
"""

import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from metakit._l2l import learn2learn as l2l
from metakit.experiments.methods import METHODS
from metakit.experiments.tasks import FAMILIES, build_family
from metakit.experiments.tasks.vision.convnet import with_fused_batch_norm
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.trainer import build_training, resolve_device, train
from metakit.wrappers.engines.memory import peak_memory_growth

BASELINE = "learn2learn"
CONTENDERS = ("func", "func-compiled", "l2l", "higher", BASELINE)
BENCH_METHODS = ("maml", "enhanced")
"""The methods a benchmark can time (``--methods``)."""
MEMORY_METRIC = (
    "growth of the process's peak resident set during one meta-iteration, after warm-up, with the "
    "heap trimmed and the kernel's high-water mark reset first (Linux; null elsewhere); on CUDA the "
    "growth of the peak of allocated device memory"
)


@dataclass(frozen=True)
class BenchPlan:
    """The settings and contenders of a benchmark; every method × meta-batch × inner-steps is run."""

    task: str = "sinusoid"
    methods: tuple = BENCH_METHODS
    meta_batch: tuple = (25, 100)
    inner_steps: tuple = (1, 5)
    contenders: tuple = CONTENDERS
    repeats: int = 5
    """Timed rounds per contender and setting; the median is reported."""
    min_time: float = 0.3
    """Seconds each contender runs per round (at least one iteration)."""
    threads: int = 1
    """``torch.set_num_threads`` for the whole benchmark."""
    shots: Optional[int] = None
    """Support examples per task (per class for classification); default: the family's protocol."""
    ways: Optional[int] = None
    """Classes per task (classification families); default: the family's protocol."""
    seed: int = 0
    data_root: Optional[str] = None
    """Image families: the data folder (``--data-root`` of ``metakit train``)."""
    device: str = "cpu"
    """Where every contender runs (``auto``: CUDA when available); iterations end with a device sync."""


QUICK = BenchPlan(
    methods=("maml",),
    meta_batch=(5,),
    inner_steps=(1,),
    contenders=tuple(c for c in CONTENDERS if c != "func-compiled"),
    repeats=3,
    min_time=0.0,
)


def make_plan(quick: bool = False, task: str = "sinusoid", **options) -> BenchPlan:
    """The full (or ``quick``) plan for ``task`` with ``options`` (plan fields) overriding it.

    ``methods`` (any registered methods) and ``contenders`` are comma-separated strings; an unknown
    or empty list, an unknown task or a method that does not run on a contender's backend raises
    :class:`ValueError`.
    """
    for key, allowed in (("methods", METHODS.names()), ("contenders", CONTENDERS)):
        if key in options:
            options[key] = _names(options[key], allowed, key)
    options = {key: tuple(v) if isinstance(v, list) else v for key, v in options.items()}
    if quick:
        base = QUICK
    else:
        base = replace(BenchPlan(), **FAMILIES.get(task).bench_plan)
    plan = replace(base, task=task, **options)
    if plan.shots is not None or plan.ways is not None:  # the task shape, checked as train checks it
        TrainConfig(task=task, shots=plan.shots, ways=plan.ways, data_root=plan.data_root)
    for method in plan.methods:
        backends = METHODS.get(method).backends
        unfit = [c for c in plan.contenders if c != BASELINE and c.split("-")[0] not in backends]
        if unfit:
            fit = [c for c in CONTENDERS if c == BASELINE or c.split("-")[0] in backends]
            raise ValueError(
                f"--methods {method} does not run on {', '.join(unfit)}; use --contenders {','.join(fit)}"
            )
    return plan


def _names(value: str, allowed: tuple, option: str) -> tuple:
    chosen = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise ValueError(
            f"--{option}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}"
        )
    return chosen


def plain_learn2learn_iteration(config: TrainConfig, family) -> Callable[[], None]:
    """One iteration of the plain learn2learn MAML loop, written like learn2learn's sine and
    Omniglot examples: clone, adapt, ``backward()`` per task, gradients divided by the batch. Conv
    nets run torch's fused batch norm there (not the per-step one), as learn2learn's own conv nets do
    (:func:`~metakit.experiments.tasks.vision.convnet.with_fused_batch_norm`: the same model and
    derivatives; metakit's engines need the element-wise one under ``vmap``)."""
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = with_fused_batch_norm(family.build_model())
    maml = l2l.algorithms.MAML(model.to(device), lr=config.inner_lr)
    optimizer = torch.optim.Adam(maml.parameters(), lr=config.meta_lr)
    generator = torch.Generator().manual_seed(config.seed)

    def iteration():
        batch = family.sample(config.meta_batch, config.shots, config.query, generator)
        batch = type(batch)(*(t.to(device) for t in batch))
        optimizer.zero_grad()
        for i in range(config.meta_batch):
            x_support, y_support, x_query, y_query = batch.task(i)
            learner = maml.clone()
            for _ in range(config.inner_steps):
                learner.adapt(family.loss(learner(x_support), y_support))
            family.loss(learner(x_query), y_query).backward()
        for p in maml.parameters():
            p.grad.mul_(1.0 / config.meta_batch)
        optimizer.step()

    return iteration


def metakit_iteration(config: TrainConfig, family, contender: str) -> Callable[[], None]:
    """One iteration of ``metakit train``'s loop
    (:meth:`~metakit.experiments.training.trainer.Training.step`, without the loop's checks,
    logging and checkpoints) on a metakit backend."""
    backend = "func" if contender.startswith("func") else contender
    compile = "on" if contender == "func-compiled" else "off"
    setup = build_training(replace(config, backend=backend, compile=compile), family)

    def iteration():
        setup.step(0)

    return iteration


def iteration_flops(fn: Callable[[], None]) -> Optional[int]:
    """Floating-point operations of one call of ``fn``, as ``torch.utils.flop_counter`` counts
    them (matrix products and convolutions, forward and backward; element-wise work is not
    counted), or ``None`` where counting fails (e.g. inside compiled code)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    except Exception:  # noqa: BLE001 (a contender the counter cannot trace simply has no count)
        return None
    return counter.get_total_flops()


def counted_flops(config: TrainConfig, family) -> Optional[int]:
    """The floating-point operations of one iteration of ``config``'s method, counted
    (:func:`iteration_flops`) on metakit's eager per-task ``l2l`` backend where the method has it
    (else the eager ``func`` engine): every metakit contender runs these products.

    Not counted on each contender: the compiled graph hides its products, and under ``vmap`` per-task
    conv weights become grouped convolutions whose backward torch's counter overcounts (measured:
    232 instead of 37 GFLOP at glyphs 5-way 1-shot, meta-batch 32).
    """
    reference = "l2l" if "l2l" in METHODS.get(config.method).backends else "func"
    return iteration_flops(metakit_iteration(config, family, reference))


def gemm_rate(device: torch.device, size: int = 2048, min_time: float = 0.3) -> float:
    """The float32 matrix-product rate of this machine now, in GFLOP/s: ``size × size`` products
    on ``device`` with the current thread count, for at least ``min_time`` seconds (after one
    warm-up product). The ceiling the contenders' achieved rates are compared with."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    run = _synchronised(lambda: torch.mm(a, b), device)
    run()
    count, start = 0, time.perf_counter()
    while True:
        run()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return 2 * size**3 * count / elapsed / 1e9


def _synchronised(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``fn`` followed by a wait for the device's queued work (a no-op on the CPU)."""
    if device.type != "cuda":
        return fn

    def iteration():
        fn()
        torch.cuda.synchronize(device)

    return iteration


def bench_setting(plan: BenchPlan, method: str, meta_batch: int, steps: int) -> list:
    """Measure every contender of ``plan`` on one setting; one result dict per contender."""
    config = TrainConfig(
        task=plan.task,
        method=method,
        meta_batch=meta_batch,
        inner_steps=steps,
        shots=plan.shots,
        ways=plan.ways,
        seed=plan.seed,
        data_root=plan.data_root,
        device=plan.device,
    )
    family = build_family(config)
    family.prepare()
    device = resolve_device(config.device)
    iterations, first_call = {}, {}
    for name in plan.contenders:
        fn = _synchronised(
            plain_learn2learn_iteration(config, family)
            if name == BASELINE
            else metakit_iteration(config, family, name),
            device,
        )
        start = time.perf_counter()
        fn()  # warm-up; compiles func-compiled
        first_call[name] = time.perf_counter() - start
        iterations[name] = fn
    per_round = {}
    for name, fn in iterations.items():
        start = time.perf_counter()
        fn()
        per_round[name] = max(1, math.ceil(plan.min_time / (time.perf_counter() - start)))
    seconds = {name: [] for name in iterations}
    names = list(iterations)
    for r in range(plan.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, n = iterations[name], per_round[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            seconds[name].append((time.perf_counter() - start) / n)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    method_flops = counted_flops(config, family)
    flops = {
        name: iteration_flops(fn) if name == BASELINE else method_flops for name, fn in iterations.items()
    }
    return [
        {
            "method": method,
            "meta_batch": meta_batch,
            "inner_steps": steps,
            "contender": name,
            "seconds_per_iteration": median[name],
            "tasks_per_second": meta_batch / median[name],
            "speedup": median[BASELINE] / median[name] if BASELINE in median else None,
            "gflop_per_iteration": None if flops[name] is None else flops[name] / 1e9,
            "gflops": None if flops[name] is None else flops[name] / 1e9 / median[name],
            "peak_memory_bytes": peak_memory_growth(iterations[name], device),
            "compile_seconds": first_call[name] if name == "func-compiled" else None,
        }
        for name in names
    ]


def run_bench(plan: BenchPlan, echo: Callable[[str], None] = lambda _: None) -> dict:
    """Run ``plan``; returns a JSON-ready report (``results``: one dict per setting × contender;
    ``shots``, ``query`` and ``ways``: the task shape every setting used, the family's protocol
    where the plan leaves it open)."""
    shape = TrainConfig(
        task=plan.task, shots=plan.shots, ways=plan.ways, seed=plan.seed, data_root=plan.data_root
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(plan.threads)
    try:
        device = resolve_device(plan.device)
        gemm = [gemm_rate(device)]
        results = []
        for method in plan.methods:
            for meta_batch in plan.meta_batch:
                for steps in plan.inner_steps:
                    echo(f"bench: {method}, meta-batch {meta_batch}, {steps} inner step(s)")
                    results += bench_setting(plan, method, meta_batch, steps)
        gemm.append(gemm_rate(device))  # before and after: a machine whose load changed shows it
    finally:
        torch.set_num_threads(threads)
    for r in results:
        r["gemm_fraction"] = None if r["gflops"] is None else r["gflops"] / statistics.fmean(gemm)
    return {
        "task": plan.task,
        "torch": torch.__version__,
        "baseline": BASELINE,
        "memory_metric": MEMORY_METRIC,
        "gemm_gflops": gemm,
        "plan": asdict(plan),
        "shots": shape.shots,
        "query": shape.query,
        "ways": shape.ways,
        "results": results,
    }


def format_table(report: dict) -> str:
    """A plain-text table of a :func:`run_bench` report."""
    plan = report["plan"]
    shape = f"K = {report['shots']} support and {report['query']} query points per task"
    if report["ways"] is not None:
        shape = f"{report['ways']}-way {report['shots']}-shot, {report['query']} query images per class"
    lines = [
        f"{plan['task']}, {shape}; {plan['device']}, {plan['threads']} thread(s), median of "
        f"{plan['repeats']} rounds; speed-up against the plain {report['baseline']} loop; peak = RSS "
        "growth in one iteration",
        "GFLOP = matrix products and convolutions of one iteration (torch.utils.flop_counter, on the "
        "per-task l2l backend for metakit's contenders); "
        f"GEMM = float32 2048x2048 products, {' then '.join(f'{g:.1f}' for g in report['gemm_gflops'])} "
        "GFLOP/s (before and after)",
        f"{'method':<9} {'batch':>5} {'steps':>5}  {'contender':<13} {'ms/iter':>9} {'tasks/s':>9} "
        f"{'speed-up':>8} {'GFLOP':>7} {'GFLOP/s':>7} {'% GEMM':>6} {'peak MiB':>8} {'compile s':>9}",
    ]
    for r in report["results"]:
        speedup = "" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        peak = "" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.1f}"
        compiled = "" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
        gflop = "" if r["gflop_per_iteration"] is None else f"{r['gflop_per_iteration']:.3g}"
        rate = "" if r["gflops"] is None else f"{r['gflops']:.1f}"
        share = "" if r["gemm_fraction"] is None else f"{100 * r['gemm_fraction']:.0f}"
        lines.append(
            f"{r['method']:<9} {r['meta_batch']:>5} {r['inner_steps']:>5}  {r['contender']:<13} "
            f"{r['seconds_per_iteration'] * 1e3:>9.2f} {r['tasks_per_second']:>9.0f} {speedup:>8} "
            f"{gflop:>7} {rate:>7} {share:>6} {peak:>8} {compiled:>9}"
        )
    return "\n".join(lines)


def time_paper_protocol(
    config: TrainConfig = TrainConfig(),
    threads: int = 1,
    progress: bool = True,
    baseline_iterations: int = 500,
) -> dict:
    """Wall time of ``metakit train`` on ``config`` (by default MAML on the sinusoid paper protocol)
    into a temporary run directory that is deleted afterwards, beside the plain learn2learn loop's
    time for the same iterations, extrapolated from ``baseline_iterations`` of it timed in the same
    process after it (the same task family, model, meta-batch, shots and inner steps)."""
    iterations = config.iterations
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            summary = train(config, Path(tmp) / "run", progress=progress)
        family = build_family(config)
        baseline = plain_learn2learn_iteration(config, family)
        baseline()  # warm-up
        timed = min(baseline_iterations, iterations)
        start = time.perf_counter()
        for _ in range(timed):
            baseline()
        per_iteration = (time.perf_counter() - start) / timed
    finally:
        torch.set_num_threads(previous)
    baseline_seconds = per_iteration * iterations
    return {
        "protocol": config.to_dict(),
        "threads": threads,
        "engine": summary["engine"],
        "seconds": summary["seconds"],
        "iterations_per_second": iterations / summary["seconds"],
        "baseline_seconds": baseline_seconds,
        "baseline_iterations_timed": timed,
        "speedup": baseline_seconds / summary["seconds"],
    }


def format_protocol(report: dict) -> str:
    """Two lines for a :func:`time_paper_protocol` report."""
    config = report["protocol"]
    shape = (
        f"K={config['shots']}"
        if config.get("ways") is None
        else f"{config['ways']}-way {config['shots']}-shot"
    )
    rate = report["iterations_per_second"]
    return (
        f"metakit train ({config['task']}, {config['method']}, {config['iterations']} iterations, meta-batch "
        f"{config['meta_batch']}, {shape}, {report['engine']} engine, {report['threads']} "
        f"thread(s)): {report['seconds']:.1f} s, {rate:.3g} it/s\n"
        f"plain learn2learn loop, same iterations (extrapolated from {report['baseline_iterations_timed']}): "
        f"{report['baseline_seconds']:.1f} s; speed-up {report['speedup']:.2f}x (loop time / metakit time)"
    )
