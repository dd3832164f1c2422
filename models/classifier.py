"""The classifier every stage shares: an open_clip image tower plus a linear head.

The head sits on L2-normalised image features, as the official code's `ModelWrapper(normalize=True)`.
State-dict keys are `visual.*` (the open_clip image tower) and `head.weight`, `head.bias`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import CheckpointMeta, load_checkpoint
from models.errors import UserError
from models.factory import activation_of, create_clip


class ImageClassifier(nn.Module):
    def __init__(self, visual: nn.Module, embed_dim: int, num_classes: int):
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def embed_dim_of(clip_model: nn.Module) -> int:
    return int(clip_model.visual.output_dim)


def classifier_from_clip(clip_model: nn.Module, head_weight: torch.Tensor | None = None, num_classes: int | None = None) -> ImageClassifier:
    """Wrap `clip_model.visual`; the head is `head_weight` (bias 0) or zeros of `num_classes` rows."""
    if head_weight is None and num_classes is None:
        raise ValueError("give head_weight or num_classes")
    rows = head_weight.shape[0] if head_weight is not None else num_classes
    classifier = ImageClassifier(clip_model.visual, embed_dim_of(clip_model), rows)
    with torch.no_grad():
        classifier.head.bias.zero_()
        if head_weight is None:
            classifier.head.weight.zero_()
        else:
            classifier.head.weight.copy_(head_weight)
    return classifier


def check_prompt_words(tokenizer, classnames: Sequence[str], templates) -> None:
    """A tokenizer with a closed vocabulary (the tiny CLIP's) cannot tell apart classes named with words
    it lacks: refuse them by name instead of training on identical prompts."""
    unknown_words = getattr(tokenizer, "unknown_words", None)
    if unknown_words is None:  # open_clip's BPE tokenizers represent any text
        return
    for kind, texts in (("class name", classnames), ("template", [t for t in templates if isinstance(t, str)])):
        for text in texts:
            if unknown := unknown_words(text.replace("{}", "")):
                raise UserError(
                    f"{kind} {text!r}: {', '.join(map(repr, unknown))} not in the tiny CLIP's vocabulary (models/world_tokenizer.py); "
                    "rename it (classnames.txt / templates.txt) or use an open_clip model such as model=vit_b32"
                )


def zeroshot_head_weight(clip_model, tokenizer, classnames: list[str], templates, device="cpu") -> torch.Tensor:
    """Zero-shot head rows: per class, the mean normalised text embedding over templates, normalised,
    times the model's logit scale (exp of the learned log-scale; 100 for OpenAI CLIP).

    Built with open_clip's `build_zero_shot_classifier`, which returns [embed_dim, classes].
    """
    check_prompt_words(tokenizer, classnames, templates)
    weights = open_clip.build_zero_shot_classifier(
        clip_model, tokenizer=tokenizer, classnames=classnames, templates=templates, num_classes_per_batch=10, device=device, use_tqdm=False
    )
    return weights.T.float() * clip_model.logit_scale.exp().item()


def first_mismatch(err: RuntimeError) -> str:
    """The first concrete line of torch's load_state_dict error (a size mismatch, or the missing keys)."""
    lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    return (lines[0] if lines else str(err).strip())[:300]


def clip_for_checkpoint(meta: CheckpointMeta, source: str | os.PathLike):
    """(clip model, eval transform, tokenizer) built exactly as the checkpoint's model was: its
    architecture and its recorded activation (QuickGELU for OpenAI weights), with random weights."""
    clip_model, preprocess, tokenizer = create_clip(meta.arch, pretrained=None, activation=meta.activation)
    if meta.activation is not None and activation_of(clip_model.visual) != meta.activation:
        raise UserError(f"{source}: records activation {meta.activation} but {meta.arch} builds {activation_of(clip_model.visual)}")
    return clip_model, preprocess, tokenizer


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ImageClassifier, CheckpointMeta]:
    """Build the architecture named in the checkpoint metadata and load its weights (no download)."""
    state, meta = load_checkpoint(path)
    clip_model, _, _ = clip_for_checkpoint(meta, path)
    classifier = ImageClassifier(clip_model.visual, embed_dim_of(clip_model), meta.num_classes)
    try:
        missing, unexpected = classifier.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: a checkpoint of another configuration of this arch
        raise UserError(f"{path}: weights do not match architecture {meta.arch} ({first_mismatch(err)})") from None
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match architecture {meta.arch} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return classifier.to(device).eval(), meta
