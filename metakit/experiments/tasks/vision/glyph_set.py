"""An offline stand-in for Omniglot: Unicode characters drawn in the fonts that ship with matplotlib.

A class is one character. Its drawings are that character rendered in the fonts that really contain
it (checked in each font's cmap and glyph names, never a ``.notdef`` box), cycling through the font
families, each with a random affine jitter (rotation, scale, shear, translation) and stroke width,
drawn at three times the output size and down-sampled with antialiasing. An alphabet is a Unicode
script or block (see :data:`ALPHABETS`).

Which characters become classes (:func:`glyph_classes`):

* the character is a letter, number, punctuation mark or symbol (no space, control, format or
  combining mark) and has no Unicode decomposition: precomposed letters such as ``é`` and
  compatibility variants such as ``²`` or ``𝐀`` would be near-copies of other classes;
* at least :data:`MIN_FAMILIES` font families contain it, so its drawings really vary;
* its clean renderings are not (near-)identical to those of a character kept before it (homoglyphs
  such as Latin ``A``, Greek ``Α`` and Cyrillic ``А``): the first one in :data:`ALPHABETS` order wins,
  so no visual class appears in two alphabets, nor in two splits;
* alphabets left with fewer than :data:`MIN_CLASSES` classes are dropped.

A font family is the family name in the font's name table (DejaVu Sans, DejaVu Sans Mono, DejaVu
Serif, STIXGeneral, cmr10, ...). Drawings are centred on their ink, so characters that differ only by
their position (``▁`` and ``▔``) count as homoglyphs too.

Splits (:func:`glyph_splits`) are fixed per alphabet in :data:`ALPHABETS`. With matplotlib 3.11's
fonts this gives 1,323 classes in 20 alphabets: train 912 classes (11 alphabets), validation 160
(Georgian, Block elements, Miscellaneous symbols, Supplemental arrows), test 251 (Armenian,
Punctuation, Technical, Geometric shapes, Mathematical symbols).

Everything is seeded by :data:`SEED` and each class's codepoint alone, so rendering a subset of the
alphabets gives exactly the corresponding classes of the full set, byte for byte. Rendering all of it
takes about 11 s of one CPU core; :func:`load_glyphs` caches the result.
"""

import contextlib
import functools
import logging
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Optional

import matplotlib
import numpy as np
import PIL
import torch
from fontTools import agl
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

from metakit.experiments.tasks.vision.image_sets import (
    ClassImages,
    cache_dir,
    from_payload,
    load_payload,
    save_atomic,
    to_payload,
)
from metakit.experiments.util import progress

SEED = 20_240_917
"""Seeds every drawing's jitter, together with the class's codepoint."""
DRAWINGS = 20
"""Drawings per class, as in Omniglot."""
MIN_FAMILIES = 3
"""A character must exist in at least this many font families."""
MIN_CLASSES = 10
"""Alphabets with fewer classes than this are dropped."""
SUPERSAMPLE = 3
"""Drawings are rendered at this multiple of the output size, then down-sampled."""
FONT_SIZE = 0.8
"""Font size as a fraction of the rendering canvas side."""
FIT = 0.9
"""A drawing larger than this fraction of the canvas is shrunk to fit."""
DEDUP_SIZE = 28
"""Side of the clean renderings compared to find homoglyphs (fixed: every ``size`` has the same classes)."""
HOMOGLYPH_DISTANCE = 0.05
"""Two characters whose clean renderings differ by less than this (relative squared difference,
averaged over the font families they share) are the same visual class; the later one is dropped."""
CACHE_VERSION = "v2"
"""Part of the cache file name; bump it when the rendering or the cached layout changes (v2: images
carry a channel axis)."""

SKIPPED_FONTS = ("LastResort", "STIXNonUni", "STIXSiz", "cmex10", "DejaVuSansDisplay", "DejaVuSerifDisplay")
"""Font files left out: a fallback font whose every glyph is a placeholder box, fonts of private-use
or size-variant glyphs, TeX's extension font (delimiter pieces) and two display fonts of a few glyphs."""


@dataclass(frozen=True)
class Alphabet:
    """A named group of Unicode ranges (inclusive) forming one alphabet, and the split it belongs to."""

    name: str
    split: str
    ranges: tuple


