"""The pretrain baseline, `metakit reproduce` and `metakit plot` end to end on a tiny budget."""

import copy
import csv
import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from helpers import GUARDED, grads_of, mlp, regression_batch
from PIL import Image

from metakit.cli import cli
from metakit.experiments.reports.evaluate import training_horizon
from metakit.experiments.reports.reproduce import results_markdown, run_config
from metakit.experiments.tasks import FAMILIES
from metakit.experiments.tasks.family import MSE, Reproduction
from metakit.experiments.tasks.regression.sinusoid import Sinusoid
from metakit.experiments.training import runs
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.trainer import train
from metakit.wrappers import Pretrain, VectorizedEngine, meta_backward


@pytest.mark.parametrize("backend", ["l2l", "func"])
def test_pretrain_gradient_is_joint_regression_gradient(backend):
    torch.manual_seed(0)
    base = mlp()
    batch = regression_batch(tasks=3, points=4, seed=1)
    x = torch.cat([batch.x_support, batch.x_query], 1).reshape(-1, 2)
    y = torch.cat([batch.y_support, batch.y_query], 1).reshape(-1, 1)
    params = list(base.parameters())
    expected = torch.autograd.grad(((base(x) - y) ** 2).mean(), params)
    algo = Pretrain(copy.deepcopy(base), lr=0.1)
    if backend == "func":
        VectorizedEngine(algo).meta_backward(batch, steps=1)
    else:
        meta_backward(algo, batch, 1, backend)
    for a, e in zip(grads_of(algo), expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)


def test_pretrain_fine_tuning_is_sgd_and_evaluation_uses_it():
    torch.manual_seed(2)
    model = mlp()
    task = regression_batch(tasks=1, points=5, seed=3)
    algo = Pretrain(model, lr=0.05)
    learner = algo.clone()
    loss = ((model(task.x_support[0]) - task.y_support[0]) ** 2).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    learner.adapt(((learner(task.x_support[0]) - task.y_support[0]) ** 2).mean())
    for p, theta, g in zip(learner.parameters(), model.parameters(), grads):
        torch.testing.assert_close(p, theta - 0.05 * g, rtol=1e-12, atol=1e-14)
    after_one = ((learner(task.x_query[0]) - task.y_query[0]) ** 2).mean()
    curve = VectorizedEngine(algo).query_curves(task, max_steps=1)["loss"]
    torch.testing.assert_close(curve[1, 0], after_one.detach(), rtol=1e-12, atol=1e-14)


