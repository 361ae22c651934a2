"""The rendered glyph set: counts, splits, real fonts, homoglyphs, determinism and the cache."""

import time
from pathlib import Path

import pytest
import torch
from PIL import ImageFont

from metakit.experiments.tasks.vision import glyph_set
from metakit.experiments.tasks.vision.glyph_set import glyph_splits, load_glyphs, render_glyphs
from metakit.experiments.tasks.vision.glyphs import Glyphs
from metakit.experiments.tasks.vision.image_sets import ClassImages, cache_dir, load_payload, save_atomic

SUBSET = ("Greek", "Block elements")
UNASSIGNED = "\u0378"  # no font has it: drawing it shows the font's .notdef glyph


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One full render through ``load_glyphs`` into a fresh folder (about 10 s), shared by the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("METAKIT_CACHE", str(tmp_path_factory.mktemp("user-cache")))
        root = tmp_path_factory.mktemp("glyphs")
        return load_glyphs(root), root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))


def char_of(name: str) -> str:
    """The character of a class name ``"<alphabet>/<codepoint in hex>"``."""
    return chr(int(name.rsplit("/", 1)[1], 16))


def clear_caches() -> None:
    for cached in (glyph_set.all_fonts, glyph_set.glyph_classes, glyph_set._pil_font):
        cached.cache_clear()


def test_counts_and_shapes(full):
    data, root = full
    assert data.num_classes >= 1000
    assert len(data.alphabet_names()) >= 20
    assert data.images.dtype == torch.uint8 and data.images.shape[1:] == (20, 1, 28, 28)
    assert len(set(data.names)) == data.num_classes
    assert all(name.startswith(alphabet + "/") for name, alphabet in zip(data.names, data.alphabets))
    assert (root / "glyphs-v2-28.pt").is_file()


def test_splits_are_disjoint_by_alphabet_and_cover_every_class(full):
    data, _ = full
    splits = glyph_splits(data)
    assert list(splits) == ["train", "validation", "test"]
    alphabets = [set(part.alphabet_names()) for part in splits.values()]
    assert not (alphabets[0] & alphabets[1] or alphabets[0] & alphabets[2] or alphabets[1] & alphabets[2])
    assert sorted(n for part in splits.values() for n in part.names) == sorted(data.names)
    sizes = {name: part.num_classes for name, part in splits.items()}
    assert min(sizes.values()) >= 100
    assert 0.6 < sizes["train"] / data.num_classes < 0.8 and 0.1 < sizes["test"] / data.num_classes < 0.3
    assert {k: v.names for k, v in glyph_splits(data).items()} == {k: v.names for k, v in splits.items()}


def test_drawings_have_ink_and_differ(full):
    images = full[0].images
    assert (images.amax(dim=(2, 3, 4)) >= 128).all()  # never blank
    assert (images.amin(dim=(2, 3, 4)) == 0).all()  # never a solid square
    flat = images.flatten(2)
    for klass in range(images.shape[0]):
        assert torch.unique(flat[klass], dim=0).shape[0] == 20, full[0].names[klass]


def test_each_class_is_drawn_in_fonts_that_really_have_it(full):
    data, _ = full
    pil = {font.path: ImageFont.truetype(str(font.path), 16) for font in glyph_set.all_fonts()}
    notdef = {path: bytes(font.getmask(UNASSIGNED)) for path, font in pil.items()}
    for name in data.names:
        char = char_of(name)
        fonts = glyph_set.glyph_fonts(char)[:20]  # the fonts of the 20 drawings
        assert len({font.family for font in fonts}) >= 3, name
        for font in fonts:
            assert bytes(pil[font.path].getmask(char)) != notdef[font.path], (name, font.path.name)


def test_tex_fonts_count_only_for_characters_they_really_draw():
    text_fonts = {"cmr10", "cmb10", "cmss10", "cmti10"}  # OT1 encoding: some ASCII codes hold other glyphs
    assert text_fonts <= {font.family for font in glyph_set.glyph_fonts("A")}
    for char in "<>\\_{|}":  # ¡, ¿, “, ˙, –, —, ˝ in those fonts
        assert not text_fonts & {font.family for font in glyph_set.glyph_fonts(char)}, char
    assert "cmsy10" in {font.family for font in glyph_set.glyph_fonts("A")}  # calligraphic capitals
    assert "cmsy10" not in {font.family for font in glyph_set.glyph_fonts("a")}  # a symbol there


