"""Streaming tensor I/O for soups: the one place soups read ingredient weights.

Soups read each ingredient one tensor at a time through the project's one safetensors reader,
`models.checkpoint.iter_safetensors`: plain `readinto` calls into a fresh tensor, not a memory map
(pages of a mapped file count in the process's RSS for as long as the map lives, so reading a whole
checkpoint through a map costs one extra checkpoint of RSS). So a uniform soup of any number of
ingredients holds the running sum plus one tensor.

Official `model_{i}.pt` files cannot be read tensor by tensor; they are imported whole (one at a time)
with `models.checkpoint.import_checkpoint`, which never unpickles code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from models.checkpoint import SAFETENSORS_DTYPES, check_finite, import_checkpoint, iter_safetensors, read_safetensors_header, sha256_prefix

TensorSpec = tuple[tuple[int, ...], str]  # (shape, dtype name), e.g. ((512, 768), "torch.float32")


def is_pt(path: Path) -> bool:
    return path.suffix in (".pt", ".pth", ".bin")


def tensor_specs(path: str | os.PathLike) -> dict[str, TensorSpec]:
    """Shapes and dtypes of every tensor, read from the header alone (safetensors) or a load (.pt)."""
    path = Path(path)
    if is_pt(path):
        state, _ = import_checkpoint(path)
        return {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()}
    header, _, _ = read_safetensors_header(path)
    return {key: (tuple(entry["shape"]), str(SAFETENSORS_DTYPES[entry["dtype"]])) for key, entry in header.items()}


def iter_ingredient_tensors(path: str | os.PathLike, borrowed: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream an ingredient's tensors, checking each float tensor for NaN and inf (`borrowed`: see iter_safetensors)."""
    path = Path(path)
    pairs = import_checkpoint(path)[0].items() if is_pt(path) else iter_safetensors(path, borrowed=borrowed)
    for key, tensor in pairs:
        yield key, check_finite(path, key, tensor)


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
    keys = list(sources[0]) if sources[0] is not None else list(read_safetensors_header(first)[0])
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
