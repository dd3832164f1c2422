"""The evaluate callbacks soups use: held-out scoring of a state dict, accuracies and logits on the sets.

Built on the shared engine `models.evaluate` (the soups stage never imports the eval stage). One model
skeleton of the ingredients' architecture is built once; states are loaded into it (or into copies of
it, to score several states per decoded batch).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

import datasets
from datasets import EvalSet
from models.checkpoint import CheckpointMeta
from models.errors import UserError
from models.evaluate import SetScores, accuracies, iter_logits, precision_name, score_models
from models.heads import image_tower

log = logging.getLogger(__name__)

EvalSetsFn = Callable[[Any, Callable, Sequence[str] | None], list[EvalSet]]


def selected_set_names(data_cfg: Any, sets: Any) -> list[str]:
    """Set names for `eval.sets`: all | heldout | id | shifts | a list of names (heldout always first)."""
    named = datasets.set_names(data_cfg)
    if isinstance(sets, str):
        roles = {"all": ("heldout", "id", "shift"), "heldout": ("heldout",), "id": ("heldout", "id"), "shifts": ("heldout", "shift")}
        if sets not in roles:
            raise UserError(f"eval.sets: unknown choice {sets!r}; use all, heldout, id, shifts or a list of set names")
        return [name for name, role in named if role in roles[sets]]
    wanted = [str(s) for s in sets]
    unknown = [s for s in wanted if s not in dict(named)]
    if unknown:
        raise UserError(f"eval.sets: unknown set {unknown[0]!r}; the suite has {[name for name, _ in named]}")
    return [data_cfg.heldout] + [s for s in wanted if s != data_cfg.heldout]


class Scorer:
    """Scores state dicts of one architecture on the suite's sets."""

    def __init__(
        self,
        meta: CheckpointMeta,
        data_cfg: Any,
        set_names: Sequence[str],
        device: torch.device,
        loader_kwargs: dict[str, Any],
        eval_sets_fn: EvalSetsFn | None = None,
        relabel_cfg: Any = None,
        head: Mapping[str, torch.Tensor] | None = None,
    ):
        """`head`: across tasks, the one head (head.weight, head.bias) every state is scored with, in place of its own."""
        # Imported here: open_clip adds ~300 MB of RSS, which a plain uniform soup without evaluation never needs.
        from models.classifier import ImageClassifier, clip_for_checkpoint, embed_dim_of

        clip_model, preprocess, _ = clip_for_checkpoint(meta, meta.arch)
        self.model = ImageClassifier(clip_model.visual, embed_dim_of(clip_model), meta.num_classes).to(device).eval()
        self.device = device
        self.head = dict(head) if head is not None else None
        self.loader_kwargs = {**loader_kwargs, "device": device}  # batch_size, workers, amp, ... of models.evaluate.iter_logits
        self.precision = precision_name(loader_kwargs.get("amp", False), device)
        self.sets = (eval_sets_fn or datasets.eval_sets)(data_cfg, preprocess, list(set_names))
        for eval_set in self.sets if relabel_cfg is not None else []:  # ImageNet-ReaL, multilabel (eval.real, eval.multilabel)
            eval_set.relabellings = datasets.relabellings(data_cfg, relabel_cfg, eval_set)
        heldout = [s for s in self.sets if s.role == "heldout"]
        if not heldout:
            raise UserError(f"data: the suite {data_cfg.name!r} has no held-out set; greedy and learned soups select on it")
        self.heldout = heldout[0]
        if len(self.heldout.classnames) != meta.num_classes:
            raise UserError(
                f"ingredients: checkpoints have {meta.num_classes} classes but held-out set {self.heldout.name!r} has {len(self.heldout.classnames)}; "
                "use checkpoints fine-tuned on this suite"
            )

    @property
    def n_heldout(self) -> int:
        return len(self.heldout.dataset)

    def _models_for(self, states: Sequence[Mapping[str, torch.Tensor]]) -> list[nn.Module]:
        models = [self.model] + [copy.deepcopy(self.model) for _ in states[1:]]
        for model, state in zip(models, states):
            model.load_state_dict(state if self.head is None else {**image_tower(state), **self.head}, strict=True)
        return models

    def heldout_outcomes(self, state: Mapping[str, torch.Tensor], chunks: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Per chunk of held-out example indices, each example's outcome (1 right, 0 wrong), lazily, so a
        caller can stop early. A chunk larger than the eval batch is scored in several batches."""
        (model,) = self._models_for([state])
        size = int(self.loader_kwargs.get("batch_size", 256))
        batches = [piece for chunk in chunks for piece in torch.split(chunk, size)]
        kwargs = {key: value for key, value in self.loader_kwargs.items() if key != "batch_size"}
        scored = iter_logits([model], self.heldout, batches=batches, **kwargs)
        for chunk in chunks:
            outcomes = []
            for _ in range(-(-len(chunk) // size)):
                (logits,), labels = next(scored)
                outcomes.append((logits.argmax(dim=-1) == labels).long())
            yield torch.cat(outcomes)

    def accuracies(self, states: Sequence[Mapping[str, torch.Tensor]], eval_set: EvalSet) -> list[tuple[int, int]]:
        """(correct, n) per state on one set, decoding each image once for all states."""
        return accuracies(self._models_for(states), eval_set, **self.loader_kwargs)

    def set_scores(self, states: Sequence[Mapping[str, torch.Tensor]], eval_set: EvalSet, keep_logits: bool = False) -> list[SetScores]:
        """Per state, its counts on one set and its scores under the set's relabellings, from one pass
        (with its float32 logits and the labels when `keep_logits`)."""
        return score_models(self._models_for(states), eval_set, keep_logits=keep_logits, logits_dtype=torch.float32, **self.loader_kwargs)

    def logits(
        self, states: Sequence[Mapping[str, torch.Tensor]], eval_set: EvalSet, skipped: list[str] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per state, its logits over the whole set (in order), and the labels; unreadable images skipped go to `skipped`."""
        per_model: list[list[torch.Tensor]] = [[] for _ in states]
        labels = []
        on_skip = None if skipped is None else (lambda bad: skipped.append(bad.path))
        for logits, batch_labels in iter_logits(self._models_for(states), eval_set, on_skip=on_skip, **self.loader_kwargs):
            for store, x in zip(per_model, logits):
                store.append(x)
            labels.append(batch_labels)
        return [torch.cat(x) for x in per_model], torch.cat(labels)
