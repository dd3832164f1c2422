"""The held-out split of ImageNet train ("ImageNet2p"): greedy and learned soups select on it (paper §3).

The official split (`imagenet_98_idxs.npy`) marks 26 images per class with 1, indexed over ImageNet
train in torchvision ImageFolder order; fine-tuning uses the complement. Without the file we draw our own
deterministic split: `per_class` images of each class, chosen by a seeded generator over that order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.errors import UserError

OFFICIAL_PER_CLASS = 26


def heldout_mask(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Boolean mask over samples: `per_class` of each class's samples, the same for the same inputs."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) <= per_class:
            raise UserError(f"data.heldout_per_class={per_class}: class {label} has only {len(members)} training images; lower it")
        mask[rng.choice(members, size=per_class, replace=False)] = True
    return mask


def load_official_mask(path: str | Path, num_samples: int) -> np.ndarray:
    """The official `imagenet_98_idxs.npy` as a boolean held-out mask (1 = held out)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.heldout_index: file not found: {path}")
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
    return values.astype(bool)
