"""CIFAR-FS and FC100: the shipped class lists are the published splits, the ``cifar-100-python``
pickles are read into the right classes image for image, the cache, one-line errors for every bad
file with nothing written, and train + eval through the command line on a small generated
CIFAR-100 (all 100 classes and their real names, 12 images each)."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import protocol_settings
from test_cli import invoke, snapshot
from test_mini_imagenet import HELD_OUT_PER_CLASS, Trap, check_colour_run

from metakit.experiments.tasks import FAMILIES
from metakit.experiments.tasks.vision import cifar100
from metakit.experiments.tasks.vision.cifar100 import SPLIT_LISTS, load_cifar100
from metakit.experiments.tasks.vision.image_sets import class_list
from metakit.experiments.training.config import TrainConfig

SUPERCLASSES = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
"""CIFAR-100's superclasses and their fine classes (Krizhevsky 2009), as in its meta file."""
FINE = sorted(name for names in SUPERCLASSES.values() for name in names.split())
COARSE = sorted(SUPERCLASSES)
PARENT = {name: COARSE.index(c) for c, names in SUPERCLASSES.items() for name in names.split()}
PARTS = {"train": 9, "test": 3}
"""Images per class in each generated pickle (12 in all: 1-shot held-out episodes need 11)."""


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))


def make_cifar(root: Path, nested: bool = True, parts: dict = PARTS) -> np.ndarray:
    """A generated ``cifar-100-python`` (under ``root``, or ``root`` itself) with ``parts``' images
    per class in each pickle, rows interleaved across classes; returns every class's images in file
    order, uint8 ``[100, 12, 3, 32, 32]`` by default."""
    folder = root / "cifar-100-python" if nested else root
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    images = []
    for part, count in parts.items():
        labels = [c for _ in range(count) for c in range(len(FINE))]
        pictures = g.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)  # height, width, RGB
        rows = np.concatenate([pictures[..., k].reshape(len(labels), -1) for k in range(3)], axis=1)
        data = {
            "data": rows,
            "fine_labels": labels,
            "coarse_labels": [PARENT[FINE[c]] for c in labels],
            "filenames": [f"image_{i}.png" for i in range(len(labels))],
            "batch_label": f"{part} batch 1 of 1",
        }
        (folder / part).write_bytes(pickle.dumps(data, protocol=2))
        images.append(pictures.reshape(count, len(FINE), 32, 32, 3).transpose(1, 0, 4, 2, 3))
    meta = {"fine_label_names": FINE, "coarse_label_names": COARSE}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return np.concatenate(images, axis=1)


def rewrite(path: Path, **changes) -> None:
    """Change (or, with ``None``, drop) entries of one of the generated pickles."""
    data = pickle.loads(path.read_bytes())
    data.update(changes)
    path.write_bytes(pickle.dumps({k: v for k, v in data.items() if v is not None}))


def family(task: str, root: Path, min_images: int = 3):
    return FAMILIES.get(task)(3, str(root), False, min_images)


def test_the_shipped_lists_are_the_published_splits():
    fs = {s: class_list(SPLIT_LISTS / f"cifar_fs_{s}.txt") for s in ("train", "val", "test")}
    assert [len(set(names)) for names in fs.values()] == [64, 16, 20]
    assert sorted(name for names in fs.values() for name in names) == FINE  # disjoint, all 100
    fc = {s: class_list(SPLIT_LISTS / f"fc100_{s}.txt") for s in ("train", "val", "test")}
    indices = {s: sorted(COARSE.index(name) for name in names) for s, names in fc.items()}
    assert indices == {
        "train": [1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19],
        "val": [8, 11, 13, 16],
        "test": [0, 7, 12, 14],
    }  # Oreshkin et al. 2018; 12 / 4 / 4 covering all 20
    for path in SPLIT_LISTS.glob("*.txt"):
        if path.name.startswith(("cifar_fs", "fc100")):
            assert "Source:" in path.read_text() and "torchmeta" in path.read_text(), path


@pytest.mark.parametrize("nested", [True, False])
def test_cifar_fs_gives_each_listed_class_its_train_and_test_images(tmp_path, nested):
    images = make_cifar(tmp_path / "data", nested)
    splits = family("cifar-fs", tmp_path / "data").load()
    for split, suffix in (("train", "train"), ("validation", "val"), ("test", "test")):
        names = class_list(SPLIT_LISTS / f"cifar_fs_{suffix}.txt")
        data = splits[split]
        assert data.names == tuple(sorted(names))
        assert data.alphabets == tuple(COARSE[PARENT[n]] for n in data.names)
        want = images[[FINE.index(n) for n in data.names]]
        np.testing.assert_array_equal(data.images.numpy(), want)
    assert [splits[s].num_classes for s in ("train", "validation", "test")] == [64, 16, 20]


def test_fc100_gives_every_fine_class_of_the_listed_superclasses(tmp_path):
    images = make_cifar(tmp_path / "data")
    splits = family("fc100", tmp_path / "data").load()
    for split, suffix in (("train", "train"), ("validation", "val"), ("test", "test")):
        superclasses = class_list(SPLIT_LISTS / f"fc100_{suffix}.txt")
        data = splits[split]
        assert data.names == tuple(n for n in FINE if COARSE[PARENT[n]] in superclasses)
        assert set(data.alphabets) == set(superclasses)
        np.testing.assert_array_equal(data.images.numpy(), images[[FINE.index(n) for n in data.names]])
    assert [splits[s].num_classes for s in ("train", "validation", "test")] == [60, 20, 20]


