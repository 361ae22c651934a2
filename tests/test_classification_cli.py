"""Few-shot classification through the command line: Omniglot folders, glyphs, eval rows, plots,
reproduce, and one-line errors for bad data."""

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from test_cli import invoke, snapshot

from metakit.experiments.reports.evaluate import evaluate_algorithm
from metakit.experiments.tasks import build_family
from metakit.experiments.tasks.vision.glyph_set import load_glyphs
from metakit.experiments.tasks.vision.omniglot import Omniglot
from metakit.experiments.training.config import TrainConfig
from metakit.experiments.training.runs import load_run
from metakit.experiments.training.trainer import train

ROW_KEYS = {"ways", "shots", "steps", "accuracy", "ci95", "median", "loss", "worse", "diverged", "tasks"}
PER_CLASS = 12


def draw_character(path, klass: int, drawing: int) -> None:
    """A 105×105 one-bit image in the official style: a class-specific stroke, jittered per drawing."""
    g = torch.Generator().manual_seed(1000 * klass + drawing)
    image = Image.new("1", (105, 105), 1)
    points = [(10 + 12 * ((klass + k) % 7), 10 + 11 * ((3 * klass + 2 * k) % 8)) for k in range(4)]
    dx, dy = (torch.randint(-4, 5, (2,), generator=g)).tolist()
    ImageDraw.Draw(image).line([(x + dx, y + dy) for x, y in points], fill=0, width=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory):
    """A small folder in the official layout under ``omniglot-py/``: 8 background and 4 evaluation
    characters with 12 drawings each."""
    root = tmp_path_factory.mktemp("omniglot")
    klass = 0
    for split, alphabets in (("background", {"Alpha": 4, "Beta": 4}), ("evaluation", {"Gamma": 4})):
        for alphabet, count in alphabets.items():
            for n in range(1, count + 1):
                for d in range(PER_CLASS):
                    name = f"{klass + 1:04d}_{d + 1:02d}.png"
                    draw_character(
                        root / "omniglot-py" / f"images_{split}" / alphabet / f"character{n:02d}" / name,
                        klass,
                        d,
                    )
                klass += 1
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def omniglot_run(omniglot_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "omniglot"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("METAKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        args = [
            "--task",
            "omniglot",
            "--omniglot-split",
            "background",
            "--data-root",
            omniglot_root,
            "--ways",
            3,
        ]
        args += ["--iterations", 3]
        result = invoke("train", *args, "--meta-batch", 2, "--log-every", 1, "--quiet", "--out", run_dir)
    assert result.exit_code == 0, result.output
    assert "on omniglot" in result.stdout and result.stderr == ""
    return run_dir


def test_omniglot_run_config_and_eval_rows(omniglot_run, omniglot_root):
    config = json.loads((omniglot_run / "config.json").read_text())
    assert (config["task"], config["ways"], config["shots"], config["query"]) == ("omniglot", 3, 1, 1)
    assert (
        config["rotations"] is True
        and config["inner_lr"] == 0.4
        and config["data_root"] == str(omniglot_root)
    )
    result = invoke("eval", omniglot_run, "--json", "--tasks", 6, "--shots", "1,2", "--steps", "0,1,3")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert [(r["shots"], r["steps"]) for r in rows] == [(k, s) for k in (1, 2) for s in (0, 1, 3)]
    for row in rows:
        assert set(row) == ROW_KEYS and row["ways"] == 3 and row["tasks"] == 6
        assert (
            0 <= row["accuracy"] <= 1 and row["ci95"] >= 0 and math.isfinite(row["loss"]) and row["loss"] > 0
        )
        assert type(row["ways"]) is int and type(row["shots"]) is int
        assert 0 <= row["median"] <= 1 and row["diverged"] == 0 and 0 <= row["worse"] <= 6
    # Before adaptation only the (shared) query set matters.
    assert rows[0]["accuracy"] == rows[3]["accuracy"] and rows[0]["loss"] == rows[3]["loss"]
    table = invoke("eval", omniglot_run, "--tasks", 6, "--shots", "1", "--steps", "0,1")
    assert table.exit_code == 0 and "accuracy" in table.stdout.splitlines()[1]
    assert f"{100 * rows[0]['accuracy']:.2f}%" in table.stdout
    fewer = invoke("eval", omniglot_run, "--json", "--tasks", 4, "--ways", 2, "--shots", 1, "--steps", "0")
    assert fewer.exit_code == 0, fewer.output
    assert [(r["ways"], r["shots"]) for r in json.loads(fewer.stdout)["results"]] == [(2, 1)]


def test_plot_of_a_classification_run_draws_accuracy(omniglot_run, tmp_path):
    result = invoke("plot", omniglot_run, "--out", tmp_path / "plots", "--tasks", 4, "--shots", 1)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "accuracy_vs_steps.png",
        "training_curves.png",
    ]


