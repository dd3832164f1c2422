"""Your own image-folder dataset (`data=folder data.root=ROOT`, docs/your_dataset.md).

Layout under ROOT (every split holds the same class folders; hidden folders are ignored):

| folder | role |
|---|---|
| `train/<class>/*` | fine-tuning, minus the held-out split carved from it (per class, seeded) |
| `test/<class>/*` (or `val/` when there is no `test/`) | the in-distribution test set (`id`) |
| `val/<class>/*` next to `test/` | the held-out set instead of a carved split (`data.heldout_split=auto` or `val`) |
| any other `<shift>/<class>/*` | a distribution shift, named after its folder |
| `classnames.txt` (optional) | one class name per line, in sorted class-folder order; else folder names, `_` → space |
| `templates.txt` (optional) | one prompt template per line, each with `{}`; else `DEFAULT_TEMPLATES` |

The held-out split (or the choice of val/) is saved in `data.split_file` (beside the runs) with a hash of the file
listing, so every later stage, job and rerun uses the same split, and a changed folder is refused
instead of silently moving images between train and held-out. The three functions at the bottom are
the suite interface that `datasets.train_set` etc. dispatch to.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from datasets import ClassInfo, EvalSet
from datasets.imagenet_folders import ImageFiles, Sample, is_folder
from datasets.imagenet_split import heldout_mask, mask_sha256
from models.atomic import write_text_atomic
from models.errors import UserError

TRAIN, TEST, VAL = "train", "test", "val"
# CLIP's generic prompt ("a photo of a {}.", CLIP §3.1.4) and plain variants; every word is also in the
# tiny CLIP's vocabulary (models/world_tokenizer.py), so the defaults work with model=tiny_clip.
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a picture of a {}.", "an image of the {}.", "a drawing of a {}.")
HELDOUT_SPLITS = ("auto", "seeded", "val")


@dataclasses.dataclass(frozen=True)
class Layout:
    """What ROOT holds: the class folders, the files of each split folder, and which folder plays which role."""

    root: Path
    folders: tuple[str, ...]  # class folders, sorted; label i is folders[i]
    files: dict[str, tuple[Sample, ...]]  # split folder -> (path, label) in sorted order
    id: str  # test, or val when there is no test
    heldout_from: str  # train (a carved split) or val
    shifts: tuple[str, ...]


def image_extensions() -> tuple[str, ...]:
    """torchvision's ImageFolder extensions, imported here: torchvision loads torch._dynamo (~1.5 s per process)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return IMG_EXTENSIONS


def _image_files(folder: Path) -> list[str]:
    extensions = image_extensions()
    return sorted(str(folder / name) for name in os.listdir(folder) if name.lower().endswith(extensions) and not name.startswith("."))


def _subfolders(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if not e.name.startswith(".") and is_folder(e))


def scan(root: str | os.PathLike, heldout_split: str = "auto") -> Layout:
    """Read and check ROOT's layout; every problem is a one-line UserError naming the folder."""
    root = Path(str(root))
    if heldout_split not in HELDOUT_SPLITS:
        raise UserError(f"data.heldout_split: unknown {heldout_split!r}; expected one of {list(HELDOUT_SPLITS)}")
    if not root.is_dir():
        raise UserError(f"data.root: {root}: no such folder; give a folder with train/<class>/ and test/<class>/ (docs/your_dataset.md)")
    splits = _subfolders(root)
    if TRAIN not in splits:
        raise UserError(f"data.root: {root} has no train/ folder; expected train/<class>/*, test/<class>/* (docs/your_dataset.md)")
    if TEST not in splits and VAL not in splits:
        raise UserError(f"data.root: {root} has no test/ (or val/) folder; the in-distribution test set goes there")
    use_val = heldout_split == "val" or (heldout_split == "auto" and TEST in splits and VAL in splits)
    if heldout_split == "val" and not (TEST in splits and VAL in splits):
        raise UserError(f"data.heldout_split=val: {root} needs both val/ (held out) and test/ (the test set)")
    folders = _subfolders(root / TRAIN)
    if not folders:
        raise UserError(f"data.root: {root / TRAIN} has no class folders; expected train/<class>/*")
    files = {}
    for split in splits:
        present = _subfolders(root / split)
        for missing in sorted(set(folders) - set(present)):
            raise UserError(
                f"data.root: class folder {split}/{missing} is missing (train/ has it); every split needs the same class folders"
            )
        for extra in sorted(set(present) - set(folders)):
            raise UserError(f"data.root: class folder {split}/{extra} is not in train/; every split needs the same class folders")
        samples = []
        for label, folder in enumerate(folders):
            images = _image_files(root / split / folder)
            if not images:
                raise UserError(f"data.root: {root / split / folder} holds no images ({', '.join(image_extensions()[:4])}, ...)")
            samples += [(path, label) for path in images]
        files[split] = tuple(samples)
    id_set = TEST if TEST in splits else VAL
    shifts = tuple(s for s in splits if s not in (TRAIN, TEST, VAL))
    return Layout(root, tuple(folders), files, id_set, VAL if use_val else TRAIN, shifts)


