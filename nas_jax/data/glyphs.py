"""Glyphs: an offline few-shot dataset of characters rendered from matplotlib's DejaVu fonts.

One class per Unicode letter (categories Lu, Ll, Lt, Lo) that has a non-empty glyph in at least
`min_styles` of the 12 DejaVu style files bundled with matplotlib; scripts (the "alphabets")
are groups of Unicode blocks (`SCRIPTS`). Letters that render identically to an earlier code
point of the selected scripts (Latin A, Greek Alpha, Cyrillic A) are kept once. Each instance
is one style's rendering under a random affine jitter (rotation, scale, shear, translation), a
stroke-width change (towards a grey dilation or erosion) and pixel noise, all from one seed, so a
build is bit-for-bit repeatable with the same matplotlib/FreeType/numpy. Meta-train and
meta-test scripts are fixed (`SCRIPT_SPLIT`), like Omniglot's background/evaluation alphabets.

Default build: 2,421 classes (1,462 meta-train, 959 meta-test), 103,875 images. Measured on
the 2-core CI-like machine while other jobs shared it (upper bounds): enumerating the classes
(about 25,000 renderings) ~18 s, jittering all images ~25 s (see docs/datasets.md).
"""

import dataclasses
import functools
import os
import unicodedata

import numpy as np

STYLES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
)

# Scripts as unions of Unicode blocks (inclusive code point ranges), in code point order of
# their first block; a letter outside every listed block (math alphanumerics, letterlike
# symbols) is not a class.
SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "latin": (
        (0x0000, 0x024F),  # Basic Latin, Latin-1 Supplement, Latin Extended-A/B
        (0x0250, 0x02AF),  # IPA Extensions
        (0x1D00, 0x1DBF),  # Phonetic Extensions (+ Supplement)
        (0x1E00, 0x1EFF),  # Latin Extended Additional
        (0x2C60, 0x2C7F),  # Latin Extended-C
        (0xA720, 0xA7FF),  # Latin Extended-D
        (0xAB30, 0xAB6F),  # Latin Extended-E
        (0xFB00, 0xFB06),  # Latin ligatures of Alphabetic Presentation Forms
    ),
    "greek": ((0x0370, 0x03FF), (0x1F00, 0x1FFF)),
    "cyrillic": ((0x0400, 0x052F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F)),
    "armenian": ((0x0530, 0x058F), (0xFB13, 0xFB17)),
    "hebrew": ((0x0590, 0x05FF), (0xFB1D, 0xFB4F)),
    "arabic": (
        (0x0600, 0x06FF),
        (0x0750, 0x077F),
        (0x08A0, 0x08FF),
        (0xFB50, 0xFDFF),  # Arabic Presentation Forms-A
        (0xFE70, 0xFEFF),  # Arabic Presentation Forms-B
    ),
    "nko": ((0x07C0, 0x07FF),),
    "thai": ((0x0E00, 0x0E7F),),
    "lao": ((0x0E80, 0x0EFF),),
    "georgian": ((0x10A0, 0x10FF), (0x1C90, 0x1CBF), (0x2D00, 0x2D2F)),
    "canadian_syllabics": ((0x1400, 0x167F), (0x18B0, 0x18FF)),
    "ogham": ((0x1680, 0x169F),),
    "runic": ((0x16A0, 0x16FF),),
    "glagolitic": ((0x2C00, 0x2C5F),),
    "coptic": ((0x2C80, 0x2CFF),),
    "tifinagh": ((0x2D30, 0x2D7F),),
    "lisu": ((0xA4D0, 0xA4FF),),
    "old_italic": ((0x10300, 0x1032F),),
}

# Class-disjoint meta-train / meta-test assignment of scripts, fixed (changing it needs a new
# builder VERSION). Scripts with no classes at the chosen `min_styles` simply do not appear.
SCRIPT_SPLIT: dict[str, str] = {
    "latin": "train",
    "cyrillic": "train",
    "arabic": "train",
    "lao": "train",
    "nko": "train",
    "thai": "train",
    "ogham": "train",
    "glagolitic": "train",
    "old_italic": "train",
    "greek": "test",
    "armenian": "test",
    "hebrew": "test",
    "georgian": "test",
    "canadian_syllabics": "test",
    "coptic": "test",
    "runic": "test",
    "tifinagh": "test",
    "lisu": "test",
}

LETTER_CATEGORIES = ("Lu", "Ll", "Lt", "Lo")
EM_FRACTION = 0.7  # The font's em square spans this fraction of the canvas side.
BOX_FRACTION = 0.8  # Larger glyphs are rendered smaller so their ink fits this fraction.
DUPLICATE_TOLERANCE = 0.3  # Max mean |difference| (0..255) of two renderings kept once.
CHUNK = 1024  # Instances jittered per vectorised batch (noise is seeded per chunk).


