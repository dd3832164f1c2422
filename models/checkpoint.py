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
import math
import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
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


# safetensors dtype names -> torch dtypes
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str], int]:
    """A safetensors file's tensor entries, its `__metadata__` and the byte offset where tensor data starts.

    Reads the header alone, and checks what safetensors' own reader checks: every entry has a known dtype
    and a byte range that fits its shape, the ranges tile the data without gap or overlap, and the file
    ends where the last one does: a truncated or corrupt file fails here, before any tensor is read.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise UserError(f"{path}: unreadable checkpoint (truncated, {size} bytes); re-create it")
        (header_len,) = struct.unpack("<Q", raw)
        if 8 + header_len > size:
            raise UserError(f"{path}: unreadable checkpoint (truncated: header needs {header_len} bytes, file has {size}); re-create it")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path}: unreadable checkpoint (not a safetensors header); re-create it") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: unreadable checkpoint (not a safetensors header); re-create it")
    metadata = header.pop("__metadata__", None) or {}
    for key, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            begin, end = (int(x) for x in entry["data_offsets"])
            numel = math.prod(int(n) for n in entry["shape"])
        except KeyError:
            raise UserError(f"{path}: tensor '{key}' has an unsupported dtype or a malformed header entry {entry}") from None
        except (TypeError, ValueError):
            raise UserError(f"{path}: unreadable checkpoint (malformed header entry for '{key}'); re-create it") from None
        if end - begin != numel * dtype.itemsize:
            raise UserError(
                f"{path}: unreadable checkpoint (tensor '{key}' holds {end - begin} bytes, its shape needs {numel * dtype.itemsize})"
            )
    data_start = 8 + header_len
    # As safetensors' own reader validates them: the byte ranges, in offset order, tile the data from 0 to
    # the file's end without a gap or an overlap (a shifted range would read its neighbours' bytes).
    end = 0
    for key in sorted(header, key=lambda k: tuple(header[k]["data_offsets"])):
        begin, stop = header[key]["data_offsets"]
        if begin != end:
            raise UserError(
                f"{path}: unreadable checkpoint (invalid offset: tensor '{key}' starts at byte {begin}, the previous one ends at {end}); re-create it"
            )
        end = stop
    if data_start + end > size:
        raise UserError(f"{path}: unreadable checkpoint (truncated: expected {data_start + end} bytes, found {size}); re-create it")
    if data_start + end < size:
        raise UserError(f"{path}: unreadable checkpoint ({size - data_start - end} bytes after the last tensor); re-create it")
    return header, metadata, data_start


def iter_safetensors(path: str | os.PathLike, keys: list[str] | None = None, borrowed: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) in file order (or `keys` order), each read straight into its own tensor: the one
    reader of safetensors files (checkpoints, soup ingredients, logits, cached features).

    Plain `readinto` calls into memory torch allocated (64-byte aligned), not a memory map: pages of a
    mapped file count in the process's RSS for as long as the map lives, and a mapped tensor sits at the
    file's data offset, which depends on the header's length (and so on paths in the metadata); MKL's
    matrix products round differently at different alignments, so a result could change with where the
    checkout lives. `borrowed=True` reads every tensor into one reused scratch buffer instead: a yielded
    tensor is only valid until the next one is read. It spares a fresh allocation per tensor, whose page
    faults cost more than the read itself when the file is in the page cache.
    """
    path = Path(path)
    header, _, data_start = read_safetensors_header(path)
    order = keys if keys is not None else sorted(header, key=lambda k: header[k]["data_offsets"][0])
    scratch = torch.empty(0, dtype=torch.uint8)
    if borrowed and order:
        scratch = torch.empty(max(header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in order), dtype=torch.uint8)
    with open(path, "rb", buffering=0) as handle:
        for key in order:
            entry = header[key]
            begin, end = entry["data_offsets"]
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            if borrowed:
                tensor = scratch[: end - begin].view(dtype).view(entry["shape"])
            else:
                tensor = torch.empty(entry["shape"], dtype=dtype)
            view = memoryview(tensor.view(-1).view(torch.uint8).numpy()) if tensor.numel() else memoryview(b"")
            handle.seek(data_start + begin)
            got = handle.readinto(view) if len(view) else 0
            if got != end - begin:
                raise UserError(f"{path}: cannot read tensor '{key}' (got {got} of {end - begin} bytes); the file may be truncated")
            yield key, tensor