def bad_inputs(root, run):
    folder = ["--task", "omniglot", "--omniglot-split", "background", "--iterations", 1, "--meta-batch", 1]
    return {
        "missing root": (["train", *folder, "--data-root", root / "nope"], "nope"),
        "wrong layout": (
            ["train", *folder, "--data-root", root / "omniglot-py" / "images_background"],
            "images_background",
        ),
        "no data root": (["train", *folder], "--task omniglot needs --data-root"),
        "too many ways": (
            ["train", *folder, "--data-root", root, "--ways", 5],
            "meta-test split has 4 classes; 5-way",
        ),
        "too many images": (
            ["train", *folder, "--data-root", root, "--ways", 3, "--shots", 6, "--query", 7],
            "13 images per class",
        ),
        "ways on regression": (["train", "--ways", 3], "--ways does not apply to --task sinusoid"),
        "eval shots too large": (["eval", run, "--shots", 3], "--shots can be at most 2"),
        "eval ways too large": (["eval", run, "--ways", 4], "use at most 3"),
    }


@pytest.mark.parametrize("case", list(bad_inputs(Path("r"), "x")))
def test_bad_data_is_a_one_line_error_with_nothing_written(case, omniglot_root, omniglot_run, tmp_path):
    args, message = bad_inputs(omniglot_root, omniglot_run)[case]
    if args[0] == "train":
        args = [*args, "--out", tmp_path / "run"]
    before = snapshot(omniglot_root), snapshot(omniglot_run)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
    assert (snapshot(omniglot_root), snapshot(omniglot_run)) == before


