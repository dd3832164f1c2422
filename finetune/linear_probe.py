"""`init=lp`: train the head alone on frozen image features, before fine-tuning end to end.

Features are computed once with the eval transform (no augmentation), L2-normalised as the classifier
does, and cached; the head is then fitted full batch by L-BFGS, to convergence, on the L2-penalised
cross-entropy (multinomial logistic regression, as scikit-learn's LogisticRegression solves it),
starting from the zero-shot head. The problem is strictly convex, so the fit is a property of the
features, not of the path: a first-order optimiser with a fixed step budget is not, since the zero-shot
head's rows have the norm of the logit scale (100 for CLIP) and AdamW's steps of lr per coordinate left
it where it started (an LP init below chance where the zero-shot head was; docs/your_dataset.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.atomic import atomic_path
from models.checkpoint import read_tensors

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(
    classifier: nn.Module, dataset: Dataset, batch_size: int, workers: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image features and labels of every example, in dataset order."""
    was_training = classifier.training
    classifier.eval()
    features, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers):
        features.append(classifier.features(images.to(device)).float().cpu())
        labels.append(torch.as_tensor(targets))
    classifier.train(was_training)
    return torch.cat(features), torch.cat(labels)


def cached_tensors(cache_dir: Path | None, kind: str, key: dict, compute) -> dict[str, torch.Tensor]:
    """`compute()` (a dict of tensors) once per `key`; later calls read `cache_dir/<kind>-<digest>.safetensors`."""
    if cache_dir is None:
        return compute()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{kind}-{digest}.safetensors"
    if path.exists():
        log.info("reading cached %s %s", kind, path)
        return read_tensors(path)  # fresh 64-byte aligned tensors: what is computed from them equals the fresh case, bit for bit
    tensors = compute()
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": json.dumps(key, sort_keys=True)})
    return tensors


def cached_features(cache_dir: Path | None, key: dict, compute) -> tuple[torch.Tensor, torch.Tensor]:
    """`compute()` once per `key` (architecture, weights, data); later calls read the safetensors file."""
    tensors = cached_tensors(cache_dir, "features", key, lambda: dict(zip(("features", "labels"), compute())))
    return tensors["features"], tensors["labels"]


def fit_linear_head(
    features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, steps: int, lr: float, weight_decay: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean cross-entropy of `features @ weight.T + bias` + weight_decay/2 · ‖weight‖² (the bias
    unpenalised): scikit-learn's LogisticRegression objective with C = 1 / (weight_decay · n). Full-batch
    L-BFGS with a strong-Wolfe line search from the given head, at most `steps` iterations (`lr`: its
    step length, 1 for the line search's unit step) or until the gradient vanishes."""
    weight = weight.detach().clone().float().requires_grad_(True)
    bias = bias.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=lr, max_iter=steps, tolerance_grad=1e-7, tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe"
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(features @ weight.T + bias, labels) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return weight.detach(), bias.detach()