@dataclasses.dataclass(frozen=True)
class JitterConfig:
    """Ranges of the per-instance random distortions (canvas fractions, radians, pixels)."""

    rotation: float = 0.17  # Uniform in [-r, r] radians (~10 degrees).
    scale: float = 0.12  # log-uniform in [exp(-s), exp(s)].
    shear: float = 0.2  # Uniform horizontal shear factor in [-h, h].
    shift: float = 0.06  # Uniform translation in [-t, t] of the image side, per axis.
    stroke_probs: tuple[float, float, float] = (0.25, 0.5, 0.25)  # erode, keep, dilate.
    noise: float = 8.0  # Std of additive Gaussian pixel noise, in 0..255 units.


@dataclasses.dataclass(frozen=True)
class GlyphClasses:
    """The classes of one selection: `code_points` int32 [C] (sorted), `scripts` int32 [C]
    (index into `script_names`), `styles` bool [C, len(STYLES)] (non-empty in that style) and
    `masters` uint8 [C, len(STYLES), S, S], the centred, undistorted renderings."""

    code_points: np.ndarray
    scripts: np.ndarray
    script_names: tuple[str, ...]
    styles: np.ndarray
    masters: np.ndarray

    def split_classes(self) -> dict[str, np.ndarray]:
        """Returns {'train': ids, 'test': ids} of classes by their script's `SCRIPT_SPLIT`."""
        split = np.array([SCRIPT_SPLIT[self.script_names[s]] for s in self.scripts], object)
        return {name: np.flatnonzero(split == name).astype(np.int32) for name in ("train", "test")}


def font_dir() -> str:
    """The folder of matplotlib's bundled TrueType fonts."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def check_scripts(scripts) -> tuple[str, ...]:
    """Returns `scripts` (None: all of `SCRIPTS`) as a tuple in `SCRIPTS` order; raises
    ValueError naming unknown scripts."""
    if scripts is None:
        return tuple(SCRIPTS)
    if isinstance(scripts, str):
        scripts = (scripts,)
    unknown = sorted(set(scripts) - set(SCRIPTS))
    if unknown or not scripts:
        raise ValueError(
            f"scripts must be a non-empty subset of {', '.join(SCRIPTS)}; unknown: {unknown}"
        )
    return tuple(name for name in SCRIPTS if name in scripts)


def script_of(code_point: int) -> str | None:
    """The script (key of `SCRIPTS`) whose blocks contain `code_point`, or None."""
    for name, ranges in SCRIPTS.items():
        if any(lo <= code_point <= hi for lo, hi in ranges):
            return name
    return None


def candidate_code_points(scripts: tuple[str, ...], min_styles: int) -> list[int]:
    """Letters of `scripts` present in the character maps of at least `min_styles` styles."""
    from matplotlib.ft2font import FT2Font

    counts: dict[int, int] = {}
    for style in STYLES:
        for cp in FT2Font(os.path.join(font_dir(), style)).get_charmap():
            counts[cp] = counts.get(cp, 0) + 1
    return [
        cp
        for cp in sorted(counts)
        if counts[cp] >= min_styles
        and unicodedata.category(chr(cp)) in LETTER_CATEGORIES
        and script_of(cp) in scripts
    ]


def _ink(font, char: str, size: float) -> np.ndarray | None:
    """Renders `char` at `size` pixels per em (unhinted, anti-aliased), cropped to its ink."""
    from matplotlib.ft2font import LoadFlags

    font.set_size(size, 72)
    font.set_text(char, 0.0, flags=LoadFlags.NO_HINTING)
    font.draw_glyphs_to_bitmap(antialiased=True)
    image = np.asarray(font.get_image())
    rows, cols = np.flatnonzero(image.max(axis=1)), np.flatnonzero(image.max(axis=0))
    if rows.size == 0:
        return None
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def render(font, code_point: int, canvas: int) -> np.ndarray | None:
    """Renders one glyph centred on a `canvas` x `canvas` uint8 image (None when empty).

    The em square spans `EM_FRACTION` of the canvas, so case and size differences survive;
    glyphs whose ink exceeds `BOX_FRACTION` of the canvas are re-rendered smaller to fit.
    """
    size = EM_FRACTION * canvas
    ink = _ink(font, chr(code_point), size)
    box = int(BOX_FRACTION * canvas)
    for _ in range(4):  # Ink scales with the size; one step nearly always suffices.
        if ink is None or max(ink.shape) <= box:
            break
        size *= box / max(ink.shape) * 0.98
        ink = _ink(font, chr(code_point), size)
    if ink is None:
        return None
    ink = ink[:canvas, :canvas]
    out = np.zeros((canvas, canvas), np.uint8)
    top, left = (canvas - ink.shape[0]) // 2, (canvas - ink.shape[1]) // 2
    out[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return out


def _drop_duplicates(masters: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Returns a keep-mask over classes: a class is dropped when, in its first present style,
    it renders within `DUPLICATE_TOLERANCE` of an earlier kept class."""
    first = present.argmax(axis=1)
    keep = np.ones(len(masters), bool)
    for style in np.unique(first):
        members = np.flatnonzero(first == style)
        small = masters[members, style].reshape(len(members), -1).astype(np.float64)
        # Mean |d| <= tol implies sum d^2 <= 255 * sum |d|: prefilter pairs with one matmul.
        sq = (small**2).sum(axis=1)
        dist2 = sq[:, None] + sq[None, :] - 2.0 * small @ small.T
        bound = 255.0 * DUPLICATE_TOLERANCE * small.shape[1] + 1e-6 * sq.max(initial=1.0)
        for i, j in zip(*np.nonzero(np.tril(dist2 <= bound, k=-1)), strict=True):
            if keep[members[i]] and keep[members[j]]:
                if np.abs(small[i] - small[j]).mean() <= DUPLICATE_TOLERANCE:
                    keep[members[i]] = False
    return keep


