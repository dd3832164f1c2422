"""Public classification datasets through clip_benchmark's dataset builders (`data=clip_benchmark data.dataset=NAME`).

`clip_benchmark.datasets.builder.build_dataset` reads the dataset under `data.root` (torchvision's layouts), with
the class names and prompt templates clip_benchmark ships for it. This suite never downloads: fetch each dataset on
a machine with network (docs/experiments.md, "Transfer"), or a missing one is one line saying what to fetch.

Roles: `heldout` is a seeded share of the train split (`data.heldout_fraction`, `data.heldout_seed`), fine-tuning
gets the rest; `test` (the `id` role) is the dataset's test split. There are no shifts. The three functions at the
bottom are the suite interface that `datasets.train_set` etc. dispatch to.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from datasets import ClassInfo, EvalSet
from datasets.imagenet_split import mask_sha256
from models.errors import UserError


def fetch_command(name: str, root: str) -> str:
    return f"python -c \"from clip_benchmark.datasets.builder import build_dataset as b; [b('{name}', root='{root}', split=s) for s in ('train', 'test')]\""


def build(data_cfg: Any, split: str, transform: Callable | None) -> Dataset:
    """clip_benchmark's `split` of `data.dataset` under `data.root`, without download; absent: one line saying what to fetch."""
    from clip_benchmark.datasets.builder import build_dataset

    name, root = str(data_cfg.dataset), str(data_cfg.root)
    try:
        return build_dataset(name, root=root, transform=transform, split=split, download=False)
    except ValueError as err:  # clip_benchmark: "Unsupported dataset: ..."
        raise UserError(f"data.dataset: {err}") from None
    except (RuntimeError, OSError, AssertionError):  # torchvision: "Dataset not found or corrupted"
        raise UserError(
            f"data.root: clip_benchmark's {name} ({split} split) is not under {root}; on a machine with network run "
            f"{fetch_command(name, root)} and copy {root} here"
        ) from None


@functools.lru_cache(maxsize=8)
def _heldout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over the train split: a seeded `fraction` of it (at least one image) is held out."""
    if not 0 < fraction < 1:
        raise UserError(f"data.heldout_fraction={fraction}: expected a fraction between 0 and 1")
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: max(1, round(fraction * n))]] = True
    return mask


def _split(data_cfg: Any, transform: Callable | None) -> tuple[Dataset, np.ndarray]:
    train = build(data_cfg, "train", transform)
    return train, _heldout_mask(len(train), float(data_cfg.heldout_fraction), int(data_cfg.heldout_seed))


def class_info(data_cfg: Any) -> ClassInfo:
    test = build(data_cfg, "test", None)
    return ClassInfo(list(test.classes), list(test.templates), f"clip_benchmark:{data_cfg.dataset}")


def train_set(data_cfg: Any, transform: Callable) -> Dataset:
    train, mask = _split(data_cfg, transform)
    return Subset(train, np.flatnonzero(~mask).tolist())


def eval_sets(data_cfg: Any, transform: Callable, names: Sequence[str] | None = None) -> list[EvalSet]:
    classnames = class_info(data_cfg).classnames
    sets = []
    if names is None or data_cfg.heldout in names:
        train, mask = _split(data_cfg, transform)
        split = {"split": f"seeded:{int(data_cfg.heldout_seed)}", "split_sha256": mask_sha256(mask)}
        sets.append(EvalSet(data_cfg.heldout, "heldout", Subset(train, np.flatnonzero(mask).tolist()), classnames, provenance=split))
    if names is None or data_cfg.id in names:
        sets.append(EvalSet(data_cfg.id, "id", build(data_cfg, "test", transform), classnames))
    unknown = [n for n in names or () if n not in (data_cfg.heldout, data_cfg.id)]
    if unknown:
        raise UserError(f"data: unknown set(s) {unknown}; clip_benchmark's {data_cfg.dataset} has {[data_cfg.heldout, data_cfg.id]}")
    return sets
