"""The sets of the embedded world, generated from a seed and cached as uint8 arrays.

Roles follow docs/design.md, "Dataset roles": `corpus` (captioned pretraining pairs, every style), `train` (labelled photos
for fine-tuning), `heldout` (photos, playing ImageNet2p), `photo` (photo test, playing ImageNet val)
and five shifts. Each set is generated in fixed-size chunks, each chunk seeded by (world seed, set,
chunk index), so the pixels do not depend on the number of worker processes.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.world import render
from models.atomic import atomic_path

log = logging.getLogger(__name__)

# World versions: 4 is the digit world (10 classes); 5 the character world (62 classes: digits, upper and
# lower case letters, harder photos, fewer labelled photos per class, 10,000 images per test set).
# Add a version when the generator changes, so stale caches are not reused.
VERSION = 4  # the default (data.version)
CHUNK = 500

# Every style appears in pretraining (CLIP's web data holds sketches and renditions too);
# the labelled fine-tuning data are photos only: broad pretraining, narrow fine-tuning.
# Web alt-text is noisy: some captions never name the object, a few name the wrong one. The corpus
# does the same, so zero-shot accuracy is limited by weak supervision, not only by compute.
CAPTION_OMIT = 0.1
CAPTION_WRONG = 0.0

CORPUS_STYLES = {"photo": 0.3, "photo_v2": 0.15, "sketch": 0.15, "rendition": 0.15, "unusual": 0.15, "hard": 0.1}


@dataclass(frozen=True)
class SetSpec:
    name: str
    styles: dict[str, float]
    set_id: int  # part of the seed; never reuse one, so sets never share a random stream
    noisy_captions: bool = False


SPECS = {
    s.name: s
    for s in [
        SetSpec("corpus", CORPUS_STYLES, 1, noisy_captions=True),
        SetSpec("train", {"photo": 1.0}, 2),
        SetSpec("heldout", {"photo": 1.0}, 3),
        SetSpec("photo", {"photo": 1.0}, 4),
        SetSpec("photo_v2", {"photo_v2": 1.0}, 5),
        SetSpec("rendition", {"rendition": 1.0}, 6),
        SetSpec("sketch", {"sketch": 1.0}, 7),
        SetSpec("unusual", {"unusual": 1.0}, 8),
        SetSpec("hard", {"hard": 1.0}, 9),  # candidates, filtered by the reference classifier
    ]
}

# Images per set at each scale. `demo` is the default; `small` is for tests (a few seconds).
SCALES_V4 = {
    "demo": {
        "corpus": 50_000,
        "train": 10_000,
        "heldout": 5_000,
        "photo": 5_000,
        "photo_v2": 5_000,
        "rendition": 5_000,
        "sketch": 5_000,
        "unusual": 5_000,
        "hard": 5_000,
    },
    "small": {
        "corpus": 2_000,
        "train": 1_000,
        "heldout": 200,
        "photo": 200,
        "photo_v2": 200,
        "rendition": 200,
        "sketch": 200,
        "unusual": 200,
        "hard": 200,
    },
}


# The character world: 80 labelled photos per class for fine-tuning (ImageNet has ~1,280; fewer keep the
# task hard and the demo's sweep short), a held-out split of 50 per class (ImageNet2p has 26), and 10,000
# images per test set (0.1 pp = 10 images).
SCALES_V5 = {
    "demo": {
        "corpus": 60_000,
        "train": 4_960,
        "heldout": 3_100,
        "photo": 10_000,
        "photo_v2": 10_000,
        "rendition": 10_000,
        "sketch": 10_000,
        "unusual": 10_000,
        "hard": 10_000,
    },
    "small": SCALES_V4["small"],
}


@dataclass(frozen=True)
class WorldVersion:
    glyphs: render.Glyphs
    scales: dict[str, dict[str, int]]


VERSIONS = {4: WorldVersion(render.DIGITS, SCALES_V4), 5: WorldVersion(render.CHARACTERS, SCALES_V5)}
SCALES = SCALES_V4  # the scale names, the same in every version


@dataclass
class WorldArrays:
    images: np.ndarray  # N x 32 x 32 x 3 uint8
    labels: np.ndarray  # N int64
    captions: list[str]


def render_chunk(name: str, seed: int, chunk: int, n: int, version: int = VERSION) -> WorldArrays:
    spec, glyphs = SPECS[name], VERSIONS[version].glyphs
    rng = np.random.default_rng(np.random.SeedSequence([seed, spec.set_id, chunk]))
    images, labels, captions = render.render_batch(spec.styles, n, rng, glyphs)
    if spec.noisy_captions:
        captions = [noisy_caption(c, int(y), rng, glyphs) for c, y in zip(captions, labels)]
        if glyphs.caption_colours < 1:  # drawn after the digit world's stream, which stays as it was
            keep = rng.random(len(captions)) < glyphs.caption_colours
            captions = [c if k else render.strip_colours(c) for c, k in zip(captions, keep)]
    return WorldArrays(images, labels, captions)


def noisy_caption(caption: str, label: int, rng: np.random.Generator, g: render.Glyphs = render.DIGITS) -> str:
    """Drop the class name (CAPTION_OMIT) or replace it by another class's (CAPTION_WRONG)."""
    name = f"{g.noun} {g.names[label]}"
    u = rng.random()
    if u < CAPTION_OMIT:
        return caption.replace(name, g.noun)
    if u < CAPTION_OMIT + CAPTION_WRONG:
        other = (label + int(rng.integers(1, g.n))) % g.n
        return caption.replace(name, f"{g.noun} {g.names[other]}")
    return caption