def test_homoglyphs_make_one_class(full):
    chars = {char_of(name) for name in full[0].names}
    for group in ("AΑА", "oοоօ", "PΡР", "Δ∆", "-֊"):
        assert len(chars & set(group)) == 1, group
    assert {"A", "o", "P"} <= chars  # the first alphabet keeps its letter


def test_fresh_renders_are_identical(full):
    clear_caches()  # fonts, class choice and drawings all recomputed from scratch
    first = render_glyphs(alphabets=SUBSET)
    assert first.alphabet_names() == sorted(SUBSET)
    expected = full[0].select(SUBSET)
    assert first.names == expected.names
    assert torch.equal(first.images, expected.images)
    second = render_glyphs(alphabets=SUBSET)
    assert torch.equal(second.images, first.images)


def refuse_to_render(*args, **kwargs):
    raise AssertionError("rendered again instead of loading the cache")


def test_the_cache_is_used_on_the_second_call(full, monkeypatch):
    data, root = full
    monkeypatch.setattr(glyph_set, "render_glyphs", refuse_to_render)
    start = time.perf_counter()
    again = load_glyphs(root)
    assert time.perf_counter() - start < 2.0
    assert again.names == data.names and torch.equal(again.images, data.images)


def counting_renderer(monkeypatch) -> list:
    """Replace the full render by a render of :data:`SUBSET` and count the calls."""
    calls = []
    real = glyph_set.render_glyphs

    def render(alphabets=None, size=28):
        calls.append(size)
        return real(alphabets=SUBSET, size=size)

    monkeypatch.setattr(glyph_set, "render_glyphs", render)
    return calls


def test_a_corrupt_or_outdated_cache_is_rebuilt(tmp_path, monkeypatch):
    calls = counting_renderer(monkeypatch)
    path = glyph_set.cache_path(tmp_path, 28)
    path.write_bytes(b"not a torch file")
    first = load_glyphs(tmp_path)
    assert calls == [28] and first.alphabet_names() == sorted(SUBSET)
    assert load_payload(path)["names"] == list(first.names)
    load_glyphs(tmp_path)
    assert calls == [28]  # the rebuilt cache is valid
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    assert load_glyphs(tmp_path).names == first.names and calls == [28, 28]
    monkeypatch.setattr(glyph_set, "renderer_key", lambda: "other fonts")
    load_glyphs(tmp_path)
    assert calls == [28, 28, 28]
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave nothing behind


def test_a_cache_in_the_old_layout_is_rebuilt_not_misread(tmp_path, monkeypatch):
    calls = counting_renderer(monkeypatch)
    old = render_glyphs(alphabets=SUBSET).images[:, :, 0]  # v1: [classes, drawings, size, size]
    payload = {"images": old, "names": ["x"] * old.shape[0], "alphabets": ["x"] * old.shape[0]}
    save_atomic(glyph_set.cache_path(tmp_path, 28), {"renderer": glyph_set.renderer_key(), **payload})
    data = load_glyphs(tmp_path)
    assert calls == [28] and data.images.shape[1:] == (20, 1, 28, 28) and "x" not in data.names


def test_the_glyph_family_keeps_the_validation_split(full):
    data, root = full
    splits = Glyphs(ways=5, data_root=str(root)).load()
    assert list(splits) == ["train", "validation", "test"]
    names = {split: set(part.names) for split, part in splits.items()}
    assert len(names["validation"]) >= 100
    assert not names["validation"] & names["train"] and not names["validation"] & names["test"]
    assert splits["validation"].names == glyph_splits(data)["validation"].names
    assert set(splits["validation"].alphabet_names()) <= {
        a.name for a in glyph_set.ALPHABETS if a.split == "validation"
    }


def test_cache_dir_order(tmp_path, monkeypatch):
    assert cache_dir(tmp_path / "given") == tmp_path / "given"
    assert cache_dir(None) == tmp_path / "cache"
    monkeypatch.delenv("METAKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir(None) == tmp_path / "xdg" / "metakit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir(None) == Path(tmp_path / "home" / ".cache" / "metakit")


def test_select_keeps_order():
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1, 1).expand(4, 2, 1, 3, 3).contiguous()
    data = ClassImages(images, ("b/1", "a/1", "b/2", "c/1"), ("b", "a", "b", "c"))
    picked = data.select({"c", "b"})
    assert picked.names == ("b/1", "b/2", "c/1")
    assert picked.images[:, 0, 0, 0, 0].tolist() == [0, 2, 3]
    assert data.alphabet_names() == ["a", "b", "c"] and picked.num_classes == 3