def png_size(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.format, image.size


def test_reproduce_and_plot_end_to_end(tmp_path):
    out = tmp_path / "repro"
    args = ["reproduce", "sinusoid", "--seeds", "2", "--iterations", "3", "--tasks", "6", "--quiet"]
    result = CliRunner().invoke(
        cli, [*args, "--methods", "maml,reptile,enhanced,pretrain", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    # The paper protocol for all four, the 10-step variant for maml and enhanced, 2 seeds each.
    assert result.output.count("trained") == 8 + 4
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    columns = ["method", "variant", "seed", "shots", "steps", "mse", "ci95", "median", "worse", "diverged"]
    assert list(rows[0])[: len(columns)] == columns and set(rows[0]) <= {
        *columns,
        "tasks",
        "beyond_horizon",
        "iterations",
        "train_seconds",
    }
    # Rows past the steps a run's learned rule was trained for are marked, and no others.
    for r in rows:
        name = "-".join(part for part in (r["method"], r["variant"]) if part)
        horizon = training_horizon(runs.read_config(out / "runs" / f"{name}-it3-seed{r['seed']}"))
        beyond = horizon is not None and int(r["steps"]) > horizon
        assert (r.get("beyond_horizon") == "True") == beyond, r
        assert runs.read_config(out / "runs" / f"{name}-it3-seed{r['seed']}").inner_steps == (
            10 if r["variant"] == "10-step" else 5 if r["method"] == "reptile" else 1
        )
    assert len(rows) == (4 + 2) * 2 * 3 * 11  # (methods + 10-step methods) × seeds × shots × steps 0..10
    assert {r["method"] for r in rows} == {"maml", "reptile", "enhanced", "pretrain"}
    assert {r["method"] for r in rows if r["variant"] == "10-step"} == {"maml", "enhanced"}
    assert all(float(r["mse"]) > 0 and float(r["ci95"]) >= 0 and r["tasks"] == "6" for r in rows)
    # Each row has its run's iterations and training wall time (metrics.jsonl's seconds).
    for r in rows:
        name = "-".join(part for part in (r["method"], r["variant"]) if part)
        run_dir = out / "runs" / f"{name}-it3-seed{r['seed']}"
        assert r["iterations"] == "3" and float(r["train_seconds"]) == runs.training_seconds(run_dir) > 0
    markdown = (out / "results.md").read_text()
    assert "| method | 0 steps | 1 step | 5 steps | 10 steps | iterations | train time |" in markdown
    assert "| maml (published) | — | 0.67 | 0.38 | 0.35 | — | — |" in markdown
    five, ten = markdown.split("### 10-shot")[0], markdown.split("### 10-shot")[1].split("###")[0]
    assert "| mc, Park & Oliva 2019 (published) | — | 0.41 ± 0.05 | — | — | — | — |" in five
    assert "| metasgd, Park & Oliva 2019 (published) | — | 0.26 ± 0.03 | — | — | — | — |" in ten
    assert "| maml, Park & Oliva 2019 (published) | — | 0.44 ± 0.04 | — | — | — | — |" in ten
    for name in ("adaptation.png", "mse_vs_steps.png", "training_curves.png"):
        fmt, (width, height) = png_size(out / name)
        assert fmt == "PNG" and 400 <= width <= 1600 and 300 <= height <= 1000
    # Running again retrains nothing and gives the same table.
    again = CliRunner().invoke(cli, [*args, "--methods", "maml,reptile,enhanced,pretrain", "--out", str(out)])
    assert again.exit_code == 0 and again.output.count("trained earlier (") == 8 + 4
    assert (out / "results.md").read_text() == markdown

    plots = tmp_path / "plots"
    run_dirs = [str(out / "runs" / "maml-it3-seed0"), str(out / "runs" / "maml-it3-seed1")]
    result = CliRunner().invoke(cli, ["plot", *run_dirs, "--out", str(plots), "--tasks", "4"])
    assert result.exit_code == 0, result.output
    for name in ("adaptation.png", "mse_vs_steps.png", "training_curves.png"):
        assert png_size(plots / name)[0] == "PNG"


def stop_at_checkpoint(run_dir, iteration, scratch):
    """Make the finished run in ``run_dir`` look stopped after its checkpoint at ``iteration``
    (trained again to there in ``scratch``)."""
    config = runs.read_config(run_dir)
    train(TrainConfig(**{**config.to_dict(), "iterations": iteration}), scratch, progress=False)
    state = torch.load(scratch / runs.CHECKPOINT, weights_only=True)
    for name in (runs.CHECKPOINT, runs.PREVIOUS):
        (run_dir / name).unlink(missing_ok=True)
    torch.save(state, run_dir / runs.CHECKPOINT)


def test_reproduce_resumes_an_interrupted_run(tmp_path):
    out = tmp_path / "repro"
    args = [
        "reproduce",
        "sinusoid",
        "--seeds",
        "1",
        "--tasks",
        "4",
        "--methods",
        "maml",
        "--quiet",
        "--out",
        str(out),
    ]
    assert CliRunner().invoke(cli, [*args, "--iterations", "4"]).exit_code == 0
    stop_at_checkpoint(out / "runs" / "maml-it4-seed0", 2, tmp_path / "short")
    result = CliRunner().invoke(cli, [*args, "--iterations", "4"])
    assert result.exit_code == 0 and "resumed at 2" in result.output


def test_a_run_trained_again_is_evaluated_again(tmp_path, monkeypatch):
    out = tmp_path / "repro"
    args = ["reproduce", "sinusoid", "--seeds", "1", "--iterations", "2", "--tasks", "4"]
    args += ["--methods", "fomaml", "--quiet", "--out", str(out)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    cache = out / "runs" / "fomaml-it2-seed0" / runs.EVALUATION
    first = json.loads(cache.read_text())
    # The protocol changes (another inner rate): the run trains afresh under the same name, and the
    # old model's cached evaluation must not be reported for the new one.
    changed = dataclasses.replace(Sinusoid.reproduction, method_overrides={"fomaml": {"inner_lr": 0.002}})
    monkeypatch.setattr(Sinusoid, "reproduction", changed)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "[fomaml seed 0] trained (" in result.output, result.output
    second = json.loads(cache.read_text())
    assert second["settings"] == first["settings"] and second["results"] != first["results"]
    cache.unlink()
    assert CliRunner().invoke(cli, args).exit_code == 0  # evaluated from scratch: the same
    assert json.loads(cache.read_text()) == second
    train(None, cache.parent, progress=False, iterations=3)  # extended: the model changes again
    assert not cache.exists()


def test_reproduce_first_says_what_it_will_train(tmp_path):
    out = tmp_path / "repro"
    args = ["reproduce", "sinusoid", "--seeds", "1,maml=2", "--iterations", "4", "--tasks", "4"]
    args += ["--methods", "maml,fomaml", "--quiet", "--out", str(out)]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    # maml: 2 seeds × (the paper protocol, the 10-step variant); fomaml: 1 seed, the protocol only.
    line = f"reproduce sinusoid: 5 runs in {out / 'runs'} — "
    assert (
        first.output.splitlines()[0]
        == line + "0 finished earlier, 0 to continue from a checkpoint, 5 to train"
    )
    # One run interrupted at its iteration-2 checkpoint, one trained under another protocol.
    stop_at_checkpoint(out / "runs" / "maml-it4-seed1", 2, tmp_path / "short")
    other = out / "runs" / "fomaml-it4-seed0"
    runs.write_json_atomic(other / runs.CONFIG, {**runs.read_config(other).to_dict(), "inner_lr": 0.5})
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert (
        again.output.splitlines()[0]
        == line + "3 finished earlier, 1 to continue from a checkpoint, 1 to train"
    )


def test_a_run_another_process_trains_stops_reproduce_before_any_training(tmp_path):
    out = tmp_path / "repro"
    args = ["reproduce", "sinusoid", "--seeds", "2", "--iterations", "2", "--tasks", "4"]
    args += ["--methods", "fomaml"]
    busy = out / "runs" / "fomaml-it2-seed1"
    busy.mkdir(parents=True)
    with runs.lock_run(busy):  # as if another process were training seed 1
        result = CliRunner().invoke(cli, [*args, "--quiet", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{busy} is being trained by process" in result.output
    assert not (out / "runs" / "fomaml-it2-seed0").exists()  # seed 0 was not trained first


def test_reproduce_reports_a_finished_runs_recorded_training_time(tmp_path):
    out = tmp_path / "repro"
    args = ["reproduce", "sinusoid", "--seeds", "1", "--iterations", "2", "--tasks", "4", "--methods", "maml"]
    assert CliRunner().invoke(cli, [*args, "--quiet", "--out", str(out)]).exit_code == 0
    metrics = out / "runs" / "maml-it2-seed0" / runs.METRICS
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    lines[-1]["seconds"] = 1234.4  # as if its training had taken 20 minutes
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = CliRunner().invoke(cli, [*args, "--quiet", "--out", str(out)])
    assert result.exit_code == 0 and "[maml seed 0] trained earlier (1234 s of training);" in result.output, (
        result.output
    )


def test_reproduce_takes_seeds_per_method(tmp_path):
    out = tmp_path / "repro"
    args = ["reproduce", "sinusoid", "--iterations", "2", "--tasks", "4", "--methods", "maml,fomaml"]
    result = CliRunner().invoke(cli, [*args, "--seeds", "1,maml=2", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # maml (and its 10-step variant) gets 2 seeds, fomaml the 1 of the methods not named.
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "fomaml-it2-seed0",
        "maml-10-step-it2-seed0",
        "maml-10-step-it2-seed1",
        "maml-it2-seed0",
        "maml-it2-seed1",
    ]
    markdown = (out / "results.md").read_text()
    assert "2 meta-iterations, 2 seeds (maml), 1 seed (fomaml), 4 held-out tasks." in markdown
    assert "[± std across seeds, for a method with several]" in markdown
    rows = [line for line in markdown.splitlines() if line.split(" | ")[0] in ("| maml", "| fomaml")]
    assert len(rows) == 9  # 3 shot counts: maml in both variants' tables, fomaml in the first's
    assert all(("[±" in row) == row.startswith("| maml |") for row in rows), rows


@pytest.mark.parametrize(
    "seeds, message",
    [
        ("0", "'0': a count must be at least 1"),
        ("1,maml=x", "'maml=x' is not a count or METHOD=COUNT"),
        ("mamll=2", "unknown method 'mamll'"),
        ("maml=2,maml=3", "maml is given twice"),
        ("1,2", "the count of the others is given twice"),
        ("=3", "'=3' is not a count or METHOD=COUNT"),
        ("maml=3=4", "'maml=3=4' is not a count or METHOD=COUNT"),
        ("fomaml=2", "--seeds gives seeds to fomaml, which this reproduction does not run (it runs maml)"),
    ],
)
def test_reproduce_refuses_bad_seed_counts_before_writing_anything(tmp_path, seeds, message):
    out = tmp_path / "repro"
    args = ["reproduce", "sinusoid", "--methods", "maml", "--iterations", "1", "--tasks", "2", "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--seeds", seeds, "--out", str(out)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert message in result.output and not out.exists()


@pytest.mark.parametrize("seeds, method_seeds", [(0, {}), (1, {"maml": 0})])
def test_the_python_api_refuses_a_count_below_one(tmp_path, seeds, method_seeds):
    from metakit.experiments.reports.reproduce import reproduce
    from metakit.experiments.util.errors import MetakitError

    with pytest.raises(MetakitError, match="--seeds: every count must be at least 1"):
        reproduce(
            "sinusoid", tmp_path / "r", seeds, iterations=1, methods=["maml"], method_seeds=method_seeds
        )
    assert not (tmp_path / "r").exists()


def test_seed_counts_parse_names_with_spaces_and_keep_the_default_for_the_others():
    from metakit.cli import SeedCounts

    assert SeedCounts(default=3).convert(" maml = 2 , fomaml=1", None, None) == (3, {"maml": 2, "fomaml": 1})
    assert SeedCounts(default=3).convert("2", None, None) == (2, {})


def test_the_seed_spread_is_shown_only_where_a_cell_has_several_seeds():
    row = dict(shots=5, steps=1, mse=0.5, ci95=0.1, median=0.4, worse=0, diverged=0, tasks=6)
    # maml has 2 seeds in the first variant; in the second one of them diverged and left no rows.
    rows = [
        {**row, "method": "maml", "variant": v, "seed": s, "mse": 0.5 + s} for v in ("", "b") for s in (0, 1)
    ]
    rows = rows[:3]
    reproduction = Reproduction(description="d", eval_shots=(5,), eval_steps=(1,), reported_steps=(1,))
    lines = results_markdown(rows, reproduction, MSE, 6, 3).splitlines()
    cells = [line for line in lines if line.startswith("| maml")]
    assert cells == ["| maml | 1.000 ± 0.100 [± 0.707] | — | — |", "| maml | 0.500 ± 0.100 | — | — |"]


def test_image_families_reproduce_the_fields_ten_methods_unless_told_otherwise():
    ten = {"maml", "fomaml", "reptile", "mc", "lslr", "enhanced", "metasgd", "anil", "protonet", "finetune"}
    for task in ("glyphs", "omniglot", "mini-imagenet"):
        methods = FAMILIES.get(task).reproduction.methods
        assert len(methods) == 10 and set(methods) == ten, task
        for method in methods:  # each is a valid configuration of the family
            TrainConfig(task="glyphs", method=method)


@pytest.mark.parametrize("task", ["glyphs", "omniglot", "mini-imagenet"])
def test_image_reproductions_train_reptile_after_nichol_et_al(task, tmp_path):
    # Reptile: 5 inner steps on the support set, SGD outer steps annealed from ε = 1; every other
    # method on the family's own protocol (inner steps, Adam at its meta rate).
    protocol = FAMILIES.get(task).protocol
    reptile, maml = (
        run_config(task, m, 0, None, {"shots": 1}, data_root=str(tmp_path)) for m in ("reptile", "maml")
    )
    settings = ("inner_steps", "inner_all_points", "outer_optimizer", "meta_lr")
    assert [getattr(reptile, k) for k in settings] == [5, False, "sgd-annealed", 1.0]
    assert [getattr(maml, k) for k in settings] == [
        protocol["inner_steps"],
        False,
        "adam",
        protocol["meta_lr"],
    ]


def test_results_tables_mark_cells_beyond_the_trained_horizon():
    row = dict(variant="", seed=0, shots=5, mse=0.5, ci95=0.1, median=0.4, worse=0, diverged=0, tasks=6)
    rows = [{**row, "method": "maml", "steps": s} for s in (0, 1, 3)]
    rows += [
        {**row, "method": "lslr", "steps": s, **({"beyond_horizon": True} if s > 2 else {})}
        for s in (0, 1, 3)
    ]
    rows += [
        {**row, "method": "mc", "steps": s, **({"beyond_horizon": True} if s > 1 else {})} for s in (0, 1, 3)
    ]
    reproduction = Reproduction(
        description="d", eval_shots=(5,), eval_steps=(0, 1, 3), reported_steps=(0, 1, 3)
    )
    lines = results_markdown(rows, reproduction, MSE, 6, 3, {"": {"lslr": 2, "mc": 1}}).splitlines()
    table = [line.strip("| ").split(" | ") for line in lines if line.startswith("| ")]
    cells = {name: values[:3] for name, *values in table}  # the step columns
    assert [c.endswith("\\*") for c in cells["lslr"]] == [False, False, True]
    assert [c.endswith("\\*") for c in cells["mc"]] == [False, False, True]
    assert not any("*" in c for c in cells["maml"])
    assert "\\* beyond the inner steps the runs were trained for (lslr 2, mc 1)" + GUARDED in lines
    one = results_markdown(rows[:6], reproduction, MSE, 6, 3, {"": {"lslr": 2, "mc": 1}})
    assert "\\* beyond the 2 inner steps the run was trained for" + GUARDED in one.splitlines()


def test_a_run_whose_training_diverges_is_listed_and_the_others_go_on(tmp_path, monkeypatch):
    out = tmp_path / "repro"
    args = ["reproduce", "sinusoid", "--seeds", "1", "--tasks", "4", "--iterations", "3", "--quiet"]
    # An inner rate of 1e30 makes fomaml's meta-loss non-finite at its first iteration.
    huge = Reproduction(
        description="sinusoid",
        method_overrides={"fomaml": {"inner_lr": 1e30, "max_skips": 1}},
        eval_shots=(5,),
        eval_steps=(0, 1),
        reported_steps=(0, 1),
    )
    monkeypatch.setattr(Sinusoid, "reproduction", huge)
    result = CliRunner().invoke(cli, [*args, "--methods", "fomaml,maml", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "[fomaml seed 0] training diverged: fomaml: non-finite meta-loss" in result.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["method"] for r in rows} == {"maml"}
    markdown = (out / "results.md").read_text()
    assert "Runs whose training diverged (not in the table):" in markdown
    assert "- fomaml seed 0: fomaml: non-finite meta-loss or gradient at iteration 1" in markdown
    # every run diverged: the report still lists them, with no table rows and no plots
    alone = CliRunner().invoke(cli, [*args, "--methods", "fomaml", "--out", str(tmp_path / "alone")])
    assert alone.exit_code == 0, alone.output
    assert "- fomaml seed 0:" in (tmp_path / "alone" / "results.md").read_text()
