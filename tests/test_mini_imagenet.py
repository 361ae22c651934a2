"""miniImageNet: the pickled caches and Ravi's folder read into the right classes, the restricted
unpickler, the cache, one-line errors for every bad file with nothing written, and train + eval
through the command line on small generated data."""

import json
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import protocol_settings
from PIL import Image
from test_cli import invoke, snapshot

from metakit.experiments.reports.reproduce import run_config
from metakit.experiments.tasks import FAMILIES
from metakit.experiments.tasks.family import Variant
from metakit.experiments.tasks.vision import mini_imagenet_files
from metakit.experiments.tasks.vision.image_sets import DataError
from metakit.experiments.tasks.vision.mini_imagenet import MiniImageNet
from metakit.experiments.tasks.vision.mini_imagenet_files import load_mini_imagenet
from metakit.experiments.training.config import TrainConfig

CLASSES = {"train": 4, "val": 3, "test": 3}
PER_CLASS = 12
HELD_OUT_PER_CLASS = 1 + MiniImageNet.eval_query
"""Images per class that 1-shot held-out episodes need (1 support and 15 query images)."""


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))


def split_images(split: str, classes: int, per_class: int = PER_CLASS) -> dict:
    """``{wnid: uint8 [per_class, 84, 84, 3]}`` of random images, seeded by the split."""
    g = np.random.default_rng(sum(map(ord, split)))
    return {
        f"n{split[:2]}{c:06d}": g.integers(0, 256, (per_class, 84, 84, 3), dtype=np.uint8)
        for c in range(classes)
    }


def write_pickle(path: Path, classes: dict, protocol: int = pickle.HIGHEST_PROTOCOL, **changes) -> None:
    """A cache pickle whose rows are interleaved across classes (so ``class_dict`` matters)."""
    wnids = list(classes)
    rows = [(w, i) for i in range(len(next(iter(classes.values())))) for w in wnids]
    data = {
        "image_data": np.stack([classes[w][i] for w, i in rows]),
        "class_dict": {w: [r for r, (v, _) in enumerate(rows) if v == w] for w in reversed(wnids)},
    }
    data.update(changes)
    path.write_bytes(pickle.dumps({k: v for k, v in data.items() if v is not None}, protocol=protocol))


def make_pickles(
    root: Path, middle: str = "val", protocol: int = pickle.HIGHEST_PROTOCOL, per_class: int = PER_CLASS
) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    images = {}
    for split, count in CLASSES.items():
        images[split] = split_images(split, count, per_class)
        name = middle if split == "val" else split
        write_pickle(root / f"mini-imagenet-cache-{name}.pkl", images[split], protocol)
    return images


