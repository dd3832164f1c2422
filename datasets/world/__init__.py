"""The embedded world: a seeded, procedurally generated image-caption world of glyphs.

Version 4 (the default, `data.version`) draws the ten digits; version 5 draws 62 characters (digits,
upper and lower case letters) with harder photos (datasets/world/sets.py, VERSIONS).

It plays the paper's data in miniature (docs/design.md, "Dataset roles"): a broad captioned pretraining
corpus in every style, labelled photos (train, held-out, test) playing ImageNet, and five shifted
test sets playing ImageNetV2, -R, -Sketch, ObjectNet and ImageNet-A. Generation is deterministic
and cached under `data_cfg.root` (datasets/world/sets.py); the pixels are drawn in render.py.

The three functions below are the suite interface that `datasets.train_set` etc. dispatch to.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from open_clip.transform import MaybeConvertMode, MaybeToTensor
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from datasets import ClassInfo, EvalSet
from datasets.world.render import CLASSNAMES as CLASSNAMES
from datasets.world.render import Glyphs
from datasets.world.sets import SCALES, VERSION, VERSIONS, WorldArrays, load_set
from models.errors import UserError

log = logging.getLogger(__name__)

CLASSES_ID = "world"

# Zero-shot prompt templates (as CLIP's 80 ImageNet templates, they name styles; paper Sec. 2 / CLIP).
TEMPLATES = (
    "a photo of the digit {}.",
    "a photo of a digit {}.",
    "a pencil sketch of the digit {}.",
    "a rendition of the digit {}.",
    "a rotated digit {} in clutter.",
    "a small faint digit {}.",
    "the digit {}.",
)


def templates(g: Glyphs) -> tuple[str, ...]:
    """The prompt templates for a world's glyphs (the digit world's, with its noun)."""
    return tuple(t.replace("digit", g.noun) for t in TEMPLATES)


ROLE_OF = {"heldout": "heldout", "photo": "id"}

# The character world split into classification tasks (`data.task`, the transfer experiment: docs/experiments.md,
# "Transfer"). Three are fine-tuned on; `letters_nz`, both cases of N-Z, is the task none of them sees. It holds
# seven pairs that differ only in size (O/o, S/s, U/u, V/v, W/w, X/x, Z/z), which the foundation reads worst, so
# zero-shot accuracy there has room to move; the fine-tuned tasks hold one case of A-M each.
TASKS = {
    "digits": "0123456789",
    "upper_am": "ABCDEFGHIJKLM",
    "lower_am": "abcdefghijklm",
    "letters_nz": "NOPQRSTUVWXYZnopqrstuvwxyz",
}
EVAL_SET_NAMES = ("heldout", "photo", "photo_v2", "rendition", "sketch", "unusual", "hard")


class WorldDataset(Dataset):
    """Images and labels of one world set; yields `(transform(PIL image), label)`."""

    def __init__(self, arrays: WorldArrays, transform: Callable | None = None):
        self.images = arrays.images
        self.labels = arrays.labels
        self.captions = arrays.captions
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform else image), int(self.labels[index])

    # __getitems__ takes `around` (a context per example, for seeded augmentation; finetune.data.SeededExamples)
    seeds_batched_reads = True

    def __getitems__(self, indices: Sequence[int], around: Callable[[int], Any] | None = None) -> list[tuple[Any, int]]:
        """A batch (the DataLoader asks for one at a time). When the transform ends with a plain evaluation
        transform (an augmentation on the PIL image before it, or nothing), the augmentation runs image by
        image (inside `around(position)`) and the conversion to normalised tensors once for the batch: the
        same tensors as `__getitem__`, without a PIL round trip and a tensor op per image. Any other
        transform, or an augmentation that changes the image's size or mode: image by image."""

        def context(position: int):
            return around(position) if around is not None else contextlib.nullcontext()

        head, stats = split_plain_tail(self.transform, self.images.shape[1:3])
        if stats is not None:
            arrays = []
            for position, i in enumerate(indices):
                image = self.images[int(i)]
                if head is not None:
                    with context(position):
                        augmented = head(Image.fromarray(image))
                    if not isinstance(augmented, Image.Image) or augmented.mode != "RGB" or augmented.size[::-1] != image.shape[:2]:
                        break
                    image = np.asarray(augmented)
                arrays.append(image)
            else:
                batch = normalised_batch(np.stack(arrays), *stats)
                return [(tensor, int(self.labels[i])) for tensor, i in zip(batch, indices)]
        items = []
        for position, i in enumerate(indices):
            with context(position):
                items.append(self[int(i)])
        return items


