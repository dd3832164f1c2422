"""What an evaluation set is, for the code that scores it (models.evaluate) and the suites that build it
(datasets/). Defined here so that `models` never imports `datasets`: dependencies point one way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.utils.data import Dataset


@dataclasses.dataclass
class EvalSet:
    """One evaluation set: its name in results records, its role, and how to score it.

    `dataset` yields `(image_tensor, label)`, labels indexing `classnames`. `project_logits`, when set,
    maps logits over the suite's full class list (e.g. ImageNet's 1000) to this set's classes
    (ImageNet-R/A's 200, ObjectNet's 113); None means the classes are the same.
    """

    name: str
    role: str  # heldout | id | shift
    dataset: Dataset
    classnames: list[str]
    project_logits: Callable[[torch.Tensor], torch.Tensor] | None = None
    # fields every record of this set carries; held-out sets name their split here
    # ({"split": "official" | "seeded:<seed>" | ..., "split_sha256": ...})
    provenance: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class UnreadableImage:
    """Returned by a dataset in place of an image tensor when a file cannot be decoded.

    Datasets return it instead of raising so that the error reaches the main process as data (a worker's
    exception would arrive wrapped in a traceback): `models.evaluate` then names the path in one line, or
    skips and counts it when `eval.skip_bad_images=true`.
    """

    path: str
    reason: str
