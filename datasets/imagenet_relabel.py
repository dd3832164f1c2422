"""Other labellings of ImageNet val, scored from the predictions of the ImageNet pass (docs/data.md).

- **ReaL** (Beyer et al. 2020, "Are we done with ImageNet?"): the label sets timm ships in
  `timm/data/_info/imagenet_real_labels.json` (50,000 lists of class indices in val-file order; 3,163 are
  empty). An image counts as correct when the prediction is in its set; images with an empty set are left
  out, and their number is recorded.
- **Multilabel** (Shankar et al. 2020, "Evaluating machine accuracy on ImageNet"): the annotation file its
  authors publish, `human_accuracy_v3.0.0.json`; `problematic_images` are left out. Two protocols
  (`eval.multilabel_protocol`, named in each record): `tfds` (default) counts a prediction the experts
  marked `correct` or `unclear` and averages the per-class accuracies (classes by the image's ImageNet
  label), as the dataset's TFDS card recommends; `shankar` counts `correct` only and pools the images, as
  the authors' own `human_accuracy.py`.

Both find an image's labels by its official file name, `ILSVRC2012_val_%08d.JPEG`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from datasets.imagenet_classes import imagenet_wnids
from models.errors import UserError
from models.sets import EvalSet, RelabelScore

log = logging.getLogger(__name__)

VAL_SIZE = 50_000
OFFICIAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
OFFICIAL_PATTERN = "ILSVRC2012_val_%08d.JPEG"
ROLE = "id_relabel"
REAL = "ImageNetReaL"
MULTILABEL = "ImageNetMultilabel"
REAL_LABELS_FILE = "timm/data/_info/imagenet_real_labels.json"
MARKS = ("correct", "wrong", "unclear")
# protocol -> (the marks a prediction may have to count, whether the accuracy is the mean of per-class accuracies)
PROTOCOLS = {"tfds": (("correct", "unclear"), True), "shankar": (("correct",), False)}


def official_index(path: str) -> int | None:
    """The 0-based val index of an official file name (`ILSVRC2012_val_00000001.JPEG` -> 0), else None."""
    match = OFFICIAL_NAME.fullmatch(os.path.basename(path))
    number = int(match.group(1)) if match else 0
    return number - 1 if 1 <= number <= VAL_SIZE else None


def first_unofficial(paths: Iterable[str]) -> str | None:
    return next((path for path in paths if official_index(path) is None), None)


# --- ReaL ----------------------------------------------------------------------------------------------


@functools.cache
def real_labels() -> tuple[frozenset[int], ...]:
    """timm's ReaL label sets, one per val image in file order."""
    labels = json.loads((resources.files("timm.data") / "_info" / "imagenet_real_labels.json").read_text())
    assert len(labels) == VAL_SIZE, f"{REAL_LABELS_FILE}: {len(labels)} entries, expected {VAL_SIZE}"
    return tuple(frozenset(int(c) for c in entry) for entry in labels)


def real_accuracy(predictions: Sequence[int], indices: Sequence[int], labels: Sequence[Collection[int]]) -> tuple[int, int, int]:
    """(correct, scored, excluded): image `indices[k]` predicted `predictions[k]`; empty label sets are excluded."""
    correct = scored = excluded = 0
    for predicted, index in zip(predictions, indices, strict=True):
        accepted = labels[index]
        if not accepted:
            excluded += 1
            continue
        scored += 1
        correct += int(predicted) in accepted
    return correct, scored, excluded


def kept_paths(paths: Sequence[str], skipped: Collection[str]) -> list[str]:
    """The set's files that were scored, in order (unreadable files skipped by the pass left out)."""
    skipped = set(skipped)
    return [path for path in paths if path not in skipped]


class RealAccuracy:
    """ReaL accuracy of the ImageNet val files `paths` (official names, checked by the caller)."""

    name = REAL
    role = ROLE

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def score(self, predictions: torch.Tensor, labels: torch.Tensor, skipped: Sequence[str]) -> RelabelScore | None:
        indices = [official_index(path) for path in kept_paths(self.paths, skipped)]
        correct, scored, excluded = real_accuracy(predictions.tolist(), indices, real_labels())
        if not scored:
            return None
        return RelabelScore(correct, scored, correct / scored, {"excluded_empty": excluded, "labels": REAL_LABELS_FILE})


# --- multilabel (Shankar et al. 2020) ----------------------------------------------------------------------


def multilabel_error(path: Path, problem: str) -> UserError:
    return UserError(
        f"eval.multilabel={path}: {problem}; expected the multilabel annotations of Shankar et al. 2020 "
        "(human_accuracy_v3.0.0.json: initial_annots, problematic_images; see docs/data.md)"
    )


