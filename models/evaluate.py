"""Batched inference shared by every stage that scores a model (eval, soups, finetune, plots).

Kept here, not in eval/, because soups (greedy selection) and finetune (held-out accuracy at the end)
need it too, and stages never import each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from datasets import EvalSet


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_loader(eval_set: EvalSet, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(eval_set.dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=torch.cuda.is_available())


@torch.inference_mode()
def iter_logits(
    models: Sequence[nn.Module], eval_set: EvalSet, batch_size: int = 256, workers: int = 0, device: torch.device | str = "cpu"
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """Per batch: the logits of every model (projected onto the set's classes) and the labels.

    Each image is decoded and transformed once, whatever the number of models.
    """
    device = torch.device(device)
    for images, labels in make_loader(eval_set, batch_size, workers):
        images = images.to(device, non_blocking=True)
        logits = [model(images).float() for model in models]
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