def test_the_cache_is_shared_reused_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
    images = make_cifar(tmp_path / "data")
    load_cifar100(tmp_path / "data")
    read = cifar100.read_classes
    monkeypatch.setattr(cifar100, "read_classes", lambda folder: pytest.fail("read again"))
    np.testing.assert_array_equal(load_cifar100(tmp_path / "data").images.numpy(), images)
    family("fc100", tmp_path / "data").load()  # both families use the one cache
    rewrite(tmp_path / "data" / "cifar-100-python" / "test", data=np.zeros((300, 3072), np.uint8))
    monkeypatch.setattr(cifar100, "read_classes", read)
    assert load_cifar100(tmp_path / "data").images[:, 9:].max() == 0


def bad_root(base: Path, case: str) -> tuple:
    """``(root, task, words the message must hold)``: a small data folder with one bad file."""
    root = base / case
    make_cifar(root)
    folder = root / "cifar-100-python"
    few = [
        FINE.index("whale") if c == FINE.index("apple") and i < 7 else c for i in range(9) for c in range(100)
    ]
    cases = {
        "missing-meta": ("meta", None, "cifar-fs", ["cifar-100-python/meta is missing"]),
        "no-fine-labels": ("train", dict(fine_labels=None), "cifar-fs", ["/train has no 'fine_labels' key"]),
        "wrong-shape": (
            "test",
            dict(data=np.zeros((300, 3000), np.uint8)),
            "fc100",
            ["/test: data must be uint8 N×3072", "got uint8 (300, 3000)"],
        ),
        "label-range": (
            "train",
            dict(fine_labels=[100] * 900),
            "cifar-fs",
            ["/train: fine_labels has a label outside the 100 names"],
        ),
        "few-images": (
            "train",
            dict(fine_labels=few, coarse_labels=[PARENT[FINE[c]] for c in few]),
            "fc100",
            ["class apple in", "cifar-100-python has 5 images; episodes need 6"],
        ),
        "two-superclasses": (
            "test",
            dict(coarse_labels=[0] * 300),
            "cifar-fs",
            ["fine class 'apple' has images in the superclasses aquatic_mammals, fruit_and_vegetables"],
        ),
        "unknown-class": (
            "meta",
            dict(fine_label_names=["apples", *FINE[1:]]),
            "cifar-fs",
            ["cifar_fs_train.txt lists the fine class 'apple'", "meta does not name"],
        ),
        "unknown-superclass": (
            "meta",
            dict(coarse_label_names=["aquatic mammals", *COARSE[1:]]),
            "fc100",
            ["fc100_test.txt lists the superclass 'aquatic_mammals'", "meta does not name"],
        ),
    }
    if case == "trap":
        (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": Trap(base / "trapped")}))
        return root, "fc100", ["cifar-100-python/meta", "refused to load", "mkdir"]
    name, change, task, words = cases[case]
    if change is None:
        (folder / name).unlink()
    else:
        rewrite(folder / name, **change)
    return root, task, words


CASES = ("missing-meta", "no-fine-labels", "wrong-shape", "label-range", "few-images", "two-superclasses",
         "unknown-class", "unknown-superclass", "trap")  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_bad_file_is_a_one_line_error_naming_it_and_nothing_is_written(tmp_path, case):
    root, task, words = bad_root(tmp_path / "data", case)
    before = snapshot(tmp_path)
    args = ["--task", task, "--data-root", root, "--ways", 3, "--shots", 1, "--query", 5]
    result = invoke("train", *args, "--iterations", 1, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, lines
    assert all(word in lines[0] for word in words), lines
    assert snapshot(tmp_path) == before  # no run, no cache, and the trap did not spring
    assert not (tmp_path / "data" / "trapped").exists()


@pytest.mark.parametrize("task", ["cifar-fs", "fc100"])
def test_the_protocol_is_miniimagenets_at_32_px(task):
    config = TrainConfig(task=task, data_root="x")
    assert protocol_settings(config) == (5, 1, 15, 0.01, 5, 4)
    assert (config.iterations, config.rotations) == (60_000, False)


@pytest.mark.parametrize("task", ["cifar-fs", "fc100"])
def test_train_two_iterations_and_eval_through_the_cli(tmp_path, task):
    make_cifar(tmp_path / "data", parts={"train": HELD_OUT_PER_CLASS - 4, "test": 4})
    run = tmp_path / "run"
    args = ["--task", task, "--data-root", tmp_path / "data", "--ways", 3, "--shots", 1, "--query", 2]
    args += ["--inner-steps", 1, "--meta-batch", 2, "--iterations", 2, "--log-every", 1]
    result = invoke("train", *args, "--quiet", "--out", run)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["task"], config["inner_lr"], config["rotations"]) == (task, 0.01, False)
    check_colour_run(run, 2)  # 32 → 16 → 8 → 4 → 2
