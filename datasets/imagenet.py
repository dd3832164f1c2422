"""The ImageNet suite: ImageNet (train/val), the held-out ImageNet2p, and the five distribution shifts.

Same interface as the embedded world (see datasets/__init__.py). Layouts are the public ones, under
`data.root` with the folder names of `data.dirs` (docs/data.md):

| set | layout | labels |
|---|---|---|
| ImageNet train / val | `<wnid>/*.JPEG`, 1000 folders | sorted wnid index |
| ImageNet2p | the held-out part of train | as train |
| ImageNetV2 | `0..999/*.jpeg` | the folder number |
| ImageNetSketch | `<wnid>/*.JPEG`, 1000 folders | sorted wnid index |
| ImageNetR, ImageNetA | `<wnid>/*.jpg`, the official 200 folders each | index among the 200 (sorted); 1000-way logits projected onto them |
| ObjectNet | `images/<folder>/*.png` + `mappings/` | 113 mapped classes; max over mapped logits; 2-px border cropped |

ImageNet val's other labellings (ReaL, multilabel; records `ImageNetReaL`, `ImageNetMultilabel`) are in
datasets/imagenet_relabel.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets import ClassInfo, EvalSet, set_names
from datasets.imagenet_classes import NUM_CLASSES, imagenet_wnids, official_subset_wnids
from datasets.imagenet_folders import ImageFiles, Sample, check_known_folders, folder_samples, layout_error, require_dir, subfolders
from datasets.imagenet_objectnet import BORDER_PX, MaxOverMapped, read_mappings
from datasets.imagenet_split import OFFICIAL_PER_CLASS, heldout_mask, load_official_mask, mask_sha256
from models.errors import UserError

CLASSES_ID = "imagenet1k"
DEFAULT_DIRS = {
    "train": "imagenet/train",
    "val": "imagenet/val",
    "ImageNetV2": "ImageNetV2-matched-frequency",
    "ImageNetSketch": "sketch",
    "ImageNetR": "imagenet-r",
    "ImageNetA": "imagenet-a",
    "ObjectNet": "objectnet-1.0",
}


def class_info(data_cfg: Any) -> ClassInfo:
    import open_clip  # here, not at the top: the miniature's writer (python -m datasets.imagenet_miniature) needs none of it

    return ClassInfo(list(open_clip.IMAGENET_CLASSNAMES), list(open_clip.OPENAI_IMAGENET_TEMPLATES), CLASSES_ID)


def set_dir(data_cfg: Any, key: str) -> Path:
    dirs = {**DEFAULT_DIRS, **dict(data_cfg.get("dirs") or {})}
    return Path(data_cfg.root) / dirs[key]


# --- ImageNet train and the held-out split -----------------------------------------------------------


def wnid_samples(root: Path, set_name: str, what: str) -> list[Sample]:
    """All 1000 wnid folders must be present; labels are sorted-wnid indices."""
    expected = f"{what}: 1000 wnid folders <wnid>/*.JPEG under {root}"
    require_dir(root, set_name, expected)
    wnids = imagenet_wnids()
    check_known_folders(root, subfolders(root), set(wnids), set_name, expected)
    return folder_samples(root, {w: i for i, w in enumerate(wnids)}, set_name, expected)


SPLITS = ("official", "seeded")


def heldout_split(data_cfg: Any) -> tuple[list[Sample], np.ndarray, dict[str, str]]:
    """ImageNet train's samples, the boolean mask of the held-out (ImageNet2p) part, and the split's
    identity for records: `{"split": "official" | "seeded:<seed>", "split_sha256": <mask hash>}`."""
    kind = str(data_cfg.get("heldout_split", "official"))
    if kind not in SPLITS:
        raise UserError(f"data.heldout_split: unknown {kind!r}; expected official (imagenet_98_idxs.npy) or seeded")
    samples = _train_samples(str(set_dir(data_cfg, "train")))
    labels = np.array([label for _, label in samples])
    per_class = int(data_cfg.get("heldout_per_class", OFFICIAL_PER_CLASS))
    if kind == "official":
        index = data_cfg.get("heldout_index")
        if not index:
            raise UserError("data.heldout_index: data.heldout_split=official needs the path of imagenet_98_idxs.npy (docs/data.md)")
        mask = load_official_mask(index, labels, [path for path, _ in samples], per_class)
        name = "official"
    else:
        seed = int(data_cfg.get("heldout_seed", 0))
        mask = heldout_mask(labels, per_class, seed)
        name = f"seeded:{seed}"
    return samples, mask, {"split": name, "split_sha256": mask_sha256(mask)}


@functools.lru_cache(maxsize=2)
def _train_samples(root: str) -> list[Sample]:
    # walking 1.28M files takes a while; train_set and ImageNet2p share one walk
    return wnid_samples(Path(root), "ImageNet train", "ImageNet train")


def train_set(data_cfg: Any, transform: Callable) -> Dataset:
    """ImageNet train minus the held-out split (the official 98%)."""
    samples, mask, _ = heldout_split(data_cfg)
    return ImageFiles([s for s, held in zip(samples, mask) if not held], transform)


# --- the evaluation sets -------------------------------------------------------------------------------


class SelectColumns:
    """Project 1000-way logits onto a subset of classes (ImageNet-R/A). A class, so it pickles."""

    def __init__(self, columns: Sequence[int]):
        self.columns = torch.tensor(list(columns), dtype=torch.long)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.index_select(1, self.columns.to(logits.device))


def imagenet2p(data_cfg: Any, transform: Callable) -> EvalSet:
    """The held-out part of train; its records name the split (official or seeded) and the mask's hash."""
    samples, mask, split = heldout_split(data_cfg)
    dataset = ImageFiles([s for s, held in zip(samples, mask) if held], transform)
    return EvalSet(data_cfg.heldout, "heldout", dataset, class_info(data_cfg).classnames, None, split)