ALPHABETS = (
    Alphabet("Basic Latin", "train", ((0x0000, 0x007F),)),
    Alphabet("Latin-1 Supplement", "train", ((0x0080, 0x00FF),)),
    Alphabet(
        "Latin Extended", "train", ((0x0100, 0x024F), (0x1E00, 0x1EFF), (0x2C60, 0x2C7F), (0xA720, 0xA7FF))
    ),
    Alphabet("IPA", "train", ((0x0250, 0x02AF), (0x1D00, 0x1DBF))),
    Alphabet("Modifier letters", "train", ((0x02B0, 0x02FF), (0xA700, 0xA71F))),
    Alphabet("Greek", "train", ((0x0370, 0x03FF), (0x1F00, 0x1FFF))),
    Alphabet("Cyrillic", "train", ((0x0400, 0x052F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F))),
    Alphabet("Armenian", "test", ((0x0530, 0x058F),)),
    Alphabet("Hebrew", "test", ((0x0590, 0x05FF), (0xFB1D, 0xFB4F))),
    Alphabet("Arabic", "test", ((0x0600, 0x06FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF))),
    Alphabet("Georgian", "validation", ((0x10A0, 0x10FF), (0x2D00, 0x2D2F))),
    Alphabet("Canadian syllabics", "test", ((0x1400, 0x167F),)),
    Alphabet("Runic", "test", ((0x16A0, 0x16FF),)),
    Alphabet("Punctuation", "test", ((0x2000, 0x206F), (0x2E00, 0x2E7F))),
    Alphabet("Currency and letterlike", "train", ((0x20A0, 0x20CF), (0x2100, 0x218F))),
    Alphabet("Arrows", "train", ((0x2190, 0x21FF),)),
    Alphabet("Mathematical operators", "train", ((0x2200, 0x22FF),)),
    Alphabet("Technical", "test", ((0x2300, 0x243F),)),
    Alphabet("Box drawing", "train", ((0x2500, 0x257F),)),
    Alphabet("Block elements", "validation", ((0x2580, 0x259F),)),
    Alphabet("Geometric shapes", "test", ((0x25A0, 0x25FF),)),
    Alphabet("Miscellaneous symbols", "validation", ((0x2600, 0x27BF),)),
    Alphabet("Mathematical symbols", "test", ((0x27C0, 0x27EF), (0x2980, 0x2AFF))),
    Alphabet("Supplemental arrows", "validation", ((0x27F0, 0x27FF), (0x2900, 0x297F), (0x2B00, 0x2BFF))),
    Alphabet("Braille", "test", ((0x2800, 0x28FF),)),
    Alphabet("Tifinagh", "test", ((0x2D30, 0x2D7F),)),
)
"""The alphabets, in priority order for homoglyphs, with their fixed split. With matplotlib's fonts,
Hebrew, Arabic, Canadian syllabics, Runic, Braille and Tifinagh have fewer than :data:`MIN_CLASSES`
characters in three families and are dropped; they stay listed for font sets that cover them."""
SPLITS = ("train", "validation", "test")
"""The keys of :func:`glyph_splits`."""


@dataclass(frozen=True)
class GlyphFont:
    """One font file, its family name and the codepoints it really draws."""

    path: Path
    family: str
    regular: bool
    codepoints: frozenset = field(repr=False)


def font_files() -> list:
    """The ``.ttf`` files shipped with matplotlib that are used, sorted by name."""
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [p for p in sorted(folder.glob("*.ttf")) if not p.name.startswith(SKIPPED_FONTS)]


def _draws(glyph: str, codepoint: int, empty: Collection[str]) -> bool:
    """Whether a cmap entry really draws ``codepoint``: the glyph's name agrees with the character
    (TeX fonts map ASCII codes to other symbols) and the glyph is neither ``.notdef`` nor empty."""
    if glyph == ".notdef" or glyph in empty:
        return False
    return agl.toUnicode(glyph) == chr(codepoint) or agl.UV2AGL.get(codepoint) == glyph


