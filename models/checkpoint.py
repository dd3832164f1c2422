"""Checkpoint I/O in the project format (docs/design.md, "Checkpoint format").

A checkpoint is a safetensors file holding the flat state dict of an `ImageClassifier`
(`visual.*`, `head.weight`, `head.bias`). Its header metadata holds one JSON string under
`METADATA_KEY` with the fields of `CheckpointMeta`.

Loading never unpickles arbitrary objects: safetensors carries only tensors, and imported `.pt`
files go through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from models.atomic import atomic_path
from models.errors import UserError

FORMAT = "model-soups-ckpt/1"
METADATA_KEY = "model_soups"
OFFICIAL_SOURCE = "model-soups-official"  # hparams["source"] of the released model-soups checkpoints
KINDS = ("zeroshot", "lp", "individual", "soup", "wise_ft", "imported")


@dataclasses.dataclass
class CheckpointMeta:
    arch: str
    pretrained: str | None
    num_classes: int
    classes: str  # id of the class list, e.g. "imagenet1k" or "world10"
    kind: str
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    ingredients: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # the image tower's activation as built ('quick_gelu' | 'gelu'); None: a tower without either, or a
    # checkpoint from before the field existed (then the architecture's own default)
    activation: str | None = None
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> CheckpointMeta:
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{source}: checkpoint metadata is not valid JSON ({err})") from None
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"arch", "num_classes", "classes", "kind"} - fields.keys()
        if missing:
            raise UserError(f"{source}: checkpoint metadata lacks {sorted(missing)}")
        if not str(fields.get("format", "")).startswith("model-soups-ckpt/"):
            raise UserError(f"{source}: unknown checkpoint format {fields.get('format')!r}")
        return cls(**{k: v for k, v in fields.items() if k in known})


def sha256_prefix(path: str | os.PathLike, length: int = 12) -> str:
    """The first `length` hex digits of a file's sha256: enough to tell ingredients apart."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: CheckpointMeta) -> Path:
    """Write `state_dict` and `meta` to `path` atomically (temp file, then rename)."""
    if meta.kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {meta.kind!r}; expected one of {KINDS}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: meta.to_json()})
    return path


def _open(path: Path):
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: expected a .safetensors checkpoint; import .pt files with models.checkpoint.import_checkpoint")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable checkpoint ({err}); it may be truncated, re-create it") from None


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Read only the metadata (no tensors)."""
    path = Path(path)
    with _open(path) as handle:
        metadata = handle.metadata() or {}
    if METADATA_KEY not in metadata:
        raise UserError(f"{path}: safetensors file has no '{METADATA_KEY}' metadata; is it a model-soups checkpoint?")
    return CheckpointMeta.from_json(metadata[METADATA_KEY], str(path))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Load every tensor and the metadata."""
    meta = read_meta(path)
    return dict(iter_tensors(path)), meta


def is_official_release(meta: CheckpointMeta) -> bool:
    """An imported official model-soups checkpoint (trained on the official 98% of ImageNet train)."""
    return meta.hparams.get("source") == OFFICIAL_SOURCE


def owned(tensor: torch.Tensor) -> torch.Tensor:
    """A copy in memory torch allocated (64-byte aligned), of a tensor read from a safetensors file.

    Tensors read from a file sit at the file's data offset, which depends on the header's length (and
    so on paths in the metadata). MKL's matrix products round differently at different alignments, so
    without the copy a result could change with where the checkout lives.
    """
    return tensor.clone(memory_format=torch.contiguous_format)


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) one at a time, so callers can stream without holding the whole file."""
    path = Path(path)
    with _open(path) as handle:
        keys = list(handle.keys())
        for key in keys:
            try:
                yield key, owned(handle.get_tensor(key))
            except (SafetensorError, OSError, ValueError) as err:
                raise UserError(f"{path}: cannot read tensor '{key}' ({err}); the file may be truncated") from None


# --- import / export -------------------------------------------------------------------------------


def load_pt_weights_only(path: str | os.PathLike) -> dict[str, Any]:
    """`torch.load(weights_only=True)`, turning a refused pickle into a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing or loading; the outcome is what counts
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsafe pickle"
        raise UserError(f"{path}: refused to unpickle (it holds more than tensors: {first})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"{path}: unreadable .pt file ({str(err).splitlines()[0]})") from None


def convert_foreign_state_dict(state: dict[str, Any], source: str) -> tuple[dict[str, torch.Tensor], bool]:
    """Map an official model-soups or plain open_clip state dict to classifier keys.

    Official `model_{i}.pt`: `model.visual.*` + `classification_head.{weight,bias}` (+ text parts, dropped).
    open_clip checkpoints: `visual.*` (+ text parts), maybe under `state_dict` and with a `module.` prefix.
    Returns the classifier state dict and whether it holds a head.
    """
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = key.removeprefix("module.").removeprefix("model.")
        if key.startswith("visual."):
            out[key] = value.float() if value.is_floating_point() else value
        elif key.startswith("classification_head."):
            out["head." + key.removeprefix("classification_head.")] = value.float()
        elif key.startswith("head."):
            out[key] = value.float()
    if not any(k.startswith("visual.") for k in out):
        raise UserError(f"{source}: no image-tower ('visual.*') weights found; not a CLIP checkpoint")
    has_head = "head.weight" in out
    if has_head and "head.bias" not in out:
        out["head.bias"] = torch.zeros(out["head.weight"].shape[0])
    return out, has_head


def import_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], bool]:
    """Read an official `model_{i}.pt` or an open_clip checkpoint (never unpickling code)."""
    return convert_foreign_state_dict(load_pt_weights_only(path), str(path))


def to_open_clip_state_dict(classifier_state: dict[str, torch.Tensor], clip_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full open_clip state dict: the text tower of `clip_state`, the image tower of the classifier."""
    full = {k: v for k, v in clip_state.items() if not k.startswith("visual.")}
    full.update({k: v for k, v in classifier_state.items() if k.startswith("visual.")})
    return full
