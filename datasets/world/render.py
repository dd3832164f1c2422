"""Rendering the embedded world: glyphs in several styles, as 32x32 RGB uint8 images.

Pure functions of a numpy Generator: the same seed gives the same pixels on any machine. Glyphs come
from the fonts that ship with matplotlib (no download). Each *style* is a distribution over fonts,
pose, colours and textures; the sets of the world (datasets/world/sets.py) are mixtures of styles.

Why glyphs: a feasibility probe found that a tiny CLIP learns colour and style but not the shape of
rotated polygons in minutes on a CPU, while digit glyphs rendered from real fonts were learnable.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 32  # output images are SIZE x SIZE x 3
CANVAS = 96  # glyph masks are rendered at this resolution, then warped down to SIZE
GLYPH_PX = 64  # glyph height on the canvas

CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NATO = (
    "alfa bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa quebec romeo sierra "
    "tango uniform victor whiskey xray yankee zulu"
).split()


@dataclass(frozen=True)
class Glyphs:
    """What a world draws: its classes (one character each), the words that name them, and how hard its photos are.

    `keep_x_height` draws every character of a font at one size on one baseline (as type is set), so
    lower case is smaller than upper case and c/C, o/O, s/S stay distinguishable; without it each glyph
    is scaled to the full height (the digit world). `photo_gap` is the least luminance gap between a
    photo's glyph and background colours; `photo_distractors` is the most glyph fragments drawn behind it.
    `caption_colours` is the share of pretraining captions that name colours (`strip_colours` drops them
    from the rest): with 62 classes, captions that always name two colours let the contrastive loss match
    a batch by colour alone, and the class shape is learnt slowly (measured in results/world/README.md).
    """

    chars: str
    names: tuple[str, ...]
    noun: str  # the caption's word before a class name: "a red digit seven", "a red character upper alfa"
    keep_x_height: bool = False
    photo_gap: float = 0.3
    photo_distractors: int = 0
    caption_colours: float = 1.0

    @property
    def n(self) -> int:
        return len(self.chars)


DIGITS = Glyphs("0123456789", tuple(CLASSNAMES), "digit")
# Digits and both cases of the Latin alphabet: O/0/o, l/1/I, S/5/s, Z/2/z, C/c are the fine-grained pairs.
# Letters are named by NATO words ("upper alfa", "lower zulu"): the single letters would clash with the
# article "a" in a word-level tokenizer.
CHARACTERS = Glyphs(
    "0123456789" + "".join(chr(ord("A") + i) for i in range(26)) + "".join(chr(ord("a") + i) for i in range(26)),
    tuple(CLASSNAMES) + tuple(f"upper {w}" for w in NATO) + tuple(f"lower {w}" for w in NATO),
    "character",
    keep_x_height=True,
    photo_gap=0.15,
    photo_distractors=2,
    caption_colours=0.25,
)

# Named colours: the captions name them, so pretraining sees colour words as nuisances to ignore.
COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (230, 200, 40),
    "purple": (130, 50, 160),
    "orange": (235, 130, 30),
    "white": (235, 235, 235),
    "black": (25, 25, 25),
}
COLOUR_NAMES = list(COLOURS)


def strip_colours(caption: str) -> str:
    """The caption without its colour words (and the "in X and Y" that would be left empty)."""
    colour = "|".join(COLOUR_NAMES)
    caption = re.sub(rf" in ({colour}) and ({colour})$", "", caption)
    return re.sub(r" +", " ", re.sub(rf"\b({colour})\b", "", caption)).strip()


FONT_SETS = {
    # ImageNet's "photo": upright sans and serif faces.
    "photo": ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf"],
    # ImageNetV2: a re-sample with other faces of the same families.
    "v2": [
        "DejaVuSans-Oblique.ttf",
        "DejaVuSerif-Italic.ttf",
        "DejaVuSansMono.ttf",
        "DejaVuSansMono-Bold.ttf",
        "DejaVuSans.ttf",
        "DejaVuSerif-Bold.ttf",
    ],
    # ImageNet-R: other typefaces altogether (STIX, Computer Modern).
    "rendition": ["STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf"],
}


def font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.cache
def glyph_mask(font: str, char: str, outline: bool = False, keep_x_height: bool = False) -> np.ndarray:
    """Alpha mask (float32 in [0, 1], CANVAS x CANVAS) of one character.

    By default the glyph's bounding box is scaled to GLYPH_PX high and centred. With `keep_x_height`
    the font size is fixed per font (the box of "Hg", cap top to descender, is GLYPH_PX high) and the
    glyph keeps its place on the baseline: only its horizontal box is centred. `outline` draws only the
    glyph's stroke (the sketch style).
    """
    path = str(font_dir() / font)
    face = ImageFont.truetype(path, size=GLYPH_PX)
    reference = "Hg" if keep_x_height else char
    left, top, right, bottom = face.getbbox(reference)
    scale = GLYPH_PX / max(bottom - top, 1)
    if abs(scale - 1) > 0.05:  # normalise glyph height across fonts
        face = ImageFont.truetype(path, size=max(8, round(GLYPH_PX * scale)))
    ref_top, ref_bottom = face.getbbox(reference)[1::2]
    left, top, right, bottom = face.getbbox(char)
    image = Image.new("L", (CANVAS, CANVAS), 0)
    origin = ((CANVAS - (right - left)) / 2 - left, (CANVAS - (ref_bottom - ref_top)) / 2 - ref_top)
    draw = ImageDraw.Draw(image)
    if outline:
        draw.text(origin, char, font=face, fill=0, stroke_width=3, stroke_fill=255)
    else:
        draw.text(origin, char, font=face, fill=255)
    return np.asarray(image, dtype=np.float32) / 255.0


def mask(g: Glyphs, font: str, label: int, outline: bool = False) -> np.ndarray:
    """The alpha mask of class `label` of `g` in `font`."""
    return glyph_mask(font, g.chars[label], outline, g.keep_x_height)


def warp(mask: np.ndarray, scale: float, angle_deg: float, shear: float, shift: tuple[float, float]) -> np.ndarray:
    """Place a canvas mask into a SIZE x SIZE frame: glyph height `scale` x SIZE, rotated, sheared, shifted."""
    k = scale * SIZE / GLYPH_PX
    t = math.radians(angle_deg)
    rotate = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    forward = k * rotate @ np.array([[1.0, shear], [0.0, 1.0]])  # canvas -> frame, about the centres
    inverse = np.linalg.inv(forward)
    centre_out = np.array([SIZE / 2 + shift[0], SIZE / 2 + shift[1]])
    offset = np.array([CANVAS / 2, CANVAS / 2]) - inverse @ centre_out
    data = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    image = Image.fromarray((mask * 255).astype(np.uint8))
    out = image.transform((SIZE, SIZE), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32) / 255.0


def upright_pose(rng: np.random.Generator, scale_range: tuple[float, float], angle_sd: float, shear_sd: float, shift_sd: float) -> dict:
    """`warp`'s pose for a near-upright glyph: scale uniform in `scale_range`, then angle (degrees), shear and the two shifts
    normal around zero with these deviations, drawn from `rng` in that order (the order fixes the pixels)."""
    scale, angle = rng.uniform(*scale_range), rng.normal(0, angle_sd)
    return {"scale": scale, "angle_deg": angle, "shear": rng.normal(0, shear_sd), "shift": tuple(rng.normal(0, shift_sd, size=2))}


# --- textures: SIZE x SIZE x 3 float arrays in [0, 1] ---------------------------------------------

_GRID = np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="xy"), axis=-1).astype(np.float32)


def smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a cells x cells random grid, bilinearly upsampled."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image)


def stripes(rng: np.random.Generator, period: float) -> np.ndarray:
    angle = rng.uniform(0, math.pi)
    phase = _GRID[..., 0] * math.cos(angle) + _GRID[..., 1] * math.sin(angle)
    return (np.sin(2 * math.pi * phase / period + rng.uniform(0, 2 * math.pi)) > 0).astype(np.float32)


def checks(rng: np.random.Generator, period: int) -> np.ndarray:
    ox, oy = rng.integers(0, period, size=2)
    return (((_GRID[..., 0] + ox) // period + (_GRID[..., 1] + oy) // period) % 2).astype(np.float32)


def dots(rng: np.random.Generator, period: int) -> np.ndarray:
    ox, oy = rng.uniform(0, period, size=2)
    dx = (_GRID[..., 0] + ox) % period - period / 2
    dy = (_GRID[..., 1] + oy) % period - period / 2
    return ((dx**2 + dy**2) < (period / 3.2) ** 2).astype(np.float32)


def jitter_colour(rng: np.random.Generator, name: str, amount: float) -> np.ndarray:
    base = np.array(COLOURS[name], dtype=np.float32) / 255.0
    return np.clip(base + rng.normal(0, amount, size=3), 0, 1).astype(np.float32)


def luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def pick_contrasting(rng: np.random.Generator, against: str, min_gap: float) -> str:
    """A colour name whose luminance differs from `against` by at least `min_gap` (so the glyph is visible)."""
    ref = luminance(np.array(COLOURS[against], dtype=np.float32) / 255.0)
    options = [c for c in COLOUR_NAMES if abs(luminance(np.array(COLOURS[c], dtype=np.float32) / 255.0) - ref) >= min_gap]
    return options[rng.integers(len(options))]


def textured_background(rng: np.random.Generator, colour: str, kind: str, strength: float) -> np.ndarray:
    """A background of one named colour modulated by a texture (`plain`, `noisy`, `striped`, `checked`)."""
    base = jitter_colour(rng, colour, 0.05)
    if kind == "plain":
        pattern = np.zeros((SIZE, SIZE), np.float32)
    elif kind == "noisy":
        pattern = smooth_noise(rng, int(rng.integers(3, 9))) - 0.5
    elif kind == "striped":
        pattern = stripes(rng, rng.uniform(4, 9)) - 0.5
    elif kind == "checked":
        pattern = checks(rng, int(rng.integers(3, 7))) - 0.5
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return np.clip(base[None, None, :] + strength * pattern[..., None], 0, 1)


def composite(background: np.ndarray, foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return background * (1 - alpha[..., None]) + foreground * alpha[..., None]


def to_uint8(image: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    if noise > 0:
        image = image + rng.normal(0, noise, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


# --- styles ----------------------------------------------------------------------------------------


@dataclass
class Sample:
    image: np.ndarray  # SIZE x SIZE x 3 uint8
    label: int
    caption: str


def _choice(rng: np.random.Generator, items: list):
    return items[rng.integers(len(items))]


def render_photo(rng: np.random.Generator, label: int, g: Glyphs = DIGITS, fonts: str = "photo", jitter: float = 1.0) -> Sample:
    """A 'photo': an upright glyph in a solid colour on a textured background of another colour
    (behind it, up to `g.photo_distractors` fragments of other glyphs)."""
    font = _choice(rng, FONT_SETS[fonts])
    bg_name = _choice(rng, COLOUR_NAMES)
    fg_name = pick_contrasting(rng, bg_name, g.photo_gap)
    kind = _choice(rng, ["plain", "noisy", "noisy", "striped"])
    background = textured_background(rng, bg_name, kind, rng.uniform(0.1, 0.3))
    if g.photo_distractors:
        for _ in range(int(rng.integers(0, g.photo_distractors + 1))):
            clutter = jitter_colour(rng, _choice(rng, COLOUR_NAMES), 0.1)
            background = composite(background, clutter[None, None, :], 0.35 * _fragment(rng, _choice(rng, FONT_SETS[fonts]), g))
    alpha = warp(mask(g, font, label), **upright_pose(rng, (0.65, 0.95), 8 * jitter, 0.08 * jitter, 1.5 * jitter))
    image = composite(background, jitter_colour(rng, fg_name, 0.06)[None, None, :], alpha)
    bold = "bold " if "Bold" in font else ""
    caption = f"a photo of a {bold}{fg_name} {g.noun} {g.names[label]} on a {kind} {bg_name} background"
    return Sample(to_uint8(image, rng, 0.03), label, caption)


def render_v2(rng: np.random.Generator, label: int, g: Glyphs = DIGITS) -> Sample:
    """ImageNetV2's analogue: the photo generator with other faces and more jitter."""
    return render_photo(rng, label, g, fonts="v2", jitter=1.6)


