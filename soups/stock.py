"""Model Stock (Jang, Yun and Han, ECCV 2024): per-layer interpolation towards the pretrained init.

For each weight tensor, with task vectors δ_i = θ_i − θ_0 of N fine-tuned models:
    cos θ = mean over pairs i < j of cos(δ_i, δ_j)
    t     = N·cos θ / (1 + (N − 1)·cos θ)                  (paper, Eq. 7 for N models)
    θ     = t·mean_i θ_i + (1 − t)·θ_0
A tensor where some δ_i is zero has no defined angle; as the authors' code (cos = 0 up to ε), it keeps
t = 0, i.e. the init. Non-float tensors must equal the init's.

t is clipped to [0, 1] per tensor: for cos < 0 (task vectors pointing apart, e.g. near-orthogonal
updates with noise) Eq. 7 gives t < 0, an extrapolation away from the fine-tuned models, and at
cos = −1/(N−1) (N = 2: opposite vectors) its denominator is 0. Those tensors keep the init (t = 0);
the stage records how many tensors were clipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from models.errors import UserError
from soups.average import check_equal

log = logging.getLogger(__name__)


def model_stock_ratio(cos: float, n: int) -> tuple[float, bool]:
    """t of Eq. 7 clipped to [0, 1], and whether it was clipped. cos ≤ 0 gives t ≤ 0, hence 0, before the
    division (whose denominator vanishes at cos = −1/(N−1)); t > 1 only from rounding (cos > 1)."""
    if cos <= 0.0:
        return 0.0, cos < 0.0
    t = n * cos / (1.0 + (n - 1) * cos)
    return (1.0, True) if t > 1.0 else (t, False)


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


def model_stock_tensor(init: torch.Tensor, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, float, bool]:
    """The merged tensor, its ratio t and whether t was clipped, from the init and N ≥ 2 fine-tuned tensors."""
    if len(tensors) < 2:
        raise UserError("model_stock: needs at least 2 fine-tuned ingredients")
    t, clipped = model_stock_ratio(average_cosine([x.double() - init.double() for x in tensors]), len(tensors))
    average = torch.stack([x.double() for x in tensors]).mean(dim=0)
    merged = t * average + (1.0 - t) * init.double()
    return merged.to(init.dtype), t, clipped


def besides_init(names: Sequence[str], is_init: Sequence[bool]) -> list[int]:
    """The ingredients Model Stock averages: θ0 given as an ingredient too (the official soups count the LP
    init, model_0, among their 72) would add a zero task vector, so every tensor's cosine would be 0, t = 0
    and the result θ0 itself. It is dropped, with a note; N counts the fine-tuned models only."""
    kept = [i for i, same in enumerate(is_init) if not same]
    for i in (i for i, same in enumerate(is_init) if same):
        log.info("model_stock: %s is θ0 (soup.init); dropped from the ingredients (N counts fine-tuned models only)", names[i])
    if len(kept) < 2:
        raise UserError("model_stock: needs at least 2 fine-tuned ingredients besides θ0 (soup.init)")
    return kept


def model_stock(init: dict[str, torch.Tensor], layers, names: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict[str, float], list[str]]:
    """Merge layer by layer. `layers` yields (key, [tensor of each ingredient]); returns weights, t per key
    and the keys whose t was clipped to [0, 1]."""
    merged, ratios, clipped = {}, {}, []
    for key, tensors in layers:
        if key not in init:
            raise UserError(f"model_stock: key '{key}' of the ingredients is missing from the init checkpoint")
        if not init[key].is_floating_point():
            for name, tensor in zip(names, tensors):
                check_equal(key, init[key], tensor, name)
            merged[key] = init[key].clone()
            continue
        merged[key], ratios[key], was_clipped = model_stock_tensor(init[key], tensors)
        if was_clipped:
            clipped.append(key)
    return merged, ratios, clipped