def check_images(samples: Sequence[Sample]) -> None:
    """Open every file's header and check its data (PIL verify); the first unreadable one is named."""
    for path, _ in samples:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise UserError(f"data.root: unreadable image {path} ({type(err).__name__}: {err}); remove or replace it") from None


def listing_sha256(layout: Layout) -> str:
    """Identity of the file listing (paths relative to ROOT, labels): a changed folder changes it."""
    digest = hashlib.sha256()
    for split in sorted(layout.files):
        for path, label in layout.files[split]:
            digest.update(f"{os.path.relpath(path, layout.root)}\t{label}\n".encode())
    return digest.hexdigest()[:16]


def per_class_counts(labels: np.ndarray, fraction: float, count: int | None) -> dict[int, int]:
    """Held-out images per class: `count` of each, else round(fraction × class size), at least one;
    every class keeps at least one training image."""
    sizes = np.bincount(labels)
    if count is None and not 0 < fraction < 1:
        raise UserError(f"data.heldout_fraction={fraction}: expected a fraction between 0 and 1 (or set data.heldout_per_class)")
    return {label: int(count) if count is not None else max(1, round(fraction * size)) for label, size in enumerate(sizes)}


def split_settings(data_cfg: Any) -> dict[str, Any]:
    """The held-out draw's settings (conf/data/folder.yaml holds their defaults)."""
    count = data_cfg.heldout_per_class
    return {
        "seed": int(data_cfg.heldout_seed),
        "fraction": float(data_cfg.heldout_fraction),
        "per_class": None if count is None else int(count),
    }


def draw_split(layout: Layout, settings: dict[str, Any]) -> np.ndarray:
    """Boolean mask over train's files: the held-out part (seeded, per class)."""
    labels = np.array([label for _, label in layout.files[TRAIN]])
    counts = per_class_counts(labels, settings["fraction"], settings["per_class"])
    return heldout_mask(labels, counts, settings["seed"])


@functools.lru_cache(maxsize=4)
def _prepared(root: str, heldout_split: str, settings_json: str, split_file: str) -> tuple[Layout, np.ndarray | None, dict[str, str]]:
    layout = scan(root, heldout_split)
    settings = json.loads(settings_json) if layout.heldout_from == TRAIN else {"heldout": VAL}
    listing = listing_sha256(layout)
    path = Path(split_file)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("listing_sha256") != listing or saved.get("settings") != settings:
            raise UserError(
                f"data.split_file: {path} was drawn for another file listing or split settings of {root}; models trained "
                "since may have seen today's held-out images, so use a new name=... (or delete the file to start over)"
            )
        mask = None if saved["heldout_indices"] is None else np.isin(np.arange(len(layout.files[TRAIN])), saved["heldout_indices"])
    else:
        check_images([s for split in sorted(layout.files) for s in layout.files[split]])  # once, before the split is saved
        mask = draw_split(layout, settings) if layout.heldout_from == TRAIN else None
        held = [] if mask is None else [p for (p, _), h in zip(layout.files[TRAIN], mask) if h]
        saved = {
            "root": str(Path(root).resolve()),
            "settings": settings,
            "listing_sha256": listing,
            "split": "folder:val" if mask is None else f"seeded:{settings['seed']}",
            "split_sha256": None if mask is None else mask_sha256(mask),
            "heldout_files": [os.path.relpath(p, root) for p in held],
            "heldout_indices": None if mask is None else np.flatnonzero(mask).tolist(),
        }
        write_text_atomic(path, json.dumps(saved, indent=1))
    provenance = {"split": saved["split"]} | ({"split_sha256": saved["split_sha256"]} if mask is not None else {})
    return layout, mask, provenance