@functools.lru_cache(maxsize=4)
def glyph_classes(
    scripts: tuple[str, ...] | None = None, min_styles: int = 4, image_size: int = 28
) -> GlyphClasses:
    """Enumerates and renders the classes of `scripts` (None: all); memoised per process.

    Raises:
      ValueError: unknown script, `min_styles` outside [1, 12], or no class left.
    """
    scripts = check_scripts(scripts)
    if not 1 <= min_styles <= len(STYLES):
        raise ValueError(f"min_styles must be in [1, {len(STYLES)}], got {min_styles}")
    from matplotlib.ft2font import FT2Font

    cps = candidate_code_points(scripts, min_styles)
    masters = np.zeros((len(cps), len(STYLES), image_size, image_size), np.uint8)
    present = np.zeros((len(cps), len(STYLES)), bool)
    for s, style in enumerate(STYLES):
        font = FT2Font(os.path.join(font_dir(), style))
        charmap = font.get_charmap()
        for c, cp in enumerate(cps):
            if cp in charmap:
                image = render(font, cp, image_size)
                if image is not None:
                    masters[c, s], present[c, s] = image, True
    keep = present.sum(axis=1) >= min_styles
    keep[keep] = _drop_duplicates(masters[keep], present[keep])
    if not keep.any():
        raise ValueError(f"no glyph classes for scripts {scripts} with min_styles={min_styles}")
    cps = np.asarray(cps, np.int32)[keep]
    names = tuple(name for name in scripts if any(script_of(int(cp)) == name for cp in cps))
    script_ids = np.array([names.index(script_of(int(cp))) for cp in cps], np.int32)
    arrays = (cps, script_ids, present[keep], masters[keep])
    for array in arrays:
        array.flags.writeable = False
    return GlyphClasses(cps, script_ids, names, arrays[2], arrays[3])


def _inverse_affines(rng: np.random.Generator, n: int, jitter: JitterConfig, side: int):
    """Per-instance inverse linear maps [n, 2, 2] and shifts [n, 2] (output -> source)."""
    angle = rng.uniform(-jitter.rotation, jitter.rotation, n)
    scale = np.exp(rng.uniform(-jitter.scale, jitter.scale, n))
    shear = rng.uniform(-jitter.shear, jitter.shear, n)
    shift = rng.uniform(-jitter.shift, jitter.shift, (n, 2)) * side
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shearing = np.zeros((n, 2, 2))
    shearing[:, 0, 0] = shearing[:, 1, 1] = 1.0
    shearing[:, 1, 0] = shear  # (row, col): col += shear * row.
    forward = scale[:, None, None] * rotation @ shearing
    return np.linalg.inv(forward), shift


def _stroke(images: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """Thickens (amount > 0) or thins (< 0) strokes by |amount| pixels, amount in [-1, 1]:
    a blend towards the 2x2 grey dilation or erosion of each image [m, S, S]."""
    padded = np.pad(images, ((0, 0), (1, 0), (1, 0)), mode="edge")
    shifted = (padded[:, 1:, 1:], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, :-1, :-1])
    target = np.where(
        amount[:, None, None] > 0, np.maximum.reduce(shifted), np.minimum.reduce(shifted)
    )
    weight = np.abs(amount)[:, None, None]
    return (1.0 - weight) * images + weight * target


