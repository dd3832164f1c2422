"""Which head scores a checkpoint's image tower on a dataset (`eval.head`; soups across tasks).

- `own`: the checkpoint's own head; the dataset must have its classes.
- `zeroshot`: a zero-shot head for the dataset's class names and templates, built from the *pretrained* text
  tower of the checkpoint's foundation (its recorded `pretrained`, or `model.pretrained` when the user chose a
  model), exactly as `finetune.init=zeroshot` builds the init's head; the text tower is never fine-tuned.
- `auto`: the own head where the checkpoint (or, for a soup across tasks, one of its ingredients) was
  fine-tuned on the dataset's classes, else a zero-shot head.

Every head comes with its provenance (`head`, `text_tower` or `head_from`), which the records carry.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import CheckpointMeta, iter_safetensors, sha256_prefix
from models.errors import UserError
from models.schemas import HEADS

HEAD_KEYS = ("head.weight", "head.bias")
TASK_HEADS = "task_heads"  # a soup across tasks: hparams[TASK_HEADS][classes id] = the ingredients fine-tuned on those classes


def is_head_key(key: str) -> bool:
    return key.startswith("head.")


def image_tower(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without its head: what checkpoints fine-tuned on different tasks share."""
    return {k: v for k, v in state.items() if not is_head_key(k)}


def check_head_choice(choice: str) -> None:
    if choice not in HEADS:
        raise UserError(f"eval.head: unknown head {choice!r}; expected one of {', '.join(HEADS)}")


def foundation_of(meta: CheckpointMeta, source: str | os.PathLike, chosen: str | None = None) -> str:
    """Where the checkpoint's pretrained text tower comes from: `chosen` (model.pretrained the user gave),
    else the foundation the checkpoint records; refused in one line when it cannot be found."""
    from models.factory import looks_like_path  # open_clip loads only when a head is built (a soup need not)

    foundation = chosen or meta.pretrained
    fix = "pass model.pretrained=<the foundation it was fine-tuned from> (a file, or an open_clip tag such as openai)"
    if not foundation:
        raise UserError(f"{source}: records no foundation, so there is no text tower for a zero-shot head; {fix}")
    if looks_like_path(str(foundation)) and not Path(str(foundation)).is_file():
        raise UserError(f"{source}: its foundation {foundation} (the text tower of a zero-shot head) is not found; {fix}")
    return str(foundation)


def text_tower_identity(foundation: str) -> dict[str, str]:
    """What records name the text tower by: the file and its sha256 prefix, or the open_clip tag."""
    if Path(foundation).is_file():
        return {"pretrained": foundation, "sha256": sha256_prefix(foundation)}
    return {"pretrained": foundation}


@functools.lru_cache(maxsize=8)
def _foundation_clip(arch: str, foundation: str, activation: str | None):
    from models.factory import create_clip

    try:
        clip_model, _, tokenizer = create_clip(arch, foundation, activation=activation)
    except RuntimeError as err:  # weights of another architecture: open_clip's load_state_dict names the keys
        line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(
            f"model.pretrained={foundation}: not a foundation of {arch} ({line}); pass the one the checkpoint was fine-tuned from"
        ) from None
    return clip_model, tokenizer


@functools.lru_cache(maxsize=8)
def _zeroshot_weight(arch: str, foundation: str, activation: str | None, classnames: tuple, templates: tuple) -> torch.Tensor:
    """One text-tower pass per foundation and class list, whatever the number of checkpoints scored with it
    (a sweep's 72 checkpoints share one ImageNet head of 1000 classes x 80 templates)."""
    from models.classifier import zeroshot_head_weight

    clip_model, tokenizer = _foundation_clip(arch, foundation, activation)
    return zeroshot_head_weight(clip_model, tokenizer, list(classnames), templates)


def zeroshot_head(meta: CheckpointMeta, info: Any, foundation: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(weight, bias, provenance): the zero-shot head of `info`'s classes from the foundation's text tower
    (models.classifier.zeroshot_head_weight, as finetune.init=zeroshot; bias 0)."""
    # a copy: the cached tensor is shared by every later call, and a caller may change what it gets (a soup's state)
    weight = _zeroshot_weight(meta.arch, foundation, meta.activation, tuple(info.classnames), tuple(info.templates)).clone()
    return weight, torch.zeros(weight.shape[0]), {"head": "zeroshot", "text_tower": text_tower_identity(foundation)}


def mean_head(paths: list[str | os.PathLike]) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean head.weight and head.bias of checkpoints fine-tuned on one task (float32)."""
    heads = [dict(iter_safetensors(path, list(HEAD_KEYS))) for path in paths]
    weight = torch.stack([h["head.weight"].float() for h in heads]).mean(dim=0)
    return weight, torch.stack([h["head.bias"].float() for h in heads]).mean(dim=0)


def task_head(meta: CheckpointMeta, classes_id: str, source: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]] | None:
    """For a soup across tasks: the mean head of its ingredients fine-tuned on `classes_id` (heads are only
    ever averaged within one task), checked against the sha256 the soup recorded; None when it has none."""
    entries = (meta.hparams.get(TASK_HEADS) or {}).get(classes_id)
    if not entries:
        return None
    for entry in entries:
        path = Path(entry["path"])
        if not path.is_file() or not sha256_prefix(path).startswith(entry["sha256"]):
            raise UserError(
                f"{source}: the head of its {classes_id} ingredient {path} is missing or changed since the soup was made; "
                "use eval.head=zeroshot or rebuild the soup"
            )
    weight, bias = mean_head([e["path"] for e in entries])
    return weight, bias, {"head": "ingredient", "head_from": [e["path"] for e in entries]}


def owns_classes(meta: CheckpointMeta, info: Any) -> bool:
    return meta.classes == info.classes_id and meta.num_classes == len(info.classnames)


def head_for(
    meta: CheckpointMeta, info: Any, choice: str, source: str | os.PathLike, chosen_foundation: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]] | None:
    """The head `choice` gives the checkpoint on the dataset `info` describes: None for its own head (kept
    as loaded), else (weight, bias, provenance)."""
    check_head_choice(choice)
    if choice == "own" or (choice == "auto" and owns_classes(meta, info)):
        return None
    if choice == "auto":
        found = task_head(meta, info.classes_id, source)
        if found is not None:
            return found
    return zeroshot_head(meta, info, foundation_of(meta, source, chosen_foundation))
