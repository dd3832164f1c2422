"""A grid of sample images per world set, for the README (results/world/samples.png)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from datasets.world.sets import VERSION, load_set
from models.atomic import atomic_path

GRID_SETS = ("corpus", "train", "heldout", "photo", "photo_v2", "rendition", "sketch", "unusual", "hard")


def sample_grid(root: str | os.PathLike, scale: str, seed: int, version: int = VERSION, per_set: int = 12, zoom: int = 3) -> Image.Image:
    """One row per set: its first `per_set` images, enlarged `zoom` times, with the set's name on the left."""
    label_width, size = 90, 32 * zoom
    canvas = Image.new("RGB", (label_width + per_set * size, len(GRID_SETS) * (size + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row, name in enumerate(GRID_SETS):
        images = load_set(root, scale, seed, name, version).images[:per_set]
        strip = np.concatenate(list(images), axis=1)
        y = row * (size + 4)
        canvas.paste(Image.fromarray(strip).resize((strip.shape[1] * zoom, size), Image.Resampling.NEAREST), (label_width, y))
        draw.text((4, y + size // 2 - 6), name, fill=(0, 0, 0))
    return canvas


def write_sample_grid(path: str | os.PathLike, root: str | os.PathLike, scale: str, seed: int, version: int = VERSION) -> None:
    with atomic_path(path) as tmp:
        sample_grid(root, scale, seed, version).save(tmp, format="PNG")