def prepare(data_cfg: Any) -> tuple[Layout, np.ndarray | None, dict[str, str]]:
    """(layout, held-out mask over train or None when val/ serves, the split's provenance for records)."""
    if not data_cfg.get("root"):
        raise UserError("data.root: give the dataset folder, e.g. data.root=/path/to/mydata (docs/your_dataset.md)")
    return _prepared(str(data_cfg.root), str(data_cfg.heldout_split), json.dumps(split_settings(data_cfg)), str(data_cfg.split_file))


def sets_on_disk(data_cfg: Any) -> list[tuple[str, str]]:
    """(name, role) of the held-out, test and shift sets found under data.root (`datasets.set_names` asks here)."""
    layout = prepare(data_cfg)[0]
    return [(data_cfg.heldout, "heldout"), (layout.id, "id")] + [(s, "shift") for s in layout.shifts]


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def class_info(data_cfg: Any) -> ClassInfo:
    layout = prepare(data_cfg)[0]
    names_file, templates_file = layout.root / "classnames.txt", layout.root / "templates.txt"
    classnames = [f.replace("_", " ") for f in layout.folders]
    if names_file.exists():
        classnames = _read_lines(names_file)
        if len(classnames) != len(layout.folders):
            raise UserError(
                f"{names_file}: {len(classnames)} names for {len(layout.folders)} class folders; one line per folder, sorted order"
            )
    templates = list(DEFAULT_TEMPLATES)
    if templates_file.exists():
        templates = _read_lines(templates_file)
        bad = [t for t in templates if "{}" not in t]
        if not templates or bad:
            raise UserError(
                f"{templates_file}: every line must hold {{}} where the class name goes (e.g. 'a photo of a {{}}.'); got {bad[:1]}"
            )
    digest = hashlib.sha256("\n".join(layout.folders).encode()).hexdigest()[:8]
    return ClassInfo(classnames, templates, f"folder:{digest}")


def train_set(data_cfg: Any, transform: Callable) -> Dataset:
    """train/ minus the held-out split (all of train/ when val/ is the held-out set)."""
    layout, mask, _ = prepare(data_cfg)
    samples = layout.files[TRAIN]
    return ImageFiles([s for i, s in enumerate(samples) if mask is None or not mask[i]], transform)


def eval_sets(data_cfg: Any, transform: Callable, names: Sequence[str] | None = None) -> list[EvalSet]:
    """The held-out, test and shift sets in that order (or only `names`)."""
    layout, mask, split = prepare(data_cfg)
    classnames = class_info(data_cfg).classnames
    known = [name for name, _ in sets_on_disk(data_cfg)]
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise UserError(f"data: unknown set(s) {unknown}; {layout.root} has {known}")
    sets = []
    for name, role in sets_on_disk(data_cfg):
        if names is not None and name not in names:
            continue
        if role == "heldout":
            samples = layout.files[VAL] if mask is None else [s for s, held in zip(layout.files[TRAIN], mask) if held]
            sets.append(EvalSet(name, role, ImageFiles(samples, transform), classnames, provenance=split))
        else:
            sets.append(EvalSet(name, role, ImageFiles(layout.files[name], transform), classnames))
    return sets