def _empty_glyphs(font: TTFont) -> set:
    """Names of the glyphs without an outline (equal consecutive offsets in the ``loca`` table)."""
    offsets = font["loca"]
    return {name for i, name in enumerate(font.getGlyphOrder()) if offsets[i] == offsets[i + 1]}


@contextlib.contextmanager
def _quiet_fonttools():
    """Silence fontTools' warnings about the old timestamps in the TeX fonts' headers."""
    logger = logging.getLogger("fontTools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_font(path: Path) -> GlyphFont:
    """The family and the really drawn codepoints of one font file."""
    with _quiet_fonttools():
        return _read_font(path)


def _read_font(path: Path) -> GlyphFont:
    font = TTFont(path, lazy=True)
    names = font["name"]
    family = names.getDebugName(16) or names.getDebugName(1)
    style = names.getDebugName(17) or names.getDebugName(2)
    empty = _empty_glyphs(font)
    drawn = frozenset(cp for cp, glyph in font.getBestCmap().items() if _draws(glyph, cp, empty))
    return GlyphFont(path, family, style in ("Book", "Regular"), drawn)


@functools.lru_cache(maxsize=None)
def all_fonts() -> tuple:
    """Every used font (see :func:`font_files`)."""
    return tuple(read_font(path) for path in font_files())


def _regular_first(font: GlyphFont) -> tuple:
    return (not font.regular, font.path.name)


def glyph_fonts(char: str) -> tuple:
    """The fonts that draw ``char``, ordered round-robin over families so the first few differ most."""
    by_family = {}
    for font in all_fonts():
        if ord(char) in font.codepoints:
            by_family.setdefault(font.family, []).append(font)
    groups = [sorted(by_family[name], key=_regular_first) for name in sorted(by_family)]
    rounds = max(map(len, groups), default=0)
    return tuple(group[i] for i in range(rounds) for group in groups if i < len(group))


def _drawable(char: str) -> bool:
    """A visible, self-contained character: no space, control, format, private-use or combining mark,
    and no canonical or compatibility decomposition."""
    return unicodedata.category(char)[0] in "LNPS" and not unicodedata.decomposition(char)


def candidates() -> list:
    """``(alphabet, char)`` of every drawable character in enough font families, in alphabet order."""
    families = {}
    for font in all_fonts():
        for codepoint in font.codepoints:
            families.setdefault(codepoint, set()).add(font.family)
    found = []
    for alphabet in ALPHABETS:
        for low, high in alphabet.ranges:
            for codepoint in range(low, high + 1):
                if len(families.get(codepoint, ())) >= MIN_FAMILIES and _drawable(chr(codepoint)):
                    found.append((alphabet.name, chr(codepoint)))
    return found


@dataclass(frozen=True)
class Jitter:
    """One drawing's distortion: rotation (degrees), scale, shear, shift (fraction of the canvas), and
    stroke width (fraction of the font size)."""

    rotation: float = 0.0
    scale: float = 1.0
    shear: float = 0.0
    shift: tuple = (0.0, 0.0)
    stroke: float = 0.0


def random_jitter(rng: np.random.Generator) -> Jitter:
    """A random :class:`Jitter`: ±10° rotation, ×0.8–1.15 scale, ±0.2 shear, ±6 % shift, stroke 0–3 %."""
    return Jitter(
        rotation=float(rng.uniform(-10, 10)),
        scale=float(rng.uniform(0.8, 1.15)),
        shear=float(rng.uniform(-0.2, 0.2)),
        shift=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06))),
        stroke=float(rng.uniform(0.0, 0.03)),
    )


@functools.lru_cache(maxsize=256)
def _pil_font(path: Path, pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), pixels, layout_engine=ImageFont.Layout.BASIC)


def ink(char: str, font: ImageFont.FreeTypeFont, stroke: int) -> Optional[Image.Image]:
    """``char`` drawn white on black in ``font``, cropped to its ink; ``None`` if nothing is drawn."""
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
    pad = 2 + stroke
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(canvas).text(
        (pad - left, pad - top), char, font=font, fill=255, stroke_width=stroke, stroke_fill=255
    )
    box = canvas.getbbox()
    return canvas.crop(box) if box else None


