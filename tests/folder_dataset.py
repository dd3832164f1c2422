"""A small image-folder dataset drawn from scratch for the `data=folder` tests (not the world's generator).

Digits in PIL's default font, scaled and placed at random on flat or two-tone backgrounds; the class
folders are the digit words the tiny CLIP knows (models/world_tokenizer.py). A `inverted/` folder (light
digit on dark ground) is a distribution shift.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIZE = 40


def digit_image(digit: int, rng: np.random.Generator, inverted: bool = False) -> Image.Image:
    ground = int(rng.integers(200, 256)), int(rng.integers(200, 256)), int(rng.integers(200, 256))
    ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
    if inverted:
        ground, ink = ink, ground
    image = Image.new("RGB", (SIZE, SIZE), ground)
    font = ImageFont.load_default(size=int(rng.integers(26, 34)))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
    x = (SIZE - (right - left)) / 2 - left + rng.integers(-3, 4)
    y = (SIZE - (bottom - top)) / 2 - top + rng.integers(-3, 4)
    draw.text((x, y), str(digit), fill=ink, font=font)
    return image


def render(root: Path, per_class: dict[str, int], classes: tuple[str, ...] = CLASSES, seed: int = 0) -> Path:
    """root/<split>/<class>/<i>.png with per_class[split] images of each class; `inverted` splits are shifts."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for digit, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                digit_image(digit, rng, inverted=split == "inverted").save(folder / f"{i:03d}.png")
    return root
