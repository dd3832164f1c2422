"""Per-example logits on disk: `<run>/logits/<model_id>/<set>.safetensors` (float logits and int labels).

The eval stage writes them for every checkpoint and the soups stage for every soup and ensemble when
`eval.save_logits=true`; the plots stage's findings (paired bootstrap, calibration) read them back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.atomic import atomic_path
from models.checkpoint import read_tensors
from models.run_files import DONE_FILE

LOGITS_DIR = "logits"


def save_logits(out: str | os.PathLike, model_id: str, dataset: str, logits: torch.Tensor, labels: torch.Tensor) -> Path:
    path = Path(out) / LOGITS_DIR / model_id / f"{dataset}.safetensors"
    # One metadata key holding sorted JSON: safetensors writes a metadata map in a random order per
    # process, which would make the same logits a different file on every run.
    about = json.dumps({"dataset": dataset, "model_id": model_id}, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file({"logits": logits.contiguous(), "labels": labels.contiguous()}, str(tmp), metadata={"logits_of": about})
    return path


def find_logits(root: str | os.PathLike) -> dict[tuple[str, str], Path]:
    """(model_id, set) -> file, for the finished runs (their folder holds DONE) under `root`; the latest file wins."""
    found: dict[tuple[str, str], Path] = {}
    files = [p for p in Path(root).rglob(f"{LOGITS_DIR}/*/*.safetensors") if (p.parent.parent.parent / DONE_FILE).exists()]
    for path in sorted(files, key=lambda p: p.stat().st_mtime):
        found[(path.parent.name, path.stem)] = path
    return found


def load_logits(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 logits [n, classes], labels [n])."""
    tensors = read_tensors(path)
    return tensors["logits"].float(), tensors["labels"]
