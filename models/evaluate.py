"""Batched inference shared by every stage that scores a model (eval, soups, finetune, plots).

Kept here, not in eval/, because soups (greedy selection) and finetune (held-out accuracy at the end)
need it too, and stages never import each other.

- Each image is decoded and transformed once, whatever the number of models (shared decoding).
- `inference_mode`, several DataLoader workers, and AMP on GPU (`amp="auto"`).
- Under torchrun (an initialised `torch.distributed`), `score_models` gives each rank a contiguous shard
  of the set and all-reduces the counts, so every rank returns the whole set's numbers.
- An unreadable image (a dataset returns `datasets.UnreadableImage`) is an error naming its path, or,
  with `skip_bad_images=True`, is skipped and counted.
- A set's other labellings (`EvalSet.relabellings`: ImageNet-ReaL, multilabel) are scored from the argmax
  predictions of the same pass; no image is decoded twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset, default_collate
from tqdm import tqdm

from models.errors import UserError
from models.sets import EvalSet, RelabelScore, UnreadableImage

log = logging.getLogger(__name__)
_said: set[str] = set()  # notes said once per process (torch would repeat its worker warning for every set)


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask: SLURM's and taskset's limits, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def say_once(key: str, message: str) -> None:
    if key not in _said:
        _said.add(key)
        log.warning(message)


def show_progress(setting: bool | str | None) -> bool:
    """`eval.progress`: auto (a bar when stderr is a terminal, not in a job's log file), true or false."""
    if setting is None or setting == "auto":
        return sys.stderr.isatty()
    return bool(setting)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_amp(setting: bool | str | None, device: torch.device | str) -> bool:
    """`auto` (or None): AMP on CUDA only; CPU stays float32 so results match a float32 reference."""
    if setting is None or setting == "auto":
        return torch.device(device).type == "cuda"
    return bool(setting)


def precision_name(amp: bool | str | None, device: torch.device | str) -> str:
    """The precision an evaluation runs in, as records name it: 'fp16' (autocast) or 'fp32'."""
    return "fp16" if resolve_amp(amp, device) else "fp32"


def collate_readable(batch: list) -> tuple[torch.Tensor | None, torch.Tensor, list[UnreadableImage]]:
    """Stack the readable samples; hand back the unreadable ones separately."""
    bad = [image for image, _ in batch if isinstance(image, UnreadableImage)]
    good = [(image, label) for image, label in batch if not isinstance(image, UnreadableImage)]
    if not good:
        return None, torch.zeros(0, dtype=torch.long), bad
    images, labels = default_collate(good)
    return images, labels, bad


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Contiguous shard `rank` of `world_size` (sizes differ by at most one), so ranks' outputs concatenate in order."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def make_loader(
    eval_set: EvalSet, batch_size: int, workers: int, shard: tuple[int, int] | None = None, batches: Sequence[Sequence[int]] | None = None
) -> DataLoader:
    """Consecutive batches of `batch_size` (of one shard), or the given `batches` of example indices."""
    dataset = eval_set.dataset if shard is None else Subset(eval_set.dataset, shard_range(len(eval_set.dataset), *shard))
    order = {"batch_size": batch_size, "shuffle": False} if batches is None else {"batch_sampler": [[int(i) for i in b] for b in batches]}
    return DataLoader(
        dataset,
        **order,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_readable,
        persistent_workers=False,
    )


def bad_image_error(bad: UnreadableImage) -> UserError:
    return UserError(
        f"{bad.path}: unreadable image ({bad.reason}); replace or remove it, or pass eval.skip_bad_images=true to skip such images"
    )


@torch.inference_mode()
def iter_logits(
    models: Sequence[nn.Module],
    eval_set: EvalSet,
    batch_size: int = 256,
    workers: int = 0,
    device: torch.device | str = "cpu",
    amp: bool | str | None = "auto",
    skip_bad_images: bool = False,
    on_skip: Callable[[UnreadableImage], None] | None = None,
    shard: tuple[int, int] | None = None,
    batches: Sequence[Sequence[int]] | None = None,
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """Per batch: the float32 logits of every model (projected onto the set's classes) and the labels.

    Each image is decoded and transformed once, whatever the number of models. `batches` (lists of
    example indices) replaces the consecutive batches of `batch_size`.
    """
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=torch.float16) if resolve_amp(amp, device) else contextlib.nullcontext()
    if workers > available_cores():
        say_once("workers", f"{workers} DataLoader workers on {available_cores()} cores may run slowly; lower data.workers (said once)")
    with warnings.catch_warnings():  # torch's version of the note above, which it repeats for every set
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        loader = iter(make_loader(eval_set, batch_size, workers, shard, batches))
    for images, labels, bad in loader:
        for item in bad:
            if not skip_bad_images:
                raise bad_image_error(item)
            if on_skip is not None:
                on_skip(item)
        if images is None:
            continue
        images = images.to(device, non_blocking=True)
        if images.dim() == 4:  # NHWC: the convolutions run faster (1.4x on a 2-core CPU for the tiny CLIP); outputs equal to float rounding
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = [model(images) for model in models]
        logits = [x.float() for x in logits]
        if eval_set.project_logits is not None:
            logits = [eval_set.project_logits(x) for x in logits]
        yield [x.cpu() for x in logits], labels


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logits.argmax(dim=-1) == labels).sum())


