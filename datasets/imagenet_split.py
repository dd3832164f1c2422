"""The held-out split of ImageNet train ("ImageNet2p"): greedy and learned soups select on it (paper §3).

The official split (`imagenet_98_idxs.npy`, from the official model-soups repository) marks 26 images per
class with 1, indexed over ImageNet train in torchvision ImageFolder order; fine-tuning uses the
complement. The 72 released checkpoints were fine-tuned on that complement, so any other split puts their
training images in the held-out set. `data.heldout_split=seeded` draws our own deterministic split
instead (`per_class` images of each class, chosen by a seeded generator over that order), for models of
one's own sweep.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from models.errors import UserError

OFFICIAL_PER_CLASS = 26
IMAGENET_TRAIN_SIZE = 1_281_167
# The official code asserts that held-out image 1000 is this file, so that the ImageFolder order (and so
# the split) is the same on every machine (model-soups utils.py, test_model_on_dataset).
OFFICIAL_SENTINEL = (1000, "n01675722_4108.JPEG")


def mask_sha256(mask: np.ndarray) -> str:
    """The split's identity in records: sha256 prefix of the boolean mask's bytes."""
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=bool).tobytes()).hexdigest()[:16]


def heldout_mask(labels: np.ndarray, per_class: int | Mapping[int, int], seed: int) -> np.ndarray:
    """Boolean mask over samples: `per_class` of each class's samples (a count, or one count per label),
    the same for the same inputs."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = per_class[int(label)] if isinstance(per_class, Mapping) else per_class
        if len(members) <= count:
            raise UserError(f"data.heldout_per_class={count}: class {label} has only {len(members)} training images; lower it")
        mask[rng.choice(members, size=count, replace=False)] = True
    return mask


def load_official_mask(path: str | Path, labels: np.ndarray, paths: Sequence[str], per_class: int = OFFICIAL_PER_CLASS) -> np.ndarray:
    """The official `imagenet_98_idxs.npy` as a boolean held-out mask (1 = held out), checked as the
    official code checks it: one entry per train image, `per_class` held out in every class, and on the
    full ImageNet train set held-out image 1000 is `n01675722_4108.JPEG`."""
    path = Path(path)
    num_samples = len(labels)
    if not path.is_file():
        raise UserError(
            f"data.heldout_index: file not found: {path}; get imagenet_98_idxs.npy from the official model-soups "
            "repository (docs/data.md), or set data.heldout_split=seeded for a sweep of your own"
        )
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UserError(f"data.heldout_index: {path} is not a numpy .npy array ({err})") from None
    if values.ndim != 1 or len(values) != num_samples:
        raise UserError(
            f"data.heldout_index: {path} has shape {values.shape} but ImageNet train has {num_samples} images; "
            "the file indexes the full train set in sorted folder order"
        )
    if not np.isin(values, (0, 1)).all():
        raise UserError(f"data.heldout_index: {path} must hold only 0 and 1")
    mask = values.astype(bool)
    counts = np.bincount(np.asarray(labels)[mask], minlength=int(np.max(labels)) + 1)
    if not (counts == per_class).all():
        bad = int(np.flatnonzero(counts != per_class)[0])
        raise UserError(
            f"data.heldout_index: {path} holds {counts[bad]} images of class {bad} out, expected {per_class} per class "
            "(data.heldout_per_class); it is not the official split"
        )
    index, name = OFFICIAL_SENTINEL
    if num_samples == IMAGENET_TRAIN_SIZE and not str(paths[np.flatnonzero(mask)[index]]).endswith(name):
        raise UserError(
            f"data.heldout_index: held-out image {index} is {paths[np.flatnonzero(mask)[index]]}, not {name}: "
            "the train folder's order differs from the official one"
        )
    return mask
