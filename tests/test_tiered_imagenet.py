"""tieredImageNet: the PNG pickles and label pickles read into the right classes image for image,
the cache, one-line errors for every bad file with nothing written, and train + eval through the
command line on small generated data."""

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import protocol_settings
from PIL import Image
from test_cli import invoke, snapshot
from test_mini_imagenet import HELD_OUT_PER_CLASS, Trap, check_colour_run

from metakit.experiments.tasks.vision import tiered_imagenet
from metakit.experiments.tasks.vision.tiered_imagenet import load_tiered_imagenet
from metakit.experiments.training.config import TrainConfig

CLASSES = {"train": 4, "val": 3, "test": 3}
PER_CLASS = 12
ARGS = ["--task", "tiered-imagenet", "--ways", 3, "--shots", 1]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def split_images(split: str, classes: int, per_class: int = PER_CLASS) -> list:
    """``[uint8 [n, 84, 84, 3]]`` of random images per class, seeded by the split."""
    g = np.random.default_rng(sum(map(ord, split)))
    return [g.integers(0, 256, (per_class, 84, 84, 3), dtype=np.uint8) for _ in range(classes)]


def write_split(root: Path, split: str, classes: list, labels=None, items=None, **label_changes) -> None:
    """The two pickles of a split, images interleaved across classes, every other one as a uint8
    array of shape (n, 1) (as ``cv2.imencode`` gives) and the rest as bytes; the class names are
    ``label_specific_str``."""
    order = [(c, i) for i in range(len(classes[0])) for c in range(len(classes))]
    encoded = [png(classes[c][i]) for c, i in order]
    if items is None:
        items = [np.frombuffer(e, np.uint8)[:, None] if k % 2 else e for k, e in enumerate(encoded)]
    data = {
        "label_specific": np.array([c for c, _ in order] if labels is None else labels),
        "label_specific_str": [f"n{split}{c:04d}" for c in range(len(classes))],
        "label_general": np.zeros(len(order), np.int64),
    }
    data.update(label_changes)
    (root / f"{split}_images_png.pkl").write_bytes(pickle.dumps(items))
    (root / f"{split}_labels.pkl").write_bytes(pickle.dumps({k: v for k, v in data.items() if v is not None}))


def make_root(root: Path, per_class: int = PER_CLASS) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    images = {}
    for split, count in CLASSES.items():
        images[split] = split_images(split, count, per_class)
        write_split(root, split, images[split])
    return images


def check(data: dict, images: dict) -> None:
    for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        assert data[split].names == tuple(f"n{name}{c:04d}" for c in range(CLASSES[name]))
        want = np.stack(images[name]).transpose(0, 1, 4, 2, 3)
        np.testing.assert_array_equal(data[split].images.numpy(), want)


def test_the_pickles_give_each_class_its_own_images(tmp_path):
    images = make_root(tmp_path / "data")
    check(load_tiered_imagenet(tmp_path / "data"), images)


def test_a_class_keeps_the_splits_smallest_count_and_names_default_to_indices(tmp_path):
    root = tmp_path / "data"
    images = make_root(root)
    labels = [c for _ in range(PER_CLASS) for c in range(3)]
    labels[-1] = 0  # the last image of class 2 becomes class 0's 13th: class 2 keeps 11
    write_split(root, "val", images["val"], labels=labels, label_specific_str=None)
    data = load_tiered_imagenet(root)["validation"]
    assert data.names == ("0", "1", "2") and data.images.shape[1] == PER_CLASS - 1
    np.testing.assert_array_equal(data.images[0].numpy(), images["val"][0][:11].transpose(0, 3, 1, 2))


def test_the_cache_is_reused_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
    images = make_root(tmp_path / "data")
    load_tiered_imagenet(tmp_path / "data")
    read = tiered_imagenet.read_split
    monkeypatch.setattr(tiered_imagenet, "read_split", lambda *paths: pytest.fail("read again"))
    check(load_tiered_imagenet(tmp_path / "data"), images)
    images["test"] = split_images("other", 3)
    write_split(tmp_path / "data", "test", images["test"])
    monkeypatch.setattr(tiered_imagenet, "read_split", read)
    check(load_tiered_imagenet(tmp_path / "data"), images)


def bad_root(base: Path, case: str) -> tuple:
    """``(root, words the message must hold)``: a small data folder with one bad file."""
    root = base / case
    images = make_root(root)
    few = [0 if c == 2 and i < 7 else c for i in range(PER_CLASS) for c in range(3)]  # class 2 keeps 5
    items = [png(np.zeros((84, 84, 3), np.uint8))] * 36
    items[7] = items[7][:40]  # a truncated PNG
    changes = {
        "no-labels-key": (
            "train",
            dict(label_specific=None),
            ["train_labels.pkl", "no 'label_specific' key"],
        ),
        "labels-shape": (
            "val",
            dict(label_specific=np.zeros((36, 2), np.int64)),
            ["val_labels.pkl", "one integer class index per image", "(36, 2)"],
        ),
        "labels-count": (
            "test",
            dict(labels=[0, 1, 2] * 11),
            ["test_labels.pkl labels 33 images", "test_images_png.pkl holds 36"],
        ),
        "corrupt-png": (
            "val",
            dict(items=items),
            ["cannot read image 7 of", "val_images_png.pkl: not an image format Pillow reads, or corrupt"],
        ),
        "item-type": ("train", dict(items=[3] * 48), ["train_images_png.pkl: image 0 has type int"]),
        "few-images": (
            "test",
            dict(labels=few),
            ["class ntest0002 in", "test_labels.pkl has 5 images; episodes need 6"],
        ),
    }
    if case in changes:
        split, change, words = changes[case]
        write_split(root, split, images[split], **change)
        return root, words
    if case == "trap":
        (root / "val_images_png.pkl").write_bytes(pickle.dumps([Trap(base / "trapped")]))
        return root, ["val_images_png.pkl", "refused to load", "mkdir"]
    (root / "test_labels.pkl").unlink()
    return root, ["test_labels.pkl is missing"]


CASES = ("no-labels-key", "labels-shape", "labels-count", "corrupt-png", "item-type", "few-images", "trap",
         "missing")  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_bad_file_is_a_one_line_error_naming_it_and_nothing_is_written(tmp_path, case):
    root, words = bad_root(tmp_path / "data", case)
    before = snapshot(tmp_path)
    args = [*ARGS, "--data-root", root, "--query", 5, "--iterations", 1, "--out", tmp_path / "run"]
    result = invoke("train", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, lines
    assert all(word in lines[0] for word in words), lines
    assert snapshot(tmp_path) == before  # no run, no cache, and the trap did not spring
    assert not (tmp_path / "data" / "trapped").exists()


def test_the_protocol_is_miniimagenets():
    config = TrainConfig(task="tiered-imagenet", data_root="x")
    assert protocol_settings(config) == (5, 1, 15, 0.01, 5, 4)
    assert (config.iterations, config.rotations) == (60_000, False)


def test_train_two_iterations_and_eval_through_the_cli(tmp_path):
    make_root(tmp_path / "data", per_class=HELD_OUT_PER_CLASS)
    run = tmp_path / "run"
    args = [*ARGS, "--data-root", tmp_path / "data", "--query", 2, "--inner-steps", 1, "--meta-batch", 2]
    result = invoke("train", *args, "--iterations", 2, "--log-every", 1, "--quiet", "--out", run)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["task"], config["inner_lr"]) == ("tiered-imagenet", 0.01)
    check_colour_run(run, 5)  # 84 → 42 → 21 → 10 → 5