def make_ravi(root: Path, per_class: int = PER_CLASS) -> dict:
    """Ravi's layout with lossless PNG bytes under .jpg names (the reader decodes by content)."""
    (root / "images").mkdir(parents=True)
    images = {}
    for split, count in CLASSES.items():
        images[split] = split_images(split, count, per_class)
        lines = ["filename,label"]
        for wnid, drawings in images[split].items():
            for i, image in enumerate(drawings):
                name = f"{wnid}{i + 1:08d}.jpg"
                Image.fromarray(image).save(root / "images" / name, format="PNG")
                lines.append(f"{name},{wnid}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return images


def check(data: dict, images: dict) -> None:
    for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        expected = images[name]
        assert data[split].names == tuple(sorted(expected))
        want = np.stack([expected[w] for w in sorted(expected)]).transpose(0, 1, 4, 2, 3)
        np.testing.assert_array_equal(data[split].images.numpy(), want)


@pytest.mark.parametrize("middle, protocol", [("val", 5), ("validation", 2)])
def test_the_pickles_give_each_class_its_own_rows(tmp_path, middle, protocol):
    images = make_pickles(tmp_path / "data", middle, protocol)
    check(load_mini_imagenet(tmp_path / "data"), images)


def test_ravis_folder_gives_each_class_its_images(tmp_path):
    images = make_ravi(tmp_path / "data")
    check(load_mini_imagenet(tmp_path / "data"), images)


def test_the_cache_is_reused_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
    images = make_pickles(tmp_path / "data")
    load_mini_imagenet(tmp_path / "data")
    read = mini_imagenet_files.read_pickle
    monkeypatch.setattr(mini_imagenet_files, "read_pickle", lambda path: pytest.fail("read again"))
    check(load_mini_imagenet(tmp_path / "data"), images)
    images["test"] = split_images("other", 3)
    write_pickle(tmp_path / "data" / "mini-imagenet-cache-test.pkl", images["test"])
    monkeypatch.setattr(mini_imagenet_files, "read_pickle", read)
    check(load_mini_imagenet(tmp_path / "data"), images)


class Trap:
    """Unpickling this creates a folder: what a malicious pickle could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def bad_roots(base: Path) -> dict:
    """``{case: (root, words the message must hold)}``, each a small data folder with one bad file."""
    cases = {}

    def pickles(case, split="train", **changes):
        root = base / case
        make_pickles(root)
        write_pickle(
            root / f"mini-imagenet-cache-{split}.pkl", split_images(split, CLASSES[split]), **changes
        )
        return root

    root = pickles("no-class-dict", class_dict=None)
    cases["no-class-dict"] = (root, ["mini-imagenet-cache-train.pkl", "no 'class_dict' key"])
    small = np.zeros((8, 32, 32, 3), np.uint8)
    root = pickles("wrong-shape", "test", image_data=small)
    cases["wrong-shape"] = (root, ["mini-imagenet-cache-test.pkl", "N×84×84×3, got uint8 (8, 32, 32, 3)"])
    root = pickles("row-outside", "val", class_dict={"n1": [0, 99]})
    cases["row-outside"] = (root, ["mini-imagenet-cache-val.pkl", "outside the 36 rows"])
    root = base / "trap"
    make_pickles(root)
    (root / "mini-imagenet-cache-val.pkl").write_bytes(pickle.dumps({"image_data": Trap(base / "trapped")}))
    cases["trap"] = (root, ["mini-imagenet-cache-val.pkl", "refused to load", "mkdir"])
    root = base / "missing-split"
    make_pickles(root)
    (root / "mini-imagenet-cache-test.pkl").unlink()
    cases["missing-split"] = (root, ["no mini-imagenet-cache-test.pkl"])
    root = base / "truncated"
    make_pickles(root)
    (root / "mini-imagenet-cache-train.pkl").write_bytes(
        (root / "mini-imagenet-cache-train.pkl").read_bytes()[:999]
    )
    cases["truncated"] = (root, ["cannot read the pickle", "mini-imagenet-cache-train.pkl"])
    root = base / "corrupt-image"
    make_ravi(root)
    bad = sorted((root / "images").iterdir())[5]
    bad.write_bytes(b"not an image")
    cases["corrupt-image"] = (root, ["cannot read image", bad.name])
    root = base / "few-images"
    make_ravi(root)
    lines = (root / "val.csv").read_text().splitlines()
    (root / "val.csv").write_text("\n".join(lines[:-7]) + "\n")  # the last class keeps 5 images
    cases["few-images"] = (root, ["class nva000002", "val.csv has 5 images; episodes need 6"])
    root = base / "no-csv"
    make_ravi(root)
    (root / "test.csv").unlink()
    cases["no-csv"] = (root, ["test.csv is missing"])
    return cases


CASES = ("no-class-dict", "wrong-shape", "row-outside", "trap", "missing-split", "truncated", "corrupt-image",
         "few-images", "no-csv")  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_bad_file_is_a_one_line_error_naming_it_and_nothing_is_written(tmp_path, case):
    root, words = bad_roots(tmp_path / "data")[case]
    before = snapshot(tmp_path)
    args = ["--task", "mini-imagenet", "--data-root", root, "--ways", 3, "--shots", 1, "--query", 5]
    result = invoke("train", *args, "--iterations", 1, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, lines
    assert all(word in lines[0] for word in words), lines
    assert snapshot(tmp_path) == before  # no run, no cache, and the trap did not spring
    assert not (tmp_path / "data" / "trapped").exists()


def test_the_reader_refuses_other_globals_directly(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"image_data": Trap(tmp_path / "trapped")}))
    with pytest.raises(DataError, match="refused to load"):
        mini_imagenet_files.read_pickle(path)
    assert not (tmp_path / "trapped").exists()


def test_the_protocol_is_the_maml_papers():
    config = TrainConfig(task="mini-imagenet", data_root="x")
    assert protocol_settings(config) == (5, 1, 15, 0.01, 5, 4)
    assert TrainConfig(task="mini-imagenet", data_root="x", shots=5, query=3).query == 3
    assert TrainConfig(task="glyphs").query == 1  # --shots elsewhere


def test_held_out_episodes_have_the_protocols_15_query_images_per_class(tmp_path):
    make_pickles(tmp_path / "data", per_class=HELD_OUT_PER_CLASS)
    family = MiniImageNet(3, str(tmp_path / "data"))
    batch = family.held_out(2, 1, seed=1).batch(1)
    assert batch.x_support.shape[1] == 3 and batch.x_query.shape[1] == 3 * 15  # 3 ways
    assert torch.equal(batch.y_query[0], torch.arange(3).repeat_interleave(15))
    make_pickles(tmp_path / "few")  # 12 images per class
    few = MiniImageNet(3, str(tmp_path / "few"))
    with pytest.raises(DataError, match=r"held-out episodes use --shots \+ 15 query images per class; the "):
        few.held_out(2, 1, seed=1)
    tiered, cifar_fs, fc100, glyphs = (
        FAMILIES.get(task) for task in ("tiered-imagenet", "cifar-fs", "fc100", "glyphs")
    )
    assert tiered.eval_query == cifar_fs.eval_query == fc100.eval_query == 15  # miniImageNet's protocol
    assert glyphs.eval_query == FAMILIES.get("omniglot").eval_query == 10


@pytest.mark.parametrize("layout", ["pickles", "ravi"])
def test_train_two_iterations_and_eval_through_the_cli(tmp_path, layout):
    root = tmp_path / "data"
    (make_pickles if layout == "pickles" else make_ravi)(root, per_class=HELD_OUT_PER_CLASS)
    run = tmp_path / "run"
    args = ["--task", "mini-imagenet", "--data-root", root, "--ways", 3, "--shots", 1, "--query", 2]
    args += ["--inner-steps", 1, "--meta-batch", 2, "--iterations", 2, "--log-every", 1]
    result = invoke("train", *args, "--quiet", "--out", run)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["task"], config["inner_lr"], config["rotations"]) == ("mini-imagenet", 0.01, False)
    check_colour_run(run, 5)  # 84 → 42 → 21 → 10 → 5


def test_reproduce_trains_on_the_maml_protocol():
    reproduction = MiniImageNet.reproduction
    settings = []
    for variant in reproduction.variants:
        config = run_config("mini-imagenet", "maml", 0, None, variant.overrides, data_root="x")
        settings.append(
            tuple(getattr(config, k) for k in ("shots", "meta_batch", "inner_steps", "inner_lr", "query"))
        )
        assert (config.ways, config.iterations, config.data_root) == (5, 60_000, os.path.abspath("x"))
    assert settings == [(1, 4, 5, 0.01, 15), (5, 2, 5, 0.01, 15)]  # Finn et al. 2017, §5.2
    assert reproduction.reported_steps == (0, 1, 5, 10)


def test_reproduce_runs_on_the_users_files(tmp_path, monkeypatch):
    for split in CLASSES:  # 5-way episodes
        monkeypatch.setitem(CLASSES, split, 5)
    root = tmp_path / "data"
    make_pickles(root, per_class=HELD_OUT_PER_CLASS)
    small = replace(  # the protocol's 1-shot variant, shrunk to run in seconds
        MiniImageNet.reproduction,
        variants=(Variant("1-shot", {"shots": 1, "inner_steps": 1, "meta_batch": 1}),),
        eval_steps=(0, 1),
        reported_steps=(0, 1),
    )
    monkeypatch.setattr(MiniImageNet, "reproduction", small)
    out = tmp_path / "repro"
    args = ["reproduce", "mini-imagenet", "--seeds", 1, "--iterations", 1, "--tasks", 2, "--methods", "maml"]
    refused = invoke(*args, "--quiet", "--out", out)
    assert refused.exit_code == 2 and "mini-imagenet needs --data-root DIR" in refused.output
    assert not out.exists()
    result = invoke(*args, "--data-root", root, "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("trained") == 1
    config = json.loads((out / "runs" / "maml-1-shot-it1-seed0" / "config.json").read_text())
    assert config["data_root"] == str(root) and config["query"] == 15
    markdown = (out / "results.md").read_text()
    assert markdown.count("Published on miniImageNet") == 1 and "MAML 48.70 ± 1.84" in markdown


def check_colour_run(run: Path, side: int) -> None:
    """A 3-way run of the 32-filter colour conv net (final feature map ``side × side``) that ``eval``
    scores at 1 shot after 0 and 1 steps."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)["algorithm"]
    assert state["module.0.weight"].shape == (32, 3, 3, 3)  # 32 filters on colour images
    assert state["module.17.weight"].shape == (3, 32 * side * side)
    report = invoke("eval", run, "--tasks", 2, "--shots", 1, "--steps", "0,1", "--json")
    assert report.exit_code == 0, report.output
    rows = json.loads(report.stdout)["results"]
    assert [(r["ways"], r["shots"], r["steps"]) for r in rows] == [(3, 1, 0), (3, 1, 1)]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