@functools.cache
def read_multilabel(path: str, accepted_marks: tuple[str, ...] = PROTOCOLS["tfds"][0]) -> tuple[dict[str, frozenset[int]], frozenset[str]]:
    """(val file name -> classes with one of `accepted_marks`, problematic file names) from the authors' JSON.

    Entries of other sets (ImageNetV2 images are annotated in the same file) are ignored.
    """
    file = Path(path)
    if not file.is_file():
        raise multilabel_error(file, "file not found")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise multilabel_error(file, f"not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("initial_annots"), dict):
        raise multilabel_error(file, "no 'initial_annots' object")
    problematic = data.get("problematic_images")
    if not isinstance(problematic, dict | list):
        raise multilabel_error(file, "no 'problematic_images' object or list")
    class_of = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    accepted: dict[str, frozenset[int]] = {}
    for name, marks in data["initial_annots"].items():
        if not OFFICIAL_NAME.fullmatch(name):
            continue
        if not isinstance(marks, Mapping) or set(marks) - set(MARKS):
            raise multilabel_error(file, f"initial_annots[{name!r}] is not an object with keys among {list(MARKS)}")
        for mark, wnids in marks.items():
            unknown = [w for w in wnids if w not in class_of] if isinstance(wnids, list) else [wnids]
            if unknown:
                raise multilabel_error(file, f"initial_annots[{name!r}][{mark!r}]: {unknown[0]!r} is not an ImageNet-1k wnid")
        accepted[name] = frozenset(class_of[w] for mark in accepted_marks for w in marks.get(mark, []))
    if not accepted:
        raise multilabel_error(file, f"no annotated ImageNet val image ({OFFICIAL_PATTERN}) in initial_annots")
    return accepted, frozenset(problematic)


def multilabel_accuracy(
    predictions: Sequence[int],
    names: Sequence[str],
    labels: Sequence[int],
    accepted: Mapping[str, Collection[int]],
    problematic: Collection[str],
    per_class: bool = True,
) -> dict[str, Any]:
    """Per class (the image's ImageNet label) the fraction of annotated, unproblematic images whose prediction
    is accepted; `top1` is the mean over the classes that have such images (`per_class`, the TFDS protocol)
    or the plain fraction of those images (the authors' protocol)."""
    correct: dict[int, int] = {}
    seen: dict[int, int] = {}
    excluded = 0
    for predicted, name, label in zip(predictions, names, labels, strict=True):
        if name not in accepted:
            continue
        if name in problematic:
            excluded += 1
            continue
        seen[int(label)] = seen.get(int(label), 0) + 1
        correct[int(label)] = correct.get(int(label), 0) + (int(predicted) in accepted[name])
    class_accuracy = [correct[c] / seen[c] for c in sorted(seen)]
    return {
        "correct": sum(correct.values()),
        "n": sum(seen.values()),
        "top1": (sum(class_accuracy) / len(class_accuracy) if per_class else sum(correct.values()) / sum(seen.values()))
        if class_accuracy
        else float("nan"),
        "classes": len(class_accuracy),
        "excluded_problematic": excluded,
    }


class MultilabelAccuracy:
    """Multilabel accuracy of the ImageNet val files `paths` under the annotation file `source`."""

    name = MULTILABEL
    role = ROLE

    def __init__(self, paths: Sequence[str], source: str, protocol: str = "tfds"):
        self.paths = list(paths)
        self.source, self.protocol = source, protocol
        marks, self.per_class = PROTOCOLS[protocol]
        self.accepted, self.problematic = read_multilabel(source, marks)

    def score(self, predictions: torch.Tensor, labels: torch.Tensor, skipped: Sequence[str]) -> RelabelScore | None:
        names = [os.path.basename(path) for path in kept_paths(self.paths, skipped)]
        result = multilabel_accuracy(predictions.tolist(), names, labels.tolist(), self.accepted, self.problematic, self.per_class)
        if not result["n"]:
            return None
        extra = {
            "pooled_top1": result["correct"] / result["n"],
            "classes_scored": result["classes"],
            "excluded_problematic": result["excluded_problematic"],
            "annotations": self.source,
            "protocol": self.protocol,
        }
        return RelabelScore(result["correct"], result["n"], result["top1"], extra)


# --- which of them a run computes ---------------------------------------------------------------------------


def id_relabellings(eval_cfg: Any, eval_set: EvalSet) -> list:
    """ReaL and multilabel for ImageNet val as `eval.real` (auto | true | false) and `eval.multilabel` ask.

    `auto` computes ReaL when every val file has its official name and says once why not otherwise; `true`
    makes a val folder with other names an error. Without `eval.multilabel`, the run says once that the
    multilabel column is left out.
    """
    real = str(eval_cfg.real).lower()
    if real not in ("auto", "true", "false"):
        raise UserError(f"eval.real={real}: expected auto, true or false")
    paths = [path for path, _ in eval_set.dataset.samples]
    unofficial = first_unofficial(paths)
    relabellings: list = []
    if real != "false":
        if unofficial is None:
            relabellings.append(RealAccuracy(paths))
        elif real == "true":
            raise UserError(
                f"eval.real=true: ReaL labels are matched by the official val file names ({OFFICIAL_PATTERN}), "
                f"but {unofficial} is not one; keep the official names or pass eval.real=false"
            )
        else:
            log.info("ReaL: skipped, the val files do not all have official names (%s, e.g. %s)", OFFICIAL_PATTERN, unofficial)
    multilabel = eval_cfg.multilabel
    protocol = str(eval_cfg.multilabel_protocol)
    if protocol not in PROTOCOLS:
        raise UserError(f"eval.multilabel_protocol={protocol}: expected {' or '.join(PROTOCOLS)}")
    if multilabel:
        if unofficial is not None:
            raise UserError(
                f"eval.multilabel: annotations are matched by the official val file names ({OFFICIAL_PATTERN}), "
                f"but {unofficial} is not one; keep the official names or drop eval.multilabel"
            )
        relabellings.append(MultilabelAccuracy(paths, str(multilabel), protocol))
    else:
        log.info("multilabel: no annotation file (eval.multilabel); the multilabel column is left out (docs/data.md)")
    return relabellings