def split_plain_tail(transform: Callable | None, size: tuple[int, int]) -> tuple[Callable | None, tuple | None]:
    """(augmentation, (mean, std)) when `transform` is a plain evaluation transform (no augmentation) or
    Compose([augmentation, plain evaluation transform]); (None, None) otherwise."""
    stats = plain_normalisation(transform, size)
    if stats is not None:
        return None, stats
    steps = getattr(transform, "transforms", None) if isinstance(transform, transforms.Compose) else None
    if steps and len(steps) == 2:
        stats = plain_normalisation(steps[1], size)
        if stats is not None:
            return steps[0], stats
    return None, None


def plain_normalisation(transform: Callable | None, size: tuple[int, int]) -> tuple[list[float], list[float]] | None:
    """(mean, std) when `transform` only turns an RGB image of `size` (H, W) into a normalised tensor: resizing
    and centre-cropping to the size it has, converting to RGB and to a tensor, then normalising (an open_clip
    evaluation transform at the images' own size). None for anything else (augmentation, another size)."""
    steps = list(getattr(transform, "transforms", None) or [])
    if not steps or type(steps[-1]) is not transforms.Normalize or not isinstance(transform, transforms.Compose):
        return None
    for step in steps[:-1]:
        if type(step) in (transforms.Resize, transforms.CenterCrop):
            wanted = (step.size, step.size) if isinstance(step.size, int) else tuple(step.size) * (2 if len(step.size) == 1 else 1)
            if wanted != tuple(size) or getattr(step, "max_size", None) is not None:
                return None
        elif type(step) is MaybeConvertMode:
            if step.mode != "RGB":
                return None
        elif type(step) not in (MaybeToTensor, transforms.ToTensor):
            return None
    normalize = steps[-1]
    return [float(m) for m in normalize.mean], [float(s) for s in normalize.std]


def world_params(data_cfg: Any) -> tuple[str, str, int, int]:
    """(cache root, scale, world seed, world version) from the data config, checked."""
    scale = str(getattr(data_cfg, "scale", "demo"))
    if scale not in SCALES:
        raise UserError(f"data.scale: unknown world scale {scale!r}; expected one of {sorted(SCALES)}")
    version = getattr(data_cfg, "version", VERSION)
    if version not in VERSIONS:
        raise UserError(f"data.version: unknown world version {version!r}; expected one of {sorted(VERSIONS)}")
    root = getattr(data_cfg, "root", None)
    if not root:
        raise UserError("data.root: the world's cache folder is not set")
    return str(root), scale, int(getattr(data_cfg, "seed", 0)), int(version)


def world_key(data_cfg: Any) -> str:
    """The world's name in file names: `demo-seed0` (version 4), `demo-seed0-v5`."""
    _, scale, seed, version = world_params(data_cfg)
    return f"{scale}-seed{seed}" + ("" if version == VERSION else f"-v{version}")


def glyphs(data_cfg: Any) -> Glyphs:
    return VERSIONS[world_params(data_cfg)[3]].glyphs


