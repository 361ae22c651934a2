"""Reading the official Omniglot layout: folders, the omniglot-py level, zips, the cache, each DataError;
the Vinyals et al. split (the shipped lists, selection by name, a missing class named)."""

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps
from test_cli import invoke

from metakit.experiments.reports.reproduce import run_config
from metakit.experiments.tasks import FAMILIES, build_family
from metakit.experiments.tasks.vision import omniglot_folder
from metakit.experiments.tasks.vision.image_sets import DataError, save_atomic
from metakit.experiments.tasks.vision.omniglot import Omniglot
from metakit.experiments.tasks.vision.omniglot_folder import load_omniglot
from metakit.experiments.training.config import ConfigError, TrainConfig

SIDE = 105
LAYOUT = {
    "background": {"Alpha": 3, "Beta_(B)": 3},
    "evaluation": {"Gamma": 2},
}
DRAWINGS = 4


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Caches go to a temporary folder, never to the user's cache."""
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))


def ink_box(split: str, klass: int, drawing: int) -> tuple:
    """The black square of one drawing: distinct per split, class and drawing."""
    x = 7 + 13 * klass + (40 if split == "evaluation" else 0)
    y = 6 + 11 * drawing
    return x, y, x + 23, y + 17


def expected_images(split: str, size: int = SIDE) -> np.ndarray:
    """What the loader should return at full size: one channel, 255 inside each square, 0 elsewhere."""
    count = sum(LAYOUT[split].values())
    images = np.zeros((count, DRAWINGS, 1, size, size), np.uint8)
    for c in range(count):
        for d in range(DRAWINGS):
            x0, y0, x1, y1 = ink_box(split, c, d)
            images[c, d, 0, y0 : y1 + 1, x0 : x1 + 1] = 255
    return images


def write_png(path: Path, box) -> None:
    image = Image.new("1", (SIDE, SIDE), 1)  # the official files: 1-bit, white background
    ImageDraw.Draw(image).rectangle(box, fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_split(base: Path, split: str) -> Path:
    """``base/images_<split>/<alphabet>/characterNN/NNNN_MM.png`` as in the official data."""
    folder = base / f"images_{split}"
    klass = 0
    for alphabet, characters in LAYOUT[split].items():
        for n in range(1, characters + 1):
            for d in range(DRAWINGS):
                write_png(
                    folder / alphabet / f"character{n:02d}" / f"{100 * klass + 1:04d}_{d + 1:02d}.png",
                    ink_box(split, klass, d),
                )
            klass += 1
    return folder


FILE_INDEX = {
    f"{100 * klass + 1:04d}_{d + 1:02d}.png": (klass, d) for klass in range(6) for d in range(DRAWINGS)
}
"""A drawing's file name (as :func:`make_split` writes it) → (class index in its split, drawing)."""


def make_root(base: Path) -> Path:
    for split in LAYOUT:
        make_split(base, split)
    return base


def zip_split(folder: Path, target: Path) -> None:
    """Zip a split folder the way the official zips are made (top folder ``images_<split>/``)."""
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder.parent).as_posix())


def expected_names(split: str) -> tuple:
    return tuple(f"{a}/character{n:02d}" for a, count in LAYOUT[split].items() for n in range(1, count + 1))


def check(data: dict) -> None:
    assert set(data) == {"background", "evaluation"}
    for split in LAYOUT:
        images = data[split]
        assert images.names == expected_names(split)
        assert images.alphabets == tuple(name.split("/")[0] for name in expected_names(split))
        assert images.images.dtype == torch.uint8
        np.testing.assert_array_equal(images.images.numpy(), expected_images(split))


def test_reads_the_official_layout_with_ink_as_255(tmp_path):
    data = load_omniglot(make_root(tmp_path / "data"), size=SIDE)
    check(data)
    assert data["background"].images.shape == (6, DRAWINGS, 1, SIDE, SIDE)
    assert data["evaluation"].images.shape == (2, DRAWINGS, 1, SIDE, SIDE)
    assert data["background"].alphabet_names() == ["Alpha", "Beta_(B)"]


def test_reads_under_the_torchvision_level(tmp_path):
    root = tmp_path / "data"
    make_root(root / "omniglot-py")
    check(load_omniglot(root, size=SIDE))