def _chunks(total: int) -> list[tuple[int, int]]:
    return [(i, min(CHUNK, total - i * CHUNK)) for i in range((total + CHUNK - 1) // CHUNK)]


def _concat(parts: list[WorldArrays]) -> WorldArrays:
    return WorldArrays(
        np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]), [c for p in parts for c in p.captions]
    )


# --- the hard set: kept only where a fixed simple classifier errs (as ImageNet-A against ResNet-50) ---


def reference_features(images: np.ndarray) -> np.ndarray:
    """Per pixel, the colour distance from the image's median colour (the glyph stands out whatever its
    polarity), standardised per image, plus a bias column: the input of the reference classifier."""
    pixels = images.astype(np.float64).reshape(len(images), -1, 3)
    distance = np.linalg.norm(pixels - np.median(pixels, axis=1, keepdims=True), axis=2)
    distance -= distance.mean(axis=1, keepdims=True)
    distance /= distance.std(axis=1, keepdims=True) + 1e-6
    return np.concatenate([distance, np.ones((len(images), 1))], axis=1)


def fit_reference(images: np.ndarray, labels: np.ndarray, n_classes: int = 10, ridge: float = 100.0) -> np.ndarray:
    """Ridge regression onto one-hot labels: closed form, so it is the same classifier on every machine.
    On the demo world it scores 85% on the photo test: a fixed, decent model to filter against."""
    x = reference_features(images)
    y = np.eye(n_classes)[labels]
    return np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)


def reference_predict(weights: np.ndarray, images: np.ndarray) -> np.ndarray:
    return (reference_features(images) @ weights).argmax(axis=1)


# --- building and caching -----------------------------------------------------------------------


def cache_dir(root: str | os.PathLike, scale: str, seed: int, version: int = VERSION) -> Path:
    return Path(root) / f"{scale}-seed{seed}-v{version}"


def save_arrays(path: Path, arrays: WorldArrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, images=arrays.images, labels=arrays.labels, captions=np.array(arrays.captions))


def load_arrays(path: Path) -> WorldArrays:
    with np.load(path) as data:
        return WorldArrays(data["images"], data["labels"], [str(c) for c in data["captions"]])