def task_classes(data_cfg: Any) -> list[int] | None:
    """The world's class indices of `data.task` (in the world's order), or None for every class."""
    task = getattr(data_cfg, "task", None)
    if task is None:
        return None
    g, version = glyphs(data_cfg), world_params(data_cfg)[3]
    if str(task) not in TASKS or any(c not in g.chars for c in TASKS[str(task)]):
        raise UserError(
            f"data.task: unknown task {task!r} for world version {version}; the character world (data.version=5) has "
            f"{', '.join(TASKS)}, or null for all its classes"
        )
    return sorted(g.chars.index(c) for c in TASKS[str(task)])


def task_subset(arrays: WorldArrays, classes: Sequence[int] | None) -> WorldArrays:
    """The images of `classes` only, labelled by their position in `classes` (pure; None keeps all)."""
    if classes is None:
        return arrays
    position = {c: i for i, c in enumerate(classes)}
    keep = np.flatnonzero(np.isin(arrays.labels, list(classes)))
    labels = np.array([position[int(y)] for y in arrays.labels[keep]], dtype=np.int64)
    return WorldArrays(arrays.images[keep], labels, [arrays.captions[i] for i in keep])


def arrays(data_cfg: Any, name: str) -> WorldArrays:
    """One set's raw uint8 arrays (generated and cached on first use), of `data.task`'s classes."""
    root, scale, seed, version = world_params(data_cfg)
    return task_subset(load_set(root, scale, seed, name, version), task_classes(data_cfg))


def train_set(data_cfg: Any, transform: Callable) -> Dataset:
    """The labelled photos for fine-tuning (disjoint from the held-out split)."""
    return WorldDataset(arrays(data_cfg, "train"), transform)


def train_fingerprint(data_cfg: Any) -> dict[str, int]:
    """The set sizes of this world version and scale: a release that changes them changes the train set."""
    _, scale, _, version = world_params(data_cfg)
    return dict(VERSIONS[version].scales[scale])


def eval_sets(data_cfg: Any, transform: Callable, names: Sequence[str] | None = None) -> list[EvalSet]:
    """The held-out, photo test and shift sets, in the order of the data config (or only `names`)."""
    ordered = [data_cfg.heldout, data_cfg.id, *data_cfg.shifts]
    unknown = [n for n in (names or ordered) if n not in EVAL_SET_NAMES]
    if unknown:
        raise UserError(f"data: unknown world set(s) {unknown}; the world has {list(EVAL_SET_NAMES)}")
    wanted = [n for n in ordered if names is None or n in names] + [n for n in (names or []) if n not in ordered]
    names = class_info(data_cfg).classnames
    split = {"split": f"world:v{world_params(data_cfg)[3]}:{data_cfg.scale}:seed{data_cfg.seed}"}  # generated apart from train
    return [
        EvalSet(
            name,
            ROLE_OF.get(name, "shift"),
            WorldDataset(arrays(data_cfg, name), transform),
            names,
            provenance=split if ROLE_OF.get(name) == "heldout" else {},
        )
        for name in wanted
    ]


def class_info(data_cfg: Any) -> ClassInfo:
    g, version = glyphs(data_cfg), world_params(data_cfg)[3]
    classes_id = CLASSES_ID if version == VERSION else f"{CLASSES_ID}-v{version}"
    classes = task_classes(data_cfg)
    if classes is not None:
        return ClassInfo([g.names[c] for c in classes], list(templates(g)), f"{classes_id}:{data_cfg.task}")
    return ClassInfo(classnames=list(g.names), templates=list(templates(g)), classes_id=classes_id)


def relabellings(data_cfg: Any, eval_cfg: Any, eval_set: EvalSet) -> list:
    """None: the world's photos have one true label each; ReaL and multilabel (ImageNet's) are skipped, saying so."""
    if str(eval_cfg.real).lower() != "false" or eval_cfg.multilabel:
        log.info("ReaL and multilabel: skipped, the embedded world has no relabelled test set (they are ImageNet's)")
    return []


def normalised_batch(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 N x H x W x 3 -> normalised float N x 3 x H x W; equals open_clip's val transform at the images' size."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