def test_reads_from_the_zips_alone(tmp_path):
    staging, root = tmp_path / "staging", tmp_path / "data"
    root.mkdir()
    for split in LAYOUT:
        zip_split(make_split(staging, split), root / f"images_{split}.zip")
    check(load_omniglot(root, size=SIDE))
    nested = tmp_path / "nested" / "omniglot-py"
    nested.mkdir(parents=True)
    shutil.copy(root / "images_background.zip", nested)  # one zip under omniglot-py, one folder directly
    make_split(tmp_path / "nested", "evaluation")
    check(load_omniglot(tmp_path / "nested", size=SIDE))


def test_resizes_with_antialiasing(tmp_path):
    data = load_omniglot(make_root(tmp_path / "data"), size=28)
    images = data["background"].images
    assert images.shape == (6, DRAWINGS, 1, 28, 28)
    x0, y0, x1, y1 = (round(v * 28 / SIDE) for v in ink_box("background", 0, 0))
    assert images[0, 0, 0, (y0 + y1) // 2, (x0 + x1) // 2] == 255  # inside the square
    assert images[0, 0, 0, 27, 27] == 0 and images[0, 0, 0, 0, 0] == 0  # background
    assert ((images > 0) & (images < 255)).any()  # grey edges: antialiased, not nearest-neighbour


def test_every_class_keeps_the_smallest_count_in_name_order_and_a_warning_names_it(tmp_path):
    root = make_root(tmp_path / "data")
    extra = root / "images_background" / "Alpha" / "character01" / "0000_00.png"
    write_png(extra, (0, 0, 30, 30))  # sorts first, so it is kept and the last drawing dropped
    short = root / "images_evaluation" / "Gamma" / "character02"
    (short / "0101_04.png").unlink()
    with pytest.warns(UserWarning) as caught:
        data = load_omniglot(root, size=SIDE)
    messages = [str(w.message) for w in caught]
    assert messages == [
        "the classes of images_background hold 4 to 5 images (5 of 6 fewer than 5): every class keeps "
        f"only its first 4, as many as {root / 'images_background' / 'Alpha' / 'character02'}",
        f"the classes of images_evaluation hold 3 to 4 images (1 of 2 fewer than 4): every class keeps "
        f"only its first 3, as many as {short}",
    ]
    assert data["background"].images.shape[1] == DRAWINGS
    assert data["background"].images[0, 0, 0, :31, :31].min() == 255
    np.testing.assert_array_equal(
        data["background"].images[0, 1:].numpy(), expected_images("background")[0, : DRAWINGS - 1]
    )
    assert data["evaluation"].images.shape == (2, DRAWINGS - 1, 1, SIDE, SIDE)
    assert data["evaluation"].fewest == str(short)
    with pytest.warns(UserWarning, match="as many as"):
        again = load_omniglot(root, size=SIDE)  # from the cache: the folder comes from the listing
    assert again["evaluation"].fewest == str(short)


def test_the_cache_is_reused_and_invalidated_by_a_new_listing(tmp_path, monkeypatch):
    root = make_root(tmp_path / "data")
    first = load_omniglot(root, size=SIDE)
    assert list((tmp_path / "cache" / "omniglot").glob("*.pt"))
    calls = []
    real = omniglot_folder.decode
    monkeypatch.setattr(omniglot_folder, "decode", lambda *a: calls.append(a) or real(*a))
    again = load_omniglot(root, size=SIDE)
    assert calls == []
    assert torch.equal(again["background"].images, first["background"].images)
    write_png(root / "images_evaluation" / "Gamma" / "character03" / "0001_01.png", (0, 0, 9, 9))
    for d in range(2, DRAWINGS + 1):
        write_png(root / "images_evaluation" / "Gamma" / "character03" / f"0001_{d:02d}.png", (0, 0, 9, 9))
    changed = load_omniglot(root, size=SIDE)
    assert calls
    assert changed["evaluation"].names[-1] == "Gamma/character03"


def test_a_cache_in_the_old_layout_is_rebuilt_not_misread(tmp_path):
    root = Path(os.path.abspath(make_root(tmp_path / "data")))
    splits = {name: omniglot_folder.list_split(root, name) for name in omniglot_folder.SPLITS}
    old = {  # the v1 layout, [classes, drawings, size, size], under the current name and fingerprint
        name: {
            "images": torch.zeros(len(split.classes), DRAWINGS, SIDE, SIDE, dtype=torch.uint8),
            "names": ["x"] * len(split.classes),
            "alphabets": ["x"] * len(split.classes),
        }
        for name, split in splits.items()
    }
    fingerprint = omniglot_folder.fingerprint(splits, SIDE)
    save_atomic(omniglot_folder.cache_path(root, SIDE), {"fingerprint": fingerprint, **old})
    check(load_omniglot(root, size=SIDE))


def test_a_read_only_root_works(tmp_path):
    root = make_root(tmp_path / "data")
    folders = [p for p in root.rglob("*") if p.is_dir()] + [root]
    for folder in folders:
        folder.chmod(0o555)
    try:
        check(load_omniglot(root, size=SIDE))
        check(load_omniglot(root, size=SIDE))
    finally:
        for folder in folders:
            folder.chmod(0o755)


def data_error(root, size=SIDE) -> str:
    with pytest.raises(DataError) as caught:
        load_omniglot(root, size=size)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_root(tmp_path):
    message = data_error(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message and "does not exist" in message


def test_wrong_layout_says_what_is_expected(tmp_path):
    root = tmp_path / "data"
    (root / "omniglot" / "Alpha" / "character01").mkdir(parents=True)
    message = data_error(root)
    assert str(root) in message
    assert "images_background" in message and "images_evaluation" in message and "omniglot-py" in message


def test_a_missing_split_is_named(tmp_path):
    root = tmp_path / "data"
    make_split(root, "background")
    message = data_error(root)
    assert "images_evaluation" in message and str(root) in message


def test_a_split_without_classes(tmp_path):
    root = tmp_path / "data"
    make_split(root, "background")
    (root / "images_evaluation").mkdir()
    message = data_error(root)
    assert str(root / "images_evaluation") in message and "no character folders" in message


def test_a_corrupt_png_is_named(tmp_path):
    root = make_root(tmp_path / "data")
    bad = root / "images_background" / "Beta_(B)" / "character02" / "0401_03.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    message = data_error(root)
    assert str(bad) in message and "cannot read image" in message


def test_a_corrupt_png_inside_a_zip_is_named(tmp_path):
    staging, root = tmp_path / "staging", tmp_path / "data"
    root.mkdir()
    make_split(root, "background")
    folder = make_split(staging, "evaluation")
    (folder / "Gamma" / "character01" / "0001_02.png").write_bytes(b"garbage")
    zip_split(folder, root / "images_evaluation.zip")
    message = data_error(root)
    assert "images_evaluation.zip:images_evaluation/Gamma/character01/0001_02.png" in message


def test_a_character_folder_without_pngs(tmp_path):
    root = make_root(tmp_path / "data")
    empty = root / "images_background" / "Alpha" / "character04"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    message = data_error(root)
    assert str(empty) in message and ".png" in message


def test_a_zip_made_from_an_absolute_path_is_read(tmp_path):
    staging, root = tmp_path / "staging", tmp_path / "data"
    root.mkdir()
    make_split(root, "evaluation")
    folder = make_split(staging, "background")
    with zipfile.ZipFile(root / "images_background.zip", "w") as archive:  # as `zip -r` of /home/u/...
        for path in sorted(folder.rglob("*")):
            name = "/home/u/" + path.relative_to(folder.parent).as_posix() + ("/" if path.is_dir() else "")
            archive.writestr(zipfile.ZipInfo(name), b"" if path.is_dir() else path.read_bytes())
    check(load_omniglot(root, size=SIDE))
    with zipfile.ZipFile(root / "images_background.zip", "w") as archive:  # a prefix, no images_ folder
        for path in sorted(folder.rglob("*.png")):
            archive.write(path, "omniglot/" + path.relative_to(folder).as_posix())
    check(load_omniglot(root, size=SIDE))


def test_a_zip_with_images_at_several_depths_or_none_says_so(tmp_path):
    staging, root = tmp_path / "staging", tmp_path / "data"
    root.mkdir()
    make_split(root, "evaluation")
    folder = make_split(staging, "background")
    target = root / "images_background.zip"
    zip_split(folder, target)
    with zipfile.ZipFile(target, "a") as archive:
        archive.write(next(folder.rglob("*.png")), "images_background/stray.png")
    message = data_error(root)
    assert "images_background/Alpha/character01/0001_01.png and images_background/stray.png" in message
    assert "outside <alphabet>/<character>/ folders of one common folder" in message
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("images_background/Alpha/character01/notes.txt", "no images")
    message = data_error(root)
    assert f"the zip {target} holds no .png images" in message and "holds no character" not in message


def test_a_data_root_at_one_split_asks_for_its_parent(tmp_path):
    root = make_root(tmp_path / "data")
    message = data_error(root / "images_background")
    assert message.endswith(f"did you mean its parent {root}?")
    zip_split(root / "images_evaluation", tmp_path / "images_evaluation.zip")
    message = data_error(tmp_path / "images_evaluation.zip")
    assert "is not a folder" in message and message.endswith(f"did you mean its parent {tmp_path}?")
    assert "did you mean" not in data_error(tmp_path / "data" / "images_background" / "Alpha")


def alpha_png(path: Path, box, mode: str) -> None:
    """A drawing whose background is transparent black and whose ink is opaque black (RGBA or LA)."""
    image = Image.new(mode, (SIDE, SIDE), (0,) * len(mode))
    ImageDraw.Draw(image).rectangle(box, fill=(0,) * (len(mode) - 1) + (255,))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_a_transparent_background_counts_as_white(tmp_path, mode):
    root = make_root(tmp_path / "data")
    for png in sorted((root / "images_background").rglob("*.png")):
        split, klass, drawing = "background", *FILE_INDEX[png.name]
        alpha_png(png, ink_box(split, klass, drawing), mode)
    assert Image.open(next((root / "images_background").rglob("*.png"))).mode == mode
    check(load_omniglot(root, size=SIDE))


def test_light_strokes_on_dark_are_refused_naming_the_image(tmp_path):
    root = make_root(tmp_path / "data")
    inverted = root / "images_evaluation" / "Gamma" / "character02" / "0101_03.png"
    ImageOps.invert(Image.open(inverted).convert("L")).save(inverted)
    message = data_error(root)
    assert message.startswith(f"image {inverted} is 96% ink") and "light-on-dark" in message
    assert "ImageOps.invert" in message


def test_the_cache_lives_outside_the_data(tmp_path):
    root = make_root(tmp_path / "data")
    before = sorted(os.listdir(root))
    load_omniglot(root, size=SIDE)
    assert sorted(os.listdir(root)) == before
    assert omniglot_folder.cache_path(Path(os.path.abspath(root)), SIDE).is_file()


def make_counts(base: Path, counts: dict) -> Path:
    """``base/images_<split>/<alphabet>/<character>/`` holding ``counts[split][alphabet/character]``
    drawings (the squares of :func:`ink_box`, repeated where there are more than :data:`DRAWINGS`)."""
    for split, classes in counts.items():
        for klass, (name, count) in enumerate(classes.items()):
            for d in range(count):
                box = ink_box(split, klass, d % DRAWINGS)
                write_png(base / f"images_{split}" / name / f"{d:04d}.png", box)
    return base


def test_a_short_training_class_is_named_with_what_is_needed(tmp_path):
    background = {"Alpha/character01": 6, "Alpha/character02": 3, "Beta/character01": 6}
    evaluation = {"Gamma/c1": 12, "Gamma/c2": 12}
    root = make_counts(tmp_path / "data", {"background": background, "evaluation": evaluation})
    args = ["--task", "omniglot", "--omniglot-split", "background", "--data-root", root, "--ways", 2]
    args += ["--shots", 2, "--query", 2, "--iterations", 1, "--out", tmp_path / "run"]
    with pytest.warns(UserWarning) as caught:  # the CLI prints it as one "Warning: ..." line
        result = invoke("train", *args)
    assert result.exit_code == 2, result.output
    short = root / "images_background" / "Alpha" / "character02"
    assert [str(w.message) for w in caught] == [
        "the classes of images_background hold 3 to 6 images (1 of 3 fewer than 6): every class keeps only "
        f"its first 3, as many as {short}"
    ]
    assert result.stderr == (
        "Error: --shots + --query = 4 images per class; the meta-train classes have 3 images "
        f"(the fewest of any class, in {short})\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_short_evaluation_class_is_named_with_what_is_needed(tmp_path):
    counts = {"background": {"Alpha/c1": 12, "Alpha/c2": 12}, "evaluation": {"Gamma/c1": 12, "Gamma/c2": 12}}
    root, run = make_counts(tmp_path / "data", counts), tmp_path / "run"
    args = ["--task", "omniglot", "--omniglot-split", "background", "--data-root", root, "--ways", 2]
    trained = invoke("train", *args, "--iterations", 1, "--meta-batch", 1, "--quiet", "--out", run)
    assert trained.exit_code == 0, trained.output
    short = root / "images_evaluation" / "Gamma" / "c2"
    for drawing in range(5, 12):
        (short / f"{drawing:04d}.png").unlink()
    with pytest.warns(UserWarning, match=f"every class keeps only its first 5, as many as {short}$"):
        result = invoke("eval", run, "--shots", 1, "--steps", 0, "--tasks", 2)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "Error: held-out episodes use --shots + 10 query images per class; the meta-test classes have 5 "
        f"images (the fewest of any class, in {short}), too few for any --shots (at least 11 are "
        "needed)"
    )
    for drawing in range(5, 12):  # 12 images again, but still too few for 5 shots
        write_png(short / f"{drawing:04d}.png", ink_box("evaluation", 1, drawing % DRAWINGS))
    result = invoke("eval", run, "--shots", 5, "--steps", 0, "--tasks", 2)
    assert result.exit_code == 2 and result.stderr.strip() == (
        "Error: held-out episodes use --shots + 10 query images per class; the meta-test classes have 12 "
        f"images (the fewest of any class, in {root / 'images_evaluation' / 'Gamma' / 'c1'}), so "
        "--shots can be at most 2"
    ), result.output


def test_training_is_refused_when_the_meta_test_classes_cannot_make_an_episode(tmp_path):
    counts = {"background": {"Alpha/c1": 12, "Alpha/c2": 12}, "evaluation": {"Gamma/c1": 12, "Gamma/c2": 5}}
    root, run = make_counts(tmp_path / "data", counts), tmp_path / "run"
    args = ["--task", "omniglot", "--omniglot-split", "background", "--data-root", root, "--ways", 2]
    with pytest.warns(UserWarning, match="every class keeps only its first 5"):
        result = invoke("train", *args, "--iterations", 1, "--meta-batch", 1, "--quiet", "--out", run)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "Error: held-out episodes use --shots + 10 query images per class; the meta-test classes have 5 "
        f"images (the fewest of any class, in {root / 'images_evaluation' / 'Gamma' / 'c2'}), too few for "
        "any --shots (at least 11 are needed)"
    )
    assert not run.exists()


def test_the_background_split_meta_trains_on_images_background_only(tmp_path):
    counts = {
        "background": {"Alpha/c1": 12, "Alpha/c2": 12, "Beta/c1": 12},
        "evaluation": {"Gamma/c1": 12, "Gamma/c2": 12},
    }
    root = make_counts(tmp_path / "data", counts)
    options = dict(task="omniglot", omniglot_split="background", data_root=str(root), ways=2, query=2)
    family = build_family(TrainConfig(**options, rotations=False))
    data = load_omniglot(root)
    as_bytes = lambda images: {image.numpy().tobytes() for image in images.flatten(0, 1)}  # noqa: E731
    background, evaluation = as_bytes(data["background"].images), as_bytes(data["evaluation"].images)
    assert not background & evaluation
    batch = family.sample(50, 1, 2, torch.Generator().manual_seed(0))
    drawn = torch.cat([batch.x_support, batch.x_query], 1).mul(255).round().to(torch.uint8)
    assert as_bytes(drawn) == background  # every meta-train drawing, and only those, in 50 episodes
    held_out = family.held_out(4, 1, seed=1)
    assert as_bytes(torch.cat([held_out.support, held_out.query], 2).flatten(0, 1)) <= evaluation


# --- the Vinyals et al. split ---------------------------------------------------------------------


def test_the_shipped_vinyals_lists_hold_1028_172_and_423_distinct_characters():
    lists = {
        split: omniglot_folder.class_list(omniglot_folder.SPLIT_LISTS / f"omniglot_vinyals_{suffix}.txt")
        for split, suffix in omniglot_folder.VINYALS.items()
    }
    assert {split: len(names) for split, names in lists.items()} == {
        "train": 1028,
        "validation": 172,
        "test": 423,
    }
    every = [name for names in lists.values() for name in names]
    assert len(set(every)) == 1623  # disjoint, no repeats: all of Omniglot's characters
    assert all(re.fullmatch(r"[^/]+/character\d\d", name) for name in every)
    alphabets = {split: {name.split("/")[0] for name in names} for split, names in lists.items()}
    assert [len(a) for a in alphabets.values()] == [33, 5, 13]
    assert alphabets["train"] & alphabets["test"] == {"Gurmukhi"}  # split inside one alphabet, as published
    assert not alphabets["validation"] & (alphabets["train"] | alphabets["test"])


SMALL_LISTS = {
    "train": ["Alpha/character01", "Gamma/character02", "Alpha/character03"],
    "val": ["Beta_(B)/character02", "Beta_(B)/character01"],
    "test": ["Beta_(B)/character03", "Gamma/character01"],
}


@pytest.fixture
def small_lists(tmp_path, monkeypatch):
    """Point the reader at small Vinyals-style lists naming characters of both fake folders."""
    folder = tmp_path / "lists"
    folder.mkdir()
    for suffix, names in SMALL_LISTS.items():
        (folder / f"omniglot_vinyals_{suffix}.txt").write_text("\n".join(names) + "\n\n")
    monkeypatch.setattr(omniglot_folder, "SPLIT_LISTS", folder)
    return folder


def test_the_vinyals_split_takes_the_listed_characters_from_both_folders_in_list_order(tmp_path, small_lists):
    root = make_root(tmp_path / "data")
    family = Omniglot(2, str(root), split="vinyals")
    family.image_size = SIDE
    splits = family.load()
    background, evaluation = expected_images("background"), expected_images("evaluation")
    # class indices: background Alpha 0-2, Beta_(B) 3-5; evaluation Gamma 0-1
    expected = {
        "train": [background[0], evaluation[1], background[2]],
        "validation": [background[4], background[3]],
        "test": [background[5], evaluation[0]],
    }
    for split, suffix in (("train", "train"), ("validation", "val"), ("test", "test")):
        assert splits[split].names == tuple(SMALL_LISTS[suffix])
        assert splits[split].alphabets == tuple(name.split("/")[0] for name in SMALL_LISTS[suffix])
        np.testing.assert_array_equal(splits[split].images.numpy(), np.stack(expected[split]))


def test_a_tree_that_follows_the_vinyals_lists_partially_names_a_missing_class(tmp_path, small_lists):
    (small_lists / "omniglot_vinyals_test.txt").write_text(
        "Gamma/character01\nGamma/character07\nDelta/character01\n"
    )
    with pytest.raises(
        DataError, match=r"omniglot_vinyals_test.txt\) lists Gamma/character07 \(and 1 more\)"
    ):
        Omniglot(2, str(make_root(tmp_path / "data")), split="vinyals").load()


def test_the_shipped_lists_on_a_tree_of_other_names_are_a_one_line_cli_error(tmp_path):
    root = make_root(tmp_path / "data")
    result = invoke(
        "train", "--task", "omniglot", "--data-root", root, "--iterations", 1, "--out", tmp_path / "run"
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "lists Angelic/character01 (and 1027 more)" in lines[0], lines
    assert "--omniglot-split background" in lines[0]
    assert not (tmp_path / "run").exists()


def test_train_on_the_vinyals_split_through_the_cli(tmp_path, small_lists):
    root, run = make_root(tmp_path / "data"), tmp_path / "run"
    for character in root.glob("images_*/*/*"):  # 11 images: one held-out support + 10 query
        drawings = sorted(character.glob("*.png"))
        for d in range(len(drawings), 11):
            shutil.copy(drawings[d % len(drawings)], character / f"extra_{d:02d}.png")
    args = ["--task", "omniglot", "--data-root", root, "--ways", 2, "--iterations", 2, "--meta-batch", 2]
    result = invoke("train", *args, "--quiet", "--out", run)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["omniglot_split"], config["rotations"]) == ("vinyals", True)
    too_many = invoke("train", *args, "--ways", 3, "--quiet", "--out", tmp_path / "other")
    assert too_many.exit_code == 2 and "the validation split has 2 classes; 3-way" in too_many.stderr


def test_the_split_option_defaults_to_vinyals_and_applies_to_omniglot_only():
    assert TrainConfig(task="omniglot", data_root="x").omniglot_split == "vinyals"
    assert (
        TrainConfig(task="omniglot", data_root="x", omniglot_split="background").omniglot_split
        == "background"
    )
    assert TrainConfig(task="glyphs").omniglot_split is None
    with pytest.raises(ConfigError, match="--omniglot-split does not apply to --task glyphs"):
        TrainConfig(task="glyphs", omniglot_split="vinyals")


def test_reproduce_trains_on_the_maml_papers_omniglot_settings():
    reproduction = FAMILIES.get("omniglot").reproduction
    settings = [
        run_config("omniglot", "maml", 0, None, variant.overrides, data_root="x")
        for variant in reproduction.variants
    ]
    shapes = [(c.ways, c.shots, c.meta_batch, c.inner_steps, c.inner_lr, c.iterations) for c in settings]
    assert shapes == [(5, 1, 32, 1, 0.4, 60_000), (5, 5, 32, 1, 0.4, 60_000), (20, 1, 16, 1, 0.4, 60_000)]
    assert all(c.rotations and c.omniglot_split == "vinyals" for c in settings)
    assert [v.label for v in reproduction.variants] == list(reproduction.published_elsewhere)