def _map(jobs: list[tuple[str, int, int, int, int]], workers: int) -> list[WorldArrays]:
    if workers <= 1 or len(jobs) <= 1:
        return [render_chunk(*job) for job in jobs]
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(render_chunk, *zip(*jobs)))


def build_set(root: str | os.PathLike, scale: str, seed: int, name: str, workers: int | None = None, version: int = VERSION) -> Path:
    """Generate one set into the cache (skipped when present); the hard set needs the train set first."""
    path = cache_dir(root, scale, seed, version) / f"{name}.npz"
    if version not in VERSIONS or scale not in SCALES or name not in SPECS:
        raise KeyError(f"unknown world version {version!r}, scale {scale!r} or set {name!r}")
    drop_stale(cache_dir(root, scale, seed, version), VERSIONS[version].scales[scale])
    if path.exists():
        return path
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    n = VERSIONS[version].scales[scale][name]
    if name == "hard":
        train = load_arrays(build_set(root, scale, seed, "train", workers, version))
        arrays = build_hard(train, n, seed, workers, version)
    else:
        arrays = _concat(_map([(name, seed, chunk, size, version) for chunk, size in _chunks(n)], workers))
    save_arrays(path, arrays)
    return path


def cached_sizes(folder: Path) -> dict[str, int]:
    """Images per set of the sets cached in `folder` (labels only are read)."""
    sizes = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as data:
            sizes[path.stem] = len(data["labels"])
    return sizes


def drop_stale(folder: Path, spec: dict[str, int]) -> None:
    """Delete a cached world whose set sizes are not this version's (generated by an older release of it):
    every set goes, since the hard set is filtered by a classifier fitted on the train set."""
    done = folder / "DONE"
    recorded = json.loads(done.read_text())["sizes"] if done.exists() else cached_sizes(folder) if folder.is_dir() else {}
    stale = sorted(name for name, n in recorded.items() if spec.get(name) != n)
    if stale:
        log.warning("world cache %s holds sets of other sizes (%s); generating it again", folder, ", ".join(stale))
        for path in [*folder.glob("*.npz"), done]:
            path.unlink(missing_ok=True)


def build_world(root: str | os.PathLike, scale: str = "demo", seed: int = 0, workers: int | None = None, version: int = VERSION) -> Path:
    """Generate every set of the world into `root` (each skipped when cached). Returns the cache folder."""
    folder = cache_dir(root, scale, seed, version)
    if (folder / "DONE").exists():
        return folder
    sizes = {name: len(load_arrays(build_set(root, scale, seed, name, workers, version)).labels) for name in SCALES[scale]}
    with atomic_path(folder / "DONE") as tmp:
        tmp.write_text(json.dumps({"scale": scale, "seed": seed, "version": version, "sizes": sizes}, indent=1))
    return folder


def build_hard(train: WorldArrays, n: int, seed: int, workers: int, version: int = VERSION) -> WorldArrays:
    """Render hard candidates chunk by chunk (in order) and keep those the reference classifier gets wrong."""
    weights = fit_reference(train.images, train.labels, VERSIONS[version].glyphs.n)
    kept: list[WorldArrays] = []
    count, chunk = 0, 0
    while count < n:
        jobs = [("hard", seed, chunk + i, CHUNK, version) for i in range(max(workers, 1) * 2)]
        chunk += len(jobs)
        for part in _map(jobs, workers):
            wrong = reference_predict(weights, part.images) != part.labels
            kept.append(WorldArrays(part.images[wrong], part.labels[wrong], [c for c, w in zip(part.captions, wrong) if w]))
            count += int(wrong.sum())
    hard = _concat(kept)
    return WorldArrays(hard.images[:n], hard.labels[:n], hard.captions[:n])


def load_set(root: str | os.PathLike, scale: str, seed: int, name: str, version: int = VERSION) -> WorldArrays:
    """One set's arrays, generated on first use."""
    return load_arrays(build_set(root, scale, seed, name, version=version))
