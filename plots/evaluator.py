"""Logits of weight-space combinations Σ c_k θ_k of a few checkpoints, on the eval sets, cached on disk.

Figures 3-5 and the random-subset soups all ask the same question ("what does this combination predict on
that set?"), so it is answered in one place: models are built a chunk at a time and share each decoded batch
(models.evaluate.iter_logits), and every (combination, set) result is cached by the ingredients' hashes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from datasets import EvalSet
from models.atomic import atomic_path
from models.checkpoint import CheckpointMeta, load_checkpoint, sha256_prefix
from models.classifier import ImageClassifier, clip_for_checkpoint, embed_dim_of
from models.errors import UserError
from models.evaluate import count_correct, iter_logits
from soups.average import combine

log = logging.getLogger(__name__)

Combination = tuple[tuple[int, float], ...]  # (checkpoint index, coefficient) pairs


def single(index: int) -> Combination:
    return ((index, 1.0),)


def average(indices: Sequence[int]) -> Combination:
    return tuple((i, 1.0 / len(indices)) for i in indices)


class CombinationEvaluator:
    """Holds the checkpoints' state dicts (CPU) and answers `logits(combination, set)` with caching."""

    def __init__(
        self, paths: Sequence[str | os.PathLike], sets: Sequence[EvalSet], cache_dir: str | os.PathLike, chunk: int = 8, **loader_kwargs
    ):
        if not paths:
            raise UserError("plots: no checkpoints to evaluate; set plots.models (and plots.init)")
        self.paths = [Path(p) for p in paths]
        loaded = [load_checkpoint(p) for p in self.paths]
        self.states = [state for state, _ in loaded]
        metas: list[CheckpointMeta] = [meta for _, meta in loaded]
        for path, meta in zip(self.paths[1:], metas[1:]):
            if (meta.arch, meta.num_classes, meta.activation) != (metas[0].arch, metas[0].num_classes, metas[0].activation):
                raise UserError(
                    f"{path}: arch {meta.arch}/{meta.activation}/{meta.num_classes} classes differs from {self.paths[0]} "
                    f"({metas[0].arch}/{metas[0].activation}/{metas[0].num_classes})"
                )
        self.meta = metas[0]
        self.hashes = [sha256_prefix(p, 16) for p in self.paths]
        self.sets = {s.name: s for s in sets}
        self.cache_dir = Path(cache_dir)
        self.chunk = max(1, int(chunk))
        self.loader_kwargs = loader_kwargs
        clip_model, _, _ = clip_for_checkpoint(self.meta, self.paths[0])
        self._template = ImageClassifier(clip_model.visual, embed_dim_of(clip_model), self.meta.num_classes).eval()
        self.forward_passes = 0  # models × sets actually evaluated (cache misses)

    def _key(self, combination: Combination, set_name: str) -> Path:
        spec = {
            "ingredients": [[self.hashes[i], round(float(c), 12)] for i, c in combination],
            "set": set_name,
            "n": len(self.sets[set_name].dataset),
        }
        return self.cache_dir / f"{hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]}.pt"

    def _build(self, combination: Combination) -> ImageClassifier:
        model = copy.deepcopy(self._template)
        state = combine([self.states[i] for i, _ in combination], [c for _, c in combination])
        model.load_state_dict(state, strict=True)
        return model.to(self.loader_kwargs.get("device", "cpu")).eval()

    def logits(self, combinations: Sequence[Combination], set_name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, labels) per combination on `set_name`; misses are computed a chunk at a time and cached."""
        if set_name not in self.sets:
            raise UserError(f"plots: no evaluation set named {set_name!r}; the data config has {sorted(self.sets)}")
        results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        missing = []
        for i, combination in enumerate(combinations):
            path = self._key(combination, set_name)
            if path.exists():
                cached = torch.load(path, weights_only=True)
                results[i] = (cached["logits"], cached["labels"])
            else:
                missing.append(i)
        for start in range(0, len(missing), self.chunk):
            batch = missing[start : start + self.chunk]
            models = [self._build(combinations[i]) for i in batch]
            parts: list[list[torch.Tensor]] = [[] for _ in batch]
            labels = []
            for logits, batch_labels in iter_logits(models, self.sets[set_name], **self.loader_kwargs):
                for j, x in enumerate(logits):
                    parts[j].append(x)
                labels.append(batch_labels)
            all_labels = torch.cat(labels)
            self.forward_passes += len(batch)
            for j, i in enumerate(batch):
                results[i] = (torch.cat(parts[j]), all_labels)
                path = self._key(combinations[i], set_name)
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    torch.save({"logits": results[i][0], "labels": all_labels}, tmp)
            log.info("evaluated %d combination(s) on %s", len(batch), set_name)
        return [results[i] for i in range(len(combinations))]

    def accuracy(self, combinations: Sequence[Combination], set_name: str) -> list[float]:
        return [count_correct(logits, labels) / len(labels) for logits, labels in self.logits(combinations, set_name)]