def imagenet_val(data_cfg: Any, transform: Callable) -> tuple[Dataset, list[str], Callable | None]:
    samples = wnid_samples(set_dir(data_cfg, "val"), "ImageNet", "ImageNet val sorted into class folders")
    return ImageFiles(samples, transform), class_info(data_cfg).classnames, None


def imagenet_sketch(data_cfg: Any, transform: Callable) -> tuple[Dataset, list[str], Callable | None]:
    samples = wnid_samples(set_dir(data_cfg, "ImageNetSketch"), "ImageNetSketch", "ImageNet-Sketch")
    return ImageFiles(samples, transform), class_info(data_cfg).classnames, None


def imagenet_v2(data_cfg: Any, transform: Callable) -> tuple[Dataset, list[str], Callable | None]:
    root = set_dir(data_cfg, "ImageNetV2")
    expected = f"ImageNetV2 matched-frequency: folders 0..999 of *.jpeg under {root}"
    require_dir(root, "ImageNetV2", expected)
    check_known_folders(root, subfolders(root), {str(i) for i in range(NUM_CLASSES)}, "ImageNetV2", expected)
    samples = folder_samples(root, {str(i): i for i in range(NUM_CLASSES)}, "ImageNetV2", expected)
    return ImageFiles(samples, transform), class_info(data_cfg).classnames, None


def _subset_200(data_cfg: Any, transform: Callable, set_name: str, what: str) -> tuple[Dataset, list[str], Callable | None]:
    """ImageNet-R and -A: exactly the official 200 wnid folders; logits keep those columns."""
    root = set_dir(data_cfg, set_name)
    expected = f"{what}: 200 wnid folders (the official list) <wnid>/*.jpg under {root}"
    require_dir(root, set_name, expected)
    wnids = imagenet_wnids()
    present = subfolders(root)
    if not present:
        raise layout_error(set_name, expected, f"no wnid folders in {root}")
    official = official_subset_wnids(set_name)
    check_known_folders(root, present, set(official), set_name, expected)
    missing = sorted(official - set(present))
    if missing:  # scoring a subset would silently change the task (a 199-way projection)
        raise layout_error(set_name, expected, f"{len(missing)} of the 200 official wnid folders are missing, e.g. {root / missing[0]}")
    columns = [wnids.index(w) for w in present]  # sorted wnids, so columns ascend like the folders
    samples = folder_samples(root, {w: i for i, w in enumerate(present)}, set_name, expected)
    classnames = [class_info(data_cfg).classnames[c] for c in columns]
    return ImageFiles(samples, transform), classnames, SelectColumns(columns)


def imagenet_r(data_cfg: Any, transform: Callable) -> tuple[Dataset, list[str], Callable | None]:
    return _subset_200(data_cfg, transform, "ImageNetR", "ImageNet-R")


def imagenet_a(data_cfg: Any, transform: Callable) -> tuple[Dataset, list[str], Callable | None]:
    return _subset_200(data_cfg, transform, "ImageNetA", "ImageNet-A")


def objectnet(data_cfg: Any, transform: Callable) -> tuple[Dataset, list[str], Callable | None]:
    root = set_dir(data_cfg, "ObjectNet")
    expected = f"ObjectNet 1.0 under {root}: images/<folder>/*.png and mappings/"
    require_dir(root, "ObjectNet", expected)
    classes = read_mappings(root / "mappings")
    samples = folder_samples(root / "images", {f: i for i, f in enumerate(classes.folders)}, "ObjectNet", expected)
    return ImageFiles(samples, transform, crop_border=BORDER_PX), classes.classnames, MaxOverMapped(classes.imagenet_ids)


BUILDERS: dict[str, Callable[[Any, Callable], tuple[Dataset, list[str], Callable | None]]] = {
    "ImageNet": imagenet_val,
    "ImageNetV2": imagenet_v2,
    "ImageNetSketch": imagenet_sketch,
    "ImageNetR": imagenet_r,
    "ImageNetA": imagenet_a,
    "ObjectNet": objectnet,
}


def relabellings(data_cfg: Any, eval_cfg: Any, eval_set: EvalSet) -> list:
    """ImageNet val's ReaL and multilabel scores (datasets/imagenet_relabel.py)."""
    from datasets.imagenet_relabel import id_relabellings  # imported here: its JSON readers are needed for val only

    return id_relabellings(eval_cfg, eval_set)


def eval_sets(data_cfg: Any, transform: Callable, names: Sequence[str] | None = None) -> list[EvalSet]:
    """The held-out, id and shift sets in that order (or only `names`); layouts are checked per set."""
    roles = dict(set_names(data_cfg))
    names = list(names) if names is not None else list(roles)
    sets = []
    for name in names:
        if name == "ImageNet2p" and roles.get(name) == "heldout":
            sets.append(imagenet2p(data_cfg, transform))
            continue
        if name not in BUILDERS or name not in roles:
            raise UserError(f"eval.sets: unknown ImageNet-suite set {name!r}; expected some of {list(roles)}")
        dataset, classnames, project = BUILDERS[name](data_cfg, transform)
        sets.append(EvalSet(name, roles[name], dataset, classnames, project))
    return sets