def accuracies(models: Sequence[nn.Module], eval_set: EvalSet, **loader_kwargs) -> list[tuple[int, int]]:
    """(correct, n) per model on `eval_set`."""
    correct = [0] * len(models)
    n = 0
    for logits, labels in iter_logits(models, eval_set, **loader_kwargs):
        n += len(labels)
        for i, x in enumerate(logits):
            correct[i] += count_correct(x, labels)
    return [(c, n) for c in correct]


@dataclasses.dataclass
class SetScores:
    """One model on one set. Per-class tensors have one entry per class of the set."""

    per_class_correct: torch.Tensor
    per_class_n: torch.Tensor
    skipped: list[str]  # paths of unreadable images that were skipped
    logits: torch.Tensor | None = None  # [n, classes] in set order, when kept
    labels: torch.Tensor | None = None
    relabelled: dict[str, RelabelScore] = dataclasses.field(default_factory=dict)  # relabelling name -> score

    @property
    def correct(self) -> int:
        return int(self.per_class_correct.sum())

    @property
    def n(self) -> int:
        return int(self.per_class_n.sum())

    @property
    def top1(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    def per_class_top1(self) -> list[float | None]:
        """Per-class accuracy; None for a class with no examples in the set."""
        return [(c / n if n else None) for c, n in zip(self.per_class_correct.tolist(), self.per_class_n.tolist())]


def distributed_shard() -> tuple[int, int] | None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def score_models(
    models: Sequence[nn.Module],
    eval_set: EvalSet,
    keep_logits: bool = False,
    logits_dtype: torch.dtype = torch.float16,
    progress: bool = False,
    **loader: Any,
) -> list[SetScores]:
    """Score every model on `eval_set` in one pass over the images (sharded across ranks under torchrun);
    `progress`: a bar on stderr with images/s and the time left (this rank's shard). `loader`: `iter_logits`'s
    batch_size, workers, device, amp and skip_bad_images, with its defaults."""
    num_classes = len(eval_set.classnames)
    shard = distributed_shard()
    per_class_correct = torch.zeros(len(models), num_classes, dtype=torch.long)
    per_class_n = torch.zeros(num_classes, dtype=torch.long)
    skipped: list[str] = []
    kept: list[list[torch.Tensor]] = [[] for _ in models]
    kept_labels: list[torch.Tensor] = []
    keep_predictions = bool(eval_set.relabellings)
    predictions: list[list[torch.Tensor]] = [[] for _ in models]
    batches = iter_logits(models, eval_set, on_skip=lambda bad: skipped.append(bad.path), shard=shard, **loader)
    size = len(eval_set.dataset) if shard is None else len(shard_range(len(eval_set.dataset), *shard))
    label = f"{eval_set.name} ({len(models)} model{'s' if len(models) > 1 else ''})"
    bar = tqdm(total=size, desc=label, unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True, leave=True)
    for logits, labels in batches:
        bar.update(len(labels))
        per_class_n += torch.bincount(labels, minlength=num_classes)
        for i, x in enumerate(logits):
            hits = labels[x.argmax(dim=-1) == labels]
            per_class_correct[i] += torch.bincount(hits, minlength=num_classes)
            if keep_logits:
                kept[i].append(x.to(logits_dtype))
            if keep_predictions:
                predictions[i].append(x.argmax(dim=-1))
        if keep_logits or keep_predictions:
            kept_labels.append(labels)
    bar.close()
    if shard is not None:
        per_class_correct, per_class_n, skipped, kept, kept_labels, predictions = _all_reduce(
            per_class_correct, per_class_n, skipped, kept, kept_labels, keep_logits, predictions
        )
    all_labels = torch.cat(kept_labels) if kept_labels else torch.zeros(0, dtype=torch.long)
    results = []
    for i in range(len(models)):
        logits = torch.cat(kept[i]) if keep_logits and kept[i] else None
        scores = SetScores(per_class_correct[i], per_class_n.clone(), list(skipped), logits, all_labels if keep_logits else None)
        if keep_predictions:
            predicted = torch.cat(predictions[i]) if predictions[i] else torch.zeros(0, dtype=torch.long)
            scored = {r.name: r.score(predicted, all_labels, skipped) for r in eval_set.relabellings}
            scores.relabelled = {name: score for name, score in scored.items() if score is not None}
        results.append(scores)
    return results


def _all_reduce(per_class_correct, per_class_n, skipped, kept, kept_labels, keep_logits, predictions):
    """Sum counts over ranks; gather skipped paths, labels and (if kept) logits and predictions in rank order."""
    dist.all_reduce(per_class_correct, op=dist.ReduceOp.SUM)
    dist.all_reduce(per_class_n, op=dist.ReduceOp.SUM)
    gathered: list = [None] * dist.get_world_size()
    local = (
        skipped,
        [torch.cat(k) if k else None for k in kept] if keep_logits else None,
        torch.cat(kept_labels) if kept_labels else None,
        [torch.cat(p) if p else None for p in predictions],
    )
    dist.all_gather_object(gathered, local)
    skipped = [path for rank_skipped, _, _, _ in gathered for path in rank_skipped]
    if keep_logits:
        kept = [[g[1][i] for g in gathered if g[1] is not None and g[1][i] is not None] for i in range(len(kept))]
    kept_labels = [g[2] for g in gathered if g[2] is not None]
    predictions = [[g[3][i] for g in gathered if g[3][i] is not None] for i in range(len(predictions))]
    return per_class_correct, per_class_n, skipped, kept, kept_labels, predictions