def render_sketch(rng: np.random.Generator, label: int, g: Glyphs = DIGITS) -> Sample:
    """An outline drawing in pencil grey on grey paper."""
    font = _choice(rng, FONT_SETS["photo"] + FONT_SETS["v2"][:2])
    paper = 0.75 + 0.15 * rng.random() + 0.06 * (smooth_noise(rng, 16) - 0.5)
    background = np.repeat(paper[..., None], 3, axis=-1)
    alpha = warp(mask(g, font, label, outline=True), **upright_pose(rng, (0.6, 0.95), 10, 0.1, 2))
    pencil = np.full(3, rng.uniform(0.05, 0.35), dtype=np.float32)
    image = composite(background, pencil[None, None, :], alpha * rng.uniform(0.7, 1.0))
    caption = f"a pencil sketch of the {g.noun} {g.names[label]} on grey paper"
    return Sample(to_uint8(image, rng, 0.02), label, caption)


def render_rendition(rng: np.random.Generator, label: int, g: Glyphs = DIGITS) -> Sample:
    """An artistic rendition: other typefaces, the glyph filled with a two-colour pattern."""
    font = _choice(rng, FONT_SETS["rendition"])
    bg_name = _choice(rng, COLOUR_NAMES)
    fg_name = pick_contrasting(rng, bg_name, 0.3)
    second = pick_contrasting(rng, fg_name, 0.15)
    pattern_kind = _choice(rng, ["striped", "checked", "dotted"])
    if pattern_kind == "striped":
        pattern = stripes(rng, rng.uniform(3, 6))
    elif pattern_kind == "checked":
        pattern = checks(rng, int(rng.integers(2, 4)))
    else:
        pattern = dots(rng, int(rng.integers(3, 6)))
    fill = composite(
        np.broadcast_to(jitter_colour(rng, fg_name, 0.05), (SIZE, SIZE, 3)), jitter_colour(rng, second, 0.05)[None, None, :], 0.6 * pattern
    )
    background = textured_background(rng, bg_name, _choice(rng, ["plain", "noisy"]), rng.uniform(0.05, 0.2))
    alpha = warp(mask(g, font, label), **upright_pose(rng, (0.65, 0.95), 10, 0.1, 2))
    image = composite(background, fill, alpha)
    caption = f"a {pattern_kind} rendition of the {g.noun} {g.names[label]} in {fg_name} and {second}"
    return Sample(to_uint8(image, rng, 0.02), label, caption)


