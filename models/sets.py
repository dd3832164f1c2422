"""What an evaluation set is, for the code that scores it (models.evaluate) and the suites that build it
(datasets/). Defined here so that `models` never imports `datasets`: dependencies point one way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset


@dataclasses.dataclass(frozen=True)
class RelabelScore:
    """One model's score under another labelling of a set: `top1` is the metric (for most, correct / n)."""

    correct: int
    n: int
    top1: float
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # fields for the record (e.g. excluded images)


class Relabelling(Protocol):
    """Another labelling of an evaluation set (ImageNet-ReaL, multilabel), scored from the predictions of
    the pass that scores the set itself. It knows the set's files in order; `score` gets the argmax
    prediction and original label of every scored image in that order, and the paths of unreadable images
    that were skipped (so not scored). None: no image of the set has a label under it."""

    name: str  # the dataset name of its records, e.g. ImageNetReaL
    role: str  # id_relabel

    def score(self, predictions: torch.Tensor, labels: torch.Tensor, skipped: Sequence[str]) -> RelabelScore | None: ...


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
    relabellings: list[Relabelling] = dataclasses.field(default_factory=list)  # scored from the same pass


@dataclasses.dataclass(frozen=True)
class UnreadableImage:
    """Returned by a dataset in place of an image tensor when a file cannot be decoded.

    Datasets return it instead of raising so that the error reaches the main process as data (a worker's
    exception would arrive wrapped in a traceback): `models.evaluate` then names the path in one line, or
    skips and counts it when `eval.skip_bad_images=true`.
    """

    path: str
    reason: str
