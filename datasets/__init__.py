"""Dataset loaders: the embedded world, ImageNet and its held-out split, and the five shifts;
any image-folder dataset (`datasets.folder`).

Every stage reaches data through the three functions below, given the `data` config group
(conf/data/*.yaml) and an image transform (the model's own open_clip val or train transform):

- `train_set(data_cfg, transform)`: the fine-tuning split (train minus the held-out split).
- `eval_sets(data_cfg, transform, names=None)`: the held-out, id and shift sets as `EvalSet`s.
- `class_info(data_cfg)`: class names and prompt templates, for zero-shot heads.
- `relabellings(data_cfg, eval_cfg, eval_set)`: other labellings of the id set, scored from the same
  forward pass (ImageNet: ReaL, multilabel); the embedded world has none and says so.

Each suite lives in its own module (`datasets.world`, `datasets.imagenet`) that provides the same
three functions; this module only dispatches on `data_cfg.name`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset

from models.checkpoint import CheckpointMeta, is_official_release
from models.errors import UserError
from models.sets import EvalSet, Relabelling, RelabelScore, UnreadableImage  # noqa: F401 - defined with the runtime that scores them; re-exported

SUITES = {"world": "datasets.world", "imagenet": "datasets.imagenet", "folder": "datasets.folder", "clip_benchmark": "datasets.clip_bench"}


@dataclasses.dataclass
class ClassInfo:
    classnames: list[str]
    templates: Sequence[Callable[[str], str]] | Sequence[str]
    classes_id: str  # e.g. "imagenet1k"; checkpoints record it, eval checks it


def _suite(data_cfg: Any):
    name = data_cfg.name
    if name not in SUITES:
        raise UserError(f"data.name: unknown dataset suite {name!r}; expected one of {sorted(SUITES)}")
    return importlib.import_module(SUITES[name])


def train_set(data_cfg: Any, transform: Callable) -> Dataset:
    return _suite(data_cfg).train_set(data_cfg, transform)


def train_fingerprint(data_cfg: Any) -> Any:
    """What identifies the training split's contents beyond the data config (the embedded world: its set
    sizes), for caches keyed on it (the LP features); None where the config says it all."""
    suite = _suite(data_cfg)
    return suite.train_fingerprint(data_cfg) if hasattr(suite, "train_fingerprint") else None


def eval_sets(data_cfg: Any, transform: Callable, names: Sequence[str] | None = None) -> list[EvalSet]:
    """The suite's sets in the order heldout, id, shifts (or only `names`)."""
    return _suite(data_cfg).eval_sets(data_cfg, transform, names)


def class_info(data_cfg: Any) -> ClassInfo:
    return _suite(data_cfg).class_info(data_cfg)


def relabellings(data_cfg: Any, eval_cfg: Any, eval_set: EvalSet) -> list[Relabelling]:
    """The other labellings of `eval_set` that `eval_cfg` asks for (only the id set has any)."""
    suite = _suite(data_cfg)
    if eval_set.role != "id" or not hasattr(suite, "relabellings"):  # a folder of your own has no other labels
        return []
    return suite.relabellings(data_cfg, eval_cfg, eval_set)


def set_names(data_cfg: Any) -> list[tuple[str, str]]:
    """(name, role) of every evaluation set of the suite, in the order heldout, id, shifts."""
    suite = _suite(data_cfg)
    if hasattr(suite, "sets_on_disk"):  # a suite whose sets are found on disk (datasets.folder)
        return suite.sets_on_disk(data_cfg)
    return [(data_cfg.heldout, "heldout"), (data_cfg.id, "id")] + [(s, "shift") for s in data_cfg.shifts]


def check_heldout_split(data_cfg: Any, checkpoints: Sequence[tuple[str, CheckpointMeta]], eval_sets_fn: Callable | None = None) -> None:
    """Refuse to score official model-soups checkpoints on a held-out split other than the official one:
    they were fine-tuned on ImageNet train minus that split, so any other split holds their training images."""
    official = [source for source, meta in checkpoints if is_official_release(meta)]
    if not official or data_cfg.name != "imagenet":  # the overlap is with ImageNet train; other suites hold no such images
        return
    (heldout,) = (eval_sets_fn or eval_sets)(data_cfg, None, [data_cfg.heldout])
    split = heldout.provenance.get("split")
    if split != "official":
        raise UserError(
            f"{official[0]}: official model-soups checkpoints were trained on ImageNet train minus the official held-out split, "
            f"so held-out split {split!r} contains their training images; use data.heldout_split=official with "
            "data.heldout_index=imagenet_98_idxs.npy (docs/data.md)"
        )