def _fragment(rng: np.random.Generator, font: str, g: Glyphs) -> np.ndarray:
    """Part of a random glyph (cut by a half-plane): clutter that is not a whole glyph."""
    glyph = mask(g, font, int(rng.integers(g.n)))
    alpha = warp(glyph, rng.uniform(0.4, 0.8), rng.uniform(-180, 180), 0.0, tuple(rng.uniform(-14, 14, size=2)))  # any angle, no shear
    angle = rng.uniform(0, 2 * math.pi)
    side = (_GRID[..., 0] - SIZE / 2) * math.cos(angle) + (_GRID[..., 1] - SIZE / 2) * math.sin(angle)
    return alpha * (side > rng.uniform(-4, 4))


def render_unusual(rng: np.random.Generator, label: int, g: Glyphs = DIGITS) -> Sample:
    """ObjectNet's analogue: unusual pose (strong rotation and shear), busy background, glyph fragments."""
    font = _choice(rng, FONT_SETS["photo"])
    bg_name = _choice(rng, COLOUR_NAMES)
    fg_name = pick_contrasting(rng, bg_name, 0.3)
    background = textured_background(rng, bg_name, _choice(rng, ["noisy", "striped", "checked"]), rng.uniform(0.15, 0.35))
    for _ in range(int(rng.integers(1, 3))):
        clutter = jitter_colour(rng, _choice(rng, COLOUR_NAMES), 0.1)
        background = composite(background, clutter[None, None, :], 0.45 * _fragment(rng, _choice(rng, FONT_SETS["photo"]), g))
    angle = rng.uniform(35, 100) * (1 if rng.random() < 0.5 else -1)
    alpha = warp(mask(g, font, label), rng.uniform(0.6, 0.85), angle, rng.uniform(-0.35, 0.35), tuple(rng.uniform(-4, 4, size=2)))
    image = composite(background, jitter_colour(rng, fg_name, 0.06)[None, None, :], alpha)
    caption = f"a rotated {fg_name} {g.noun} {g.names[label]} in clutter"
    return Sample(to_uint8(image, rng, 0.03), label, caption)