def _bilinear(flat: np.ndarray, side: int, source: np.ndarray, rows, cols) -> np.ndarray:
    """Samples zero-padded images `flat` [M, (side+2)**2] at (rows, cols) [m, S, S] of image
    `source[i]` with bilinear weights; points outside the image read zeros."""
    padded = side + 2
    rows = np.clip(rows, -1.0, side) + 1.0
    cols = np.clip(cols, -1.0, side) + 1.0
    r0 = np.minimum(np.floor(rows), side).astype(np.int64)
    c0 = np.minimum(np.floor(cols), side).astype(np.int64)
    fr, fc = (rows - r0).astype(np.float32), (cols - c0).astype(np.float32)
    base = (source.astype(np.int64) * padded * padded)[:, None, None] + r0 * padded + c0
    flat = flat.reshape(-1)
    top = flat[base] * (1 - fc) + flat[base + 1] * fc
    bottom = flat[base + padded] * (1 - fc) + flat[base + padded + 1] * fc
    return top * (1 - fr) + bottom * fr


def jitter_images(
    seed: int, masters: np.ndarray, source: np.ndarray, jitter: JitterConfig = JitterConfig()
) -> np.ndarray:
    """Distorts `masters[source[i]]` (uint8 [M, S, S]) into instance i: uint8 [N, S, S].

    Bilinear affine warp about the centre, then stroke change and pixel noise. Deterministic
    in `seed`: parameters are drawn for all instances at once, noise per chunk of `CHUNK`
    instances from `(seed, 1, chunk)`.
    """
    side = masters.shape[-1]
    rng = np.random.default_rng([seed, 0])
    n = len(source)
    inverse, shift = _inverse_affines(rng, n, jitter, side)
    inverse, shift = inverse.astype(np.float32), shift.astype(np.float32)
    kind = rng.choice(3, size=n, p=jitter.stroke_probs) - 1
    amount = (kind * rng.uniform(0.0, 1.0, n)).astype(np.float32)
    centre = (side - 1) / 2.0
    axis = np.arange(side, dtype=np.float32) - centre
    flat = np.pad(masters.astype(np.float32), ((0, 0), (1, 1), (1, 1))).reshape(len(masters), -1)
    out = np.empty((n, side, side), np.uint8)
    for start in range(0, n, CHUNK):
        part = slice(start, min(start + CHUNK, n))
        a, t = inverse[part], shift[part]
        offset = centre - np.einsum("nij,nj->ni", a, t)
        rows = a[:, 0, 0, None, None] * axis[:, None] + a[:, 0, 1, None, None] * axis[None, :]
        cols = a[:, 1, 0, None, None] * axis[:, None] + a[:, 1, 1, None, None] * axis[None, :]
        rows += offset[:, 0, None, None]
        cols += offset[:, 1, None, None]
        images = _stroke(_bilinear(flat, side, source[part], rows, cols), amount[part])
        noise = np.random.default_rng([seed, 1, start // CHUNK]).standard_normal(
            images.shape, dtype=np.float32
        )
        out[part] = np.clip(np.rint(images + jitter.noise * noise), 0, 255).astype(np.uint8)
    return out


def make_glyphs(
    *,
    scripts: tuple[str, ...] | None = None,
    instances_per_style: int = 5,
    min_styles: int = 4,
    seed: int = 0,
    image_size: int = 28,
    jitter: JitterConfig = JitterConfig(),
) -> dict:
    """Builds the glyph dataset in memory, deterministically in `seed`.

    Returns a dict of numpy arrays: `image` uint8 [N, S, S, 1], `label` int32 [N] (class id,
    classes ordered by code point), `script` int32 [N], `style` int32 [N] (index into
    `STYLES`), and per class `code_points` int32 [C], `class_script` int32 [C],
    `class_split` ('train'/'test' per class), plus `script_names`. Instances are ordered by
    class, then style, then jitter draw: each class has `instances_per_style` per style
    in which it exists.
    """
    if instances_per_style < 1:
        raise ValueError(f"instances_per_style must be >= 1, got {instances_per_style}")
    scripts = None if scripts is None else check_scripts(scripts)
    classes = glyph_classes(scripts, int(min_styles), int(image_size))
    cls_idx, style_idx = np.nonzero(classes.styles)
    cls_idx = np.repeat(cls_idx, instances_per_style).astype(np.int32)
    style_idx = np.repeat(style_idx, instances_per_style).astype(np.int32)
    flat = classes.masters.reshape(-1, image_size, image_size)
    images = jitter_images(seed, flat, cls_idx * len(STYLES) + style_idx, jitter)
    split = np.array([SCRIPT_SPLIT[classes.script_names[s]] for s in classes.scripts])
    return {
        "image": images[..., None],
        "label": cls_idx,
        "script": classes.scripts[cls_idx],
        "style": style_idx,
        "code_points": np.asarray(classes.code_points),
        "class_script": np.asarray(classes.scripts),
        "class_split": split,
        "script_names": classes.script_names,
    }