def _affine(width: int, height: int, side: int, jitter: Jitter) -> tuple:
    """PIL affine coefficients (output → input) that centre a ``width``×``height`` crop on a
    ``side``-pixel canvas with ``jitter`` applied, shrunk and shifted so that it stays inside."""
    cos, sin = math.cos(math.radians(jitter.rotation)), math.sin(math.radians(jitter.rotation))
    # forward map: scale · rotation · shear
    m00, m01 = cos, cos * jitter.shear - sin
    m10, m11 = sin, sin * jitter.shear + cos
    extent_x = abs(m00) * width + abs(m01) * height
    extent_y = abs(m10) * width + abs(m11) * height
    scale = jitter.scale * min(1.0, FIT * side / (jitter.scale * max(extent_x, extent_y)))
    m00, m01, m10, m11 = (scale * m for m in (m00, m01, m10, m11))
    room_x = max(side - scale * extent_x, 0) / 2
    room_y = max(side - scale * extent_y, 0) / 2
    centre_x = side / 2 + min(max(jitter.shift[0] * side, -room_x), room_x)
    centre_y = side / 2 + min(max(jitter.shift[1] * side, -room_y), room_y)
    det = m00 * m11 - m01 * m10
    a, b, d, e = m11 / det, -m01 / det, -m10 / det, m00 / det
    return (a, b, width / 2 - a * centre_x - b * centre_y, d, e, height / 2 - d * centre_x - e * centre_y)


def draw(char: str, font_path: Path, size: int, jitter: Jitter = Jitter()) -> np.ndarray:
    """One ``size``×``size`` uint8 drawing of ``char`` (255 = ink), centred, with ``jitter``."""
    side = SUPERSAMPLE * size
    pixels = round(FONT_SIZE * side)
    crop = ink(char, _pil_font(font_path, pixels), round(jitter.stroke * pixels))
    if crop is None:
        return np.zeros((size, size), np.uint8)
    coefficients = _affine(crop.width, crop.height, side, jitter)
    big = crop.transform((side, side), Image.Transform.AFFINE, coefficients, Image.Resampling.BICUBIC)
    return np.asarray(big.resize((size, size), Image.Resampling.BOX))


def _clean_renderings(chars: list, font: GlyphFont) -> np.ndarray:
    """Un-jittered ``DEDUP_SIZE`` renderings of ``chars`` in ``font``, flattened, in [0, 1]."""
    return np.stack([draw(c, font.path, DEDUP_SIZE).ravel() for c in chars]).astype(np.float64) / 255


def relative_distances(x: np.ndarray) -> np.ndarray:
    """Pairwise ``|a − b|² / (|a|² + |b|²)`` between the rows of ``x``: 0 for identical images,
    about 1 for images whose ink does not overlap."""
    norms = (x * x).sum(axis=1)
    total = norms[:, None] + norms[None, :]
    return np.clip(total - 2 * x @ x.T, 0, None) / np.maximum(total, 1e-12)


def homoglyph_distances(chars: list) -> np.ndarray:
    """Distances between the clean renderings of ``chars``, averaged over the regular font of every
    family that draws both; ``inf`` for pairs sharing no such font and on the diagonal."""
    total = np.zeros((len(chars), len(chars)))
    count = np.zeros_like(total)
    for font in all_fonts():
        if not font.regular:
            continue
        rows = np.array([i for i, c in enumerate(chars) if ord(c) in font.codepoints], dtype=int)
        if rows.size == 0:
            continue
        block = np.ix_(rows, rows)
        total[block] += relative_distances(_clean_renderings([chars[i] for i in rows], font))
        count[block] += 1
    distances = np.where(count > 0, total / np.maximum(count, 1), np.inf)
    np.fill_diagonal(distances, np.inf)
    return distances


def keep_distinct(distances: np.ndarray, threshold: float) -> list:
    """Indices kept by a greedy pass in order: an item is dropped if it is closer than ``threshold``
    to an item already kept."""
    kept = []
    for i in range(distances.shape[0]):
        if not kept or distances[i, kept].min() >= threshold:
            kept.append(i)
    return kept