def _check_suffix(path: Path) -> None:
    if path.exists() and path.suffix != ".safetensors":
        raise UserError(f"{path}: expected a .safetensors checkpoint; import .pt files with models.checkpoint.import_checkpoint")


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Read only the metadata (no tensors), checked against the head's shape."""
    path = Path(path)
    _check_suffix(path)
    header, metadata, _ = read_safetensors_header(path)
    head_shape = header["head.weight"]["shape"] if "head.weight" in header else None
    if METADATA_KEY not in metadata:
        raise UserError(f"{path}: safetensors file has no '{METADATA_KEY}' metadata; is it a model-soups checkpoint?")
    meta = CheckpointMeta.from_json(metadata[METADATA_KEY], str(path))
    check_head_rows(meta, head_shape, path)
    return meta


def check_head_rows(meta: CheckpointMeta, head_shape: Any, source: str | os.PathLike) -> None:
    """The metadata's class count is the head's row count (`head_shape`: head.weight's shape, or None)."""
    if head_shape is not None and int(head_shape[0]) != int(meta.num_classes):
        raise UserError(
            f"{source}: metadata says {meta.num_classes} classes but head.weight has {int(head_shape[0])} rows; "
            "the checkpoint is inconsistent, re-create it"
        )


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Load every tensor (each checked finite: a NaN or inf would score chance, not fail) and the metadata."""
    meta = read_meta(path)
    return {key: check_finite(path, key, tensor) for key, tensor in iter_tensors(path)}, meta


def check_finite(path: str | os.PathLike, key: str, tensor: torch.Tensor) -> torch.Tensor:
    """The tensor, if it holds no NaN or inf; else a UserError naming the file and the key. Every reader of
    weights (eval, soups, fine-tuning's init) refuses such a checkpoint the same way."""
    # A NaN or inf makes the sum non-finite, so a finite sum (one fast reduction) proves the tensor finite;
    # only a non-finite sum (or an overflow) needs the exact elementwise test.
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        raise UserError(f"{path}: tensor '{key}' holds NaN or inf; this checkpoint is broken (a diverged run?), leave it out")
    return tensor


def is_official_release(meta: CheckpointMeta) -> bool:
    """An imported official model-soups checkpoint (trained on the official 98% of ImageNet train)."""
    return meta.hparams.get("source") == OFFICIAL_SOURCE


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield a checkpoint's (key, tensor) one at a time, so callers can stream without holding the whole file.

    In sorted key order, as `safetensors.safe_open(...).keys()` lists them (what this function used before)."""
    path = Path(path)
    _check_suffix(path)
    yield from iter_safetensors(path, sorted(read_safetensors_header(path)[0]))


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (a logits file, cached features), in file order as safetensors'
    own `load_file` gives them."""
    return dict(iter_safetensors(path))


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
        raise UserError(refused_pickle_message(path, str(err))) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"{path}: unreadable .pt file ({str(err).splitlines()[0]})") from None


def pickle_globals(path: Path) -> list[str]:
    """The globals (`module.name`) a pickle file would import, read from its opcodes without running it.

    A torch zip archive keeps its pickle in `<archive>/data.pkl`; a plain pickle is the file itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            data = archive.read(member) if member else b""
    else:
        data = path.read_bytes()
    found, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except ValueError:  # a corrupt or truncated stream: report what was read before it
        pass
    return found


def refused_pickle_message(path: Path, torch_message: str) -> str:
    """One line for a pickle that `weights_only` loading refused: the file, the global it would have
    imported, and the safe way out. (torch's own message advises turning the safety check off.)"""
    from torch._weights_only_unpickler import _get_allowed_globals

    named = re.search(r"GLOBAL\s+([\w.]+)", torch_message)  # "... unsupported GLOBAL posix.system ..."
    allowed = set(_get_allowed_globals())
    culprits = [named.group(1)] if named else [g for g in pickle_globals(path) if g not in allowed]
    culprit = f"it needs the global {culprits[0]}" if culprits else "it holds objects other than tensors"
    return (
        f"{path}: refused to unpickle: {culprit}, which could run code when loaded; "
        "re-save its tensors as safetensors (safetensors.torch.save_file) where you trust the file, and pass that file"
    )


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
