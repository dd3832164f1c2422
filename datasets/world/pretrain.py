"""Pretraining the tiny CLIP on the world's captioned corpus: plain contrastive training (CLIP's loss).

One function, `pretrain`, reads top to bottom: batch, forward both towers, InfoNCE loss, backward,
AdamW step with warmup + cosine schedule. Deterministic on CPU for a fixed seed and thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch

from datasets.world import CLASSNAMES, TEMPLATES, normalised_batch
from datasets.world.sets import WorldArrays
from models.atomic import atomic_path
from models.classifier import zeroshot_head_weight
from models.schedule import warmup_cosine_lr
from models.schemas import PretrainConfig


@dataclass
class PretrainLog:
    losses: list[float] = field(default_factory=list)
    steps_done: int = 0
    seconds: float = 0.0


def random_shift(images: torch.Tensor, max_px: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_px` pixels (edge-replicated): cheap pose augmentation."""
    if max_px <= 0:
        return images
    padded = torch.nn.functional.pad(images, (max_px,) * 4, mode="replicate")
    size = images.shape[-1]
    offsets = torch.randint(0, 2 * max_px + 1, (len(images), 2), generator=generator)
    return torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets.tolist())])


def pretrain(
    model: torch.nn.Module,
    corpus: WorldArrays,
    tokenizer: Callable,
    cfg: PretrainConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> PretrainLog:
    """Train both towers of `model` in place with CLIP's contrastive loss on (image, caption) pairs."""
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    tokens = tokenizer(corpus.captions)
    generator = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    loss_fn = open_clip.ClipLoss()
    log = PretrainLog()
    order = torch.randperm(len(tokens), generator=generator)
    cursor, first = 0, 0
    if cfg.resume_file and Path(cfg.resume_file).exists():  # resume: the same steps as an uninterrupted run
        state = torch.load(cfg.resume_file, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        order, cursor, first = state["order"], int(state["cursor"]), int(state["step"])
        log.losses = [float(x) for x in state["losses"]]
        log.steps_done = first
    start = time.time()
    model.train()
    for step in range(first, cfg.steps):
        if cursor + cfg.batch_size > len(order):  # new epoch, new order
            order, cursor = torch.randperm(len(tokens), generator=generator), 0
        index = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        images = random_shift(normalised_batch(corpus.images[index.numpy()], mean, std), cfg.shift_px, generator)
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        image_features, text_features, logit_scale = model(images, tokens[index])
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP clamps the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        log.losses.append(float(loss.detach()))
        log.steps_done = step + 1
        if on_step:
            on_step(step, log.losses[-1])
        if cfg.resume_file and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_resume_state(cfg.resume_file, model, optimizer, generator, order, cursor, step + 1, log.losses)
        if cfg.time_budget_s and time.time() - start > cfg.time_budget_s:
            break
    log.seconds = time.time() - start
    model.eval()
    return log


def save_resume_state(path: str, model, optimizer, generator, order, cursor: int, step: int, losses: list[float]) -> None:
    """Everything `pretrain` needs to continue from `step` exactly as an uninterrupted run would."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "order": order,
        "cursor": cursor,
        "step": step,
        "losses": torch.tensor(losses, dtype=torch.float64),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


@torch.no_grad()
def zero_shot_accuracy(
    model: torch.nn.Module, tokenizer: Callable, sets: dict[str, WorldArrays], batch_size: int = 500
) -> dict[str, float]:
    """Top-1 of the zero-shot classifier (class names x TEMPLATES) on each set's raw arrays."""
    model.eval()
    head = zeroshot_head_weight(model, tokenizer, list(CLASSNAMES), list(TEMPLATES))
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    result = {}
    for name, data in sets.items():
        correct = 0
        for i in range(0, len(data.labels), batch_size):
            feats = torch.nn.functional.normalize(model.encode_image(normalised_batch(data.images[i : i + batch_size], mean, std)), dim=-1)
            correct += int(((feats @ head.T).argmax(-1).numpy() == data.labels[i : i + batch_size]).sum())
        result[name] = correct / len(data.labels)
    return result


def average(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
