"""The learning-rate schedule of every training loop in the project: fine-tuning and the world's CLIP pretraining."""

from __future__ import annotations

import math


def warmup_cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at optimizer step `step` (0-based), stepped per batch.

    Linear warmup to `base_lr` over `warmup_steps`, then half a cosine down to 0 at `total_steps`.
    This is the official model-soups/WiSE-FT `cosine_lr`: warmup gives base_lr * (step + 1) / warmup,
    the cosine phase 0.5 * (1 + cos(pi * e / es)) * base_lr with e = step - warmup, es = total - warmup.
    """
    warmup_steps = min(warmup_steps, total_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return base_lr
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return 0.5 * (1.0 + math.cos(math.pi * progress)) * base_lr
