"""`init=lp`: train the head alone on frozen image features, before fine-tuning end to end.

Features are computed once with the eval transform (no augmentation), L2-normalised as the classifier
does, and cached; the head is then fitted full-batch with AdamW on cross-entropy, starting from the
zero-shot head. The problem is convex, so the fit is a property of the features, not of the path.
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


def cached_features(cache_dir: Path | None, key: dict, compute) -> tuple[torch.Tensor, torch.Tensor]:
    """`compute()` once per `key` (architecture, weights, data); later calls read the safetensors file."""
    if cache_dir is None:
        return compute()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"features-{digest}.safetensors"
    if path.exists():
        log.info("linear probe: reading cached features %s", path)
        tensors = read_tensors(path)  # fresh 64-byte aligned tensors: the LP fit equals one on fresh features, bit for bit
        return tensors["features"], tensors["labels"]
    features, labels = compute()
    with atomic_path(path) as tmp:
        save_file(
            {"features": features.contiguous(), "labels": labels.contiguous()}, str(tmp), metadata={"key": json.dumps(key, sort_keys=True)}
        )
    return features, labels


def fit_linear_head(
    features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, steps: int, lr: float, weight_decay: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch AdamW on mean cross-entropy of `features @ weight.T + bias`, from the given head."""
    weight = weight.detach().clone().float().requires_grad_(True)
    bias = bias.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(features @ weight.T + bias, labels)
        loss.backward()
        optimizer.step()
    return weight.detach(), bias.detach()
