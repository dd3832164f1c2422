"""Streaming tensor I/O for soups: the one place that reads ingredient weights.

Soups read each ingredient one tensor at a time with plain `readinto` calls into a fresh tensor,
not through a memory map: pages of a mapped file count in the process's RSS for as long as the map
lives, so reading a whole checkpoint through `safe_open` costs one extra checkpoint of RSS. With
`readinto` a uniform soup of any number of ingredients holds the running sum plus one tensor.

Official `model_{i}.pt` files cannot be read tensor by tensor; they are imported whole (one at a time)
with `models.checkpoint.import_checkpoint`, which never unpickles code.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from models.checkpoint import import_checkpoint, sha256_prefix
from models.errors import UserError

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

TensorSpec = tuple[tuple[int, ...], str]  # (shape, dtype name), e.g. ((512, 768), "torch.float32")


def is_pt(path: Path) -> bool:
    return path.suffix in (".pt", ".pth", ".bin")


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """The safetensors header (without `__metadata__`) and the byte offset where tensor data starts.

    Checks that the file holds every byte the header promises, so a truncated file fails here,
    before any averaging.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise UserError(f"{path}: truncated checkpoint ({size} bytes); re-create it")
        (header_len,) = struct.unpack("<Q", raw)
        if 8 + header_len > size:
            raise UserError(f"{path}: truncated checkpoint (header needs {header_len} bytes, file has {size}); re-create it")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path}: not a safetensors file (unreadable header); re-create it") from None
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if data_start + end > size:
        raise UserError(f"{path}: truncated checkpoint (expected {data_start + end} bytes, found {size}); re-create it")
    return header, data_start


def tensor_specs(path: str | os.PathLike) -> dict[str, TensorSpec]:
    """Shapes and dtypes of every tensor, read from the header alone (safetensors) or a load (.pt)."""
    path = Path(path)
    if is_pt(path):
        state, _ = import_checkpoint(path)
        return {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()}
    header, _ = read_header(path)
    specs = {}
    for key, entry in header.items():
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise UserError(f"{path}: tensor '{key}' has unsupported dtype {entry['dtype']}")
        specs[key] = (tuple(entry["shape"]), str(SAFETENSORS_DTYPES[entry["dtype"]]))
    return specs


def iter_safetensors(path: str | os.PathLike, keys: list[str] | None = None, borrowed: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) in file order (or `keys` order), each read straight into its own tensor.

    `borrowed=True` reads every tensor into one reused scratch buffer instead: a yielded tensor is only
    valid until the next one is read. It spares a fresh allocation per tensor, whose page faults cost
    more than the read itself when the file is in the page cache.
    """
    path = Path(path)
    header, data_start = read_header(path)
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


def iter_ingredient_tensors(path: str | os.PathLike, borrowed: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream an ingredient's tensors, checking each float tensor for NaN and inf (`borrowed`: see iter_safetensors)."""
    path = Path(path)
    pairs = import_checkpoint(path)[0].items() if is_pt(path) else iter_safetensors(path, borrowed=borrowed)
    for key, tensor in pairs:
        yield key, check_finite(path, key, tensor)


def check_finite(path: Path, key: str, tensor: torch.Tensor) -> torch.Tensor:
    # A NaN or inf makes the sum non-finite, so a finite sum (one fast reduction) proves the tensor finite;
    # only a non-finite sum (or an overflow) needs the exact elementwise test.
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        raise UserError(f"{path}: tensor '{key}' holds NaN or inf; this ingredient is broken, leave it out")
    return tensor


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """One ingredient's whole state dict (checked for NaN/inf)."""
    return dict(iter_ingredient_tensors(path))


def iter_layers(paths: list[Path]) -> Iterator[tuple[str, list[torch.Tensor]]]:
    """Yield (key, [that tensor of each ingredient]) key by key: one layer of every ingredient at a time.

    Safetensors files are read per tensor; `.pt` files cannot be, so they are imported whole.
    """
    sources = []
    for path in map(Path, paths):
        sources.append(load_state(path) if is_pt(path) else None)
    first = Path(paths[0])
    keys = list(sources[0]) if sources[0] is not None else list(read_header(first)[0])
    for key in keys:
        tensors = []
        for path, source in zip(map(Path, paths), sources):
            if source is not None:
                tensors.append(source[key])
                continue
            ((_, tensor),) = iter_safetensors(path, [key])
            tensors.append(check_finite(path, key, tensor))
        yield key, tensors


class BackgroundHashes:
    """sha256 prefixes of the ingredients (for the soup's metadata), computed in one worker thread while
    the soup streams: hashlib releases the GIL, so hashing overlaps reading and averaging."""

    def __init__(self, paths: list[Path]):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self.futures: dict[Path, Future] = {Path(p): self.pool.submit(sha256_prefix, p) for p in paths}

    def get(self, path: str | os.PathLike) -> str:
        path = Path(path)
        if path not in self.futures:
            self.futures[path] = self.pool.submit(sha256_prefix, path)
        return self.futures[path].result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