@functools.lru_cache(maxsize=None)
def glyph_classes() -> tuple:
    """``(alphabet, char)`` of every class, in :data:`ALPHABETS` order then codepoint order."""
    found = candidates()
    kept = [found[i] for i in keep_distinct(homoglyph_distances([c for _, c in found]), HOMOGLYPH_DISTANCE)]
    sizes = {}
    for alphabet, _ in kept:
        sizes[alphabet] = sizes.get(alphabet, 0) + 1
    return tuple((alphabet, char) for alphabet, char in kept if sizes[alphabet] >= MIN_CLASSES)


def class_name(alphabet: str, char: str) -> str:
    """The name of a class: ``"<alphabet>/<codepoint in hex>"``, e.g. ``"Basic Latin/0041"``."""
    return f"{alphabet}/{ord(char):04X}"


def drawings(char: str, size: int) -> np.ndarray:
    """The :data:`DRAWINGS` drawings of ``char``: ``[DRAWINGS, size, size]`` uint8, seeded by its codepoint,
    cycling through :func:`glyph_fonts`."""
    rng = np.random.default_rng([SEED, ord(char)])
    fonts = glyph_fonts(char)
    return np.stack(
        [draw(char, fonts[i % len(fonts)].path, size, random_jitter(rng)) for i in range(DRAWINGS)]
    )


def render_glyphs(alphabets: Optional[Collection[str]] = None, size: int = 28) -> ClassImages:
    """Render the classes of ``alphabets`` (default: all), without any cache.

    The classes are always chosen over all alphabets (:func:`glyph_classes`), so the result equals
    ``render_glyphs(size=size).select(alphabets)``.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    classes = glyph_classes()
    if alphabets is not None:
        wanted = {alphabets} if isinstance(alphabets, str) else set(alphabets)
        known = {alphabet for alphabet, _ in classes}
        if wanted - known:
            raise ValueError(f"unknown glyph alphabets {sorted(wanted - known)}; choose from {sorted(known)}")
        classes = tuple(item for item in classes if item[0] in wanted)
    images = np.zeros((len(classes), DRAWINGS, 1, size, size), dtype=np.uint8)
    with progress.bar(len(classes), "rendering the glyph set (once)", unit="class") as shown:
        for i, (_, char) in enumerate(classes):
            images[i, :, 0] = drawings(char, size)
            shown.update()
    return ClassImages(
        torch.from_numpy(images),
        tuple(class_name(alphabet, char) for alphabet, char in classes),
        tuple(alphabet for alphabet, _ in classes),
    )


def cache_path(data_root: Optional[Path], size: int) -> Path:
    """Where :func:`load_glyphs` caches the glyph set of side ``size``:
    ``cache_dir(data_root)/glyphs-{CACHE_VERSION}-{size}.pt``."""
    return cache_dir(data_root) / f"glyphs-{CACHE_VERSION}-{size}.pt"


def renderer_key() -> str:
    """What the rendering depends on besides the code: the font files (names and sizes) and the Pillow
    and FreeType versions. A cache made under another key is rendered again."""
    fonts = ",".join(f"{p.name}:{p.stat().st_size}" for p in font_files())
    return f"{CACHE_VERSION};pillow {PIL.__version__};freetype {ImageFont.core.freetype2_version};{fonts}"


def load_glyphs(data_root: Optional[Path] = None, size: int = 28) -> ClassImages:
    """Every glyph class as one-channel ``size``×``size`` images, rendered once (about 10 s) and then
    loaded from :func:`cache_path`. A missing, corrupt or outdated cache is rendered again."""
    path = cache_path(data_root, size)
    key = renderer_key()
    payload = load_payload(path)
    if isinstance(payload, dict) and payload.get("renderer") == key:
        data = from_payload(payload)
        if data is not None and data.images.shape[1:] == (DRAWINGS, 1, size, size) and data.num_classes:
            return data
    data = render_glyphs(size=size)
    save_atomic(path, {"renderer": key, **to_payload(data)})
    return data


def glyph_splits(data: ClassImages) -> dict:
    """``{"train", "validation", "test"}`` subsets of ``data``, disjoint by alphabet, following the fixed
    ``split`` of each entry of :data:`ALPHABETS` (about 70/10/20 % of the classes)."""
    return {split: data.select([a.name for a in ALPHABETS if a.split == split]) for split in SPLITS}