def test_eval_of_a_run_whose_data_is_gone_is_a_one_line_error(omniglot_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(omniglot_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_root": str(tmp_path / "gone")}))
    result = invoke("eval", run, "--tasks", 4, "--shots", 1, "--steps", 0)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and str(tmp_path / "gone") in lines[0], result.output
    assert "Traceback" not in result.output


def test_a_corrupt_image_is_named(omniglot_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(omniglot_root, root)
    bad = next((root / "omniglot-py" / "images_evaluation").rglob("*.png"))
    bad.write_bytes(b"not a png")
    result = invoke(
        "train", "--task", "omniglot", "--omniglot-split", "background", "--data-root", root,
        "--iterations", 1, "--out", tmp_path / "run",
    )  # fmt: skip
    assert (
        result.exit_code == 2 and bad.name in result.stderr and len(result.stderr.strip().splitlines()) == 1
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu_is_a_usage_error(tmp_path):
    result = invoke("train", "--device", "cuda", "--iterations", 1, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "no CUDA device" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def glyph_root(tmp_path_factory):
    """The glyph set rendered once (about 10 s) into a folder used as --data-root."""
    root = tmp_path_factory.mktemp("glyphs")
    load_glyphs(root)
    return root


def test_a_short_glyph_run_learns_to_adapt(glyph_root, tmp_path):
    config = TrainConfig(task="glyphs", data_root=str(glyph_root), meta_batch=8, iterations=40, log_every=20)
    train(config, tmp_path / "run", progress=False)
    loaded, algo, _ = load_run(tmp_path / "run")
    rows = evaluate_algorithm(algo, build_family(loaded), tasks=100, shots=[1], steps=[0, 1], seed=1)
    before, after = rows[0]["accuracy"], rows[1]["accuracy"]
    assert after > 0.45 and after > before + 0.15, (before, after)  # chance is 0.2


def test_reproduce_glyphs_end_to_end(glyph_root, tmp_path, monkeypatch):
    monkeypatch.setenv("METAKIT_CACHE", str(glyph_root))
    out = tmp_path / "repro"
    args = [
        "reproduce",
        "glyphs",
        "--seeds",
        1,
        "--iterations",
        2,
        "--tasks",
        4,
        "--methods",
        "maml,finetune",
    ]
    result = invoke(*args, "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("trained") == 6  # 2 methods × (5-way 1-shot, 5-shot, 20-way 1-shot)
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0] == (
        "method,variant,seed,ways,shots,steps,accuracy,ci95,median,loss,worse,diverged,tasks,iterations,train_seconds"
    )
    # variants × (maml's eval steps + finetune's and its own 100 passes)
    assert len(lines) == 1 + 3 * (6 + 7)
    markdown = (out / "results.md").read_text()
    assert "### 1-shot\n" in markdown and "### 5-shot\n" in markdown and "### 20-way 1-shot\n" in markdown
    assert "1-shot: 1-shot" not in markdown
    header = "| method | 0 steps | 1 step | 5 steps | 10 steps | 100 steps | iterations | train time |"
    assert markdown.count(header) == 3
    rows = {
        line.split(" | ")[0]: line.split(" | ") for line in markdown.splitlines() if line.startswith("| ")
    }
    assert rows["| maml"][5] == "—" and rows["| finetune"][5] != "—" and rows["| maml"][6] == "2"
    assert markdown.count("Published on Omniglot, 5-way") == 2 and "MAML 98.7 ± 0.4" in markdown
    assert markdown.split("### 20-way 1-shot")[1].count("Published on Omniglot, 20-way") == 1
    twenty = [r for r in csv.DictReader(open(out / "results.csv")) if r["variant"] == "20-way 1-shot"]
    assert {r["ways"] for r in twenty} == {"20"}
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        f"{method}-{variant}-it2-seed0"
        for method in ("finetune", "maml")
        for variant in ("1-shot", "20-way-1-shot", "5-shot")
    ]
    assert sorted(p.name for p in out.glob("*.png")) == ["accuracy_vs_steps.png", "training_curves.png"]


def test_a_relative_data_root_is_stored_absolute_and_moved_data_is_given_to_eval_and_plot(
    omniglot_root, tmp_path, monkeypatch
):
    shutil.copytree(omniglot_root, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    args = ["--task", "omniglot", "--data-root", "data", "--ways", 3, "--iterations", 2, "--meta-batch", 2]
    args += ["--omniglot-split", "background"]  # the generated folders hold no Vinyals characters
    assert invoke("train", *args, "--quiet", "--out", "run").exit_code == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_root"] == str(tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_dir = tmp_path / "run"
    evaluated = invoke("eval", run_dir, "--json", "--tasks", 4, "--shots", 1, "--steps", 0)
    assert evaluated.exit_code == 0, evaluated.output
    (tmp_path / "data").rename(tmp_path / "moved")
    lost = invoke("eval", run_dir, "--json", "--tasks", 4, "--shots", 1, "--steps", 0)
    assert lost.exit_code == 2 and lost.stderr.startswith("Error: "), lost.output
    moved = invoke(
        "eval", run_dir, "--json", "--tasks", 4, "--shots", 1, "--steps", 0, "--data-root", "../moved"
    )
    assert moved.exit_code == 0, moved.output
    assert json.loads(moved.stdout)["results"] == json.loads(evaluated.stdout)["results"]
    plotted = invoke("plot", run_dir, "--tasks", 4, "--shots", 1, "--data-root", tmp_path / "moved")
    assert plotted.exit_code == 0, plotted.output
    assert (run_dir / "plots" / "accuracy_vs_steps.png").is_file()


def test_bench_takes_the_data_root_it_asks_for(omniglot_root, tmp_path, monkeypatch):
    # the generated folders hold no Vinyals characters: bench reads them with the official split
    monkeypatch.setitem(Omniglot.protocol, "omniglot_split", "background")
    args = ["bench", "--task", "omniglot", "--quick", "--contenders", "func", "--repeats", 1, "--json"]
    asked = invoke(*args)
    assert asked.exit_code == 2 and "needs --data-root" in asked.stderr, asked.output
    root = tmp_path / "data"  # bench's 5-way tasks need a fifth evaluation character
    shutil.copytree(omniglot_root, root)
    gamma = root / "omniglot-py" / "images_evaluation" / "Gamma"
    shutil.copytree(gamma / "character04", gamma / "character05")
    result = invoke(*args, "--data-root", root)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["data_root"] == str(root)
    wrong = invoke("bench", "--task", "sinusoid", "--quick", "--data-root", tmp_path)
    assert wrong.exit_code == 2 and "--data-root does not apply to --task sinusoid" in wrong.stderr


def test_a_glyph_run_with_per_step_batch_norm_trains_and_evaluates(glyph_root, tmp_path):
    run = tmp_path / "run"
    args = ["--task", "glyphs", "--data-root", glyph_root, "--per-step-bn", "--inner-steps", 2]
    result = invoke("train", *args, "--meta-batch", 2, "--iterations", 3, "--quiet", "--out", run)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["per_step_bn"] is True
    state = torch.load(run / "checkpoint.pt", weights_only=True)["algorithm"]
    assert state["module.1.weight"].shape == (3, 64)  # entries for steps 0, 1 and 2
    for key in ("module.1.running_mean", "module.13.running_var"):  # first and last batch norm
        initial = 0.0 if key.endswith("mean") else 1.0
        assert (state[key] != initial).all(), key  # every entry recorded from the meta-batches
    report = invoke("eval", run, "--tasks", 4, "--shots", 1, "--steps", "0,2,3", "--json")
    assert report.exit_code == 0, report.output
    rows = json.loads(report.stdout)["results"]
    assert [(r["steps"], r.get("beyond_horizon", False)) for r in rows] == [(0, False), (2, False), (3, True)]
    assert all(0 <= r["accuracy"] <= 1 for r in rows) and json.loads(report.stdout)["horizon"] == 2
    table = invoke("eval", run, "--tasks", 4, "--shots", 1, "--steps", "0,3")
    assert table.exit_code == 0 and "* beyond the 2 inner steps the run was trained for" in table.stdout
