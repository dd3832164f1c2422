"""Model Stock (Jang, Yun and Han, ECCV 2024): per-layer interpolation towards the pretrained init.

For each weight tensor, with task vectors δ_i = θ_i − θ_0 of N fine-tuned models:
    cos θ = mean over pairs i < j of cos(δ_i, δ_j)
    t     = N·cos θ / (1 + (N − 1)·cos θ)                  (paper, Eq. 7 for N models)
    θ     = t·mean_i θ_i + (1 − t)·θ_0
A tensor where some δ_i is zero has no defined angle; as the authors' code (cos = 0 up to ε), it keeps
t = 0, i.e. the init. Non-float tensors must equal the init's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.errors import UserError
from soups.average import check_equal


def model_stock_ratio(cos: float, n: int) -> float:
    return n * cos / (1.0 + (n - 1) * cos)


def average_cosine(deltas: Sequence[torch.Tensor]) -> float:
    """Mean pairwise cosine between task vectors (float64); 0 if any of them is zero."""
    flat = torch.stack([d.reshape(-1).double() for d in deltas])
    norms = flat.norm(dim=1)
    if bool((norms == 0).any()):
        return 0.0
    unit = flat / norms[:, None]
    gram = unit @ unit.T
    n = len(deltas)
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))


def model_stock_tensor(init: torch.Tensor, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """The merged tensor and its ratio t, from the init and N ≥ 2 fine-tuned tensors."""
    if len(tensors) < 2:
        raise UserError("model_stock: needs at least 2 fine-tuned ingredients")
    t = model_stock_ratio(average_cosine([x.double() - init.double() for x in tensors]), len(tensors))
    average = torch.stack([x.double() for x in tensors]).mean(dim=0)
    merged = t * average + (1.0 - t) * init.double()
    return merged.to(init.dtype), t


def model_stock(init: dict[str, torch.Tensor], layers, names: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Merge layer by layer. `layers` yields (key, [tensor of each ingredient]); returns weights and t per key."""
    merged, ratios = {}, {}
    for key, tensors in layers:
        if key not in init:
            raise UserError(f"model_stock: key '{key}' of the ingredients is missing from the init checkpoint")
        if not init[key].is_floating_point():
            for name, tensor in zip(names, tensors):
                check_equal(key, init[key], tensor, name)
            merged[key] = init[key].clone()
            continue
        merged[key], ratios[key] = model_stock_tensor(init[key], tensors)
    return merged, ratios