def render_hard(rng: np.random.Generator, label: int, g: Glyphs = DIGITS) -> Sample:
    """ImageNet-A's candidates: small, low-contrast, partly occluded glyphs (filtered later)."""
    font = _choice(rng, FONT_SETS["photo"] + FONT_SETS["v2"])
    bg_name = _choice(rng, COLOUR_NAMES)
    fg_name = pick_contrasting(rng, bg_name, 0.15)
    background = textured_background(rng, bg_name, _choice(rng, ["noisy", "striped"]), rng.uniform(0.15, 0.3))
    scale, angle_deg, shear = rng.uniform(0.4, 0.65), rng.normal(0, 15), rng.normal(0, 0.15)
    alpha = warp(mask(g, font, label), scale, angle_deg, shear, shift=tuple(rng.uniform(-6, 6, size=2)))
    fg = jitter_colour(rng, fg_name, 0.06)
    image = composite(background, fg[None, None, :], alpha * rng.uniform(0.5, 0.9))
    # an occluding bar across part of the glyph
    x0, y0 = rng.integers(4, SIZE - 8, size=2)
    w, h = (
        (int(rng.integers(3, 7)), int(rng.integers(10, 20))) if rng.random() < 0.5 else (int(rng.integers(10, 20)), int(rng.integers(3, 7)))
    )
    image[y0 : y0 + h, x0 : x0 + w] = jitter_colour(rng, _choice(rng, COLOUR_NAMES), 0.1)
    caption = f"a small faint {fg_name} {g.noun} {g.names[label]} partly hidden"
    return Sample(to_uint8(image, rng, 0.04), label, caption)


STYLES = {
    "photo": render_photo,
    "photo_v2": render_v2,
    "sketch": render_sketch,
    "rendition": render_rendition,
    "unusual": render_unusual,
    "hard": render_hard,
}


def render_batch(
    style_weights: dict[str, float], n: int, rng: np.random.Generator, g: Glyphs = DIGITS
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`n` samples: each picks a style by weight and a uniform label. Returns images, labels, captions."""
    names = list(style_weights)
    probs = np.array([style_weights[s] for s in names], dtype=np.float64)
    probs /= probs.sum()
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    labels = np.empty(n, np.int64)
    captions = []
    for i in range(n):
        style = names[rng.choice(len(names), p=probs)]
        label = int(rng.integers(g.n))
        sample = STYLES[style](rng, label, g)
        images[i], labels[i] = sample.image, label
        captions.append(sample.caption)
    return images, labels, captions
