"""Which checkpoints go into a soup: a glob, a list, a finished sweep folder, or official `model_{i}.pt` files.

A sweep folder contributes only its finished runs (those with `DONE`). Official `.pt` checkpoints are
imported with `models.checkpoint.import_checkpoint`; their metadata comes from the `model` config.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.checkpoint import OFFICIAL_SOURCE, CheckpointMeta, import_checkpoint, natural_key, read_meta, sha256_prefix
from models.cli import DONE_FILE
from models.errors import UserError
from models.results import RESULTS_FILE, read_records
from soups.checks import IngredientSpec
from soups.streaming import TensorSpec, is_pt, tensor_specs

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.safetensors"
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclasses.dataclass
class Ingredient:
    path: Path
    meta: CheckpointMeta
    tensors: dict[str, TensorSpec]

    @property
    def name(self) -> str:
        return str(self.path)

    def spec(self) -> IngredientSpec:
        meta = self.meta
        return IngredientSpec(self.name, meta.arch, meta.num_classes, meta.classes, self.tensors, meta.activation, meta.pretrained)


def _as_list(spec: Any) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec] if spec.strip() else []
    return [str(item) for item in spec]


def _runs_under(folder: Path) -> list[Path]:
    """The checkpoints of the finished runs in a run folder or a sweep folder (recursively)."""
    if (folder / CHECKPOINT_NAME).exists():
        runs = [folder]
    else:
        runs = sorted((p.parent for p in folder.rglob(CHECKPOINT_NAME)), key=natural_key)
    finished = [run for run in runs if (run / DONE_FILE).exists()]
    if len(finished) < len(runs):
        log.info("%s: skipping %d unfinished run(s) (no %s)", folder, len(runs) - len(finished), DONE_FILE)
    if not finished:
        raise UserError(f"ingredients: no finished runs (folders with {CHECKPOINT_NAME} and {DONE_FILE}) under {folder}")
    return [run / CHECKPOINT_NAME for run in finished]


def resolve_paths(spec: Any) -> list[Path]:
    """Checkpoint paths from a glob, a list of paths/globs, or a (sweep) run folder, in numeric order (model_2 before model_10)."""
    paths: list[Path] = []
    for item in _as_list(spec):
        matches = sorted(glob.glob(item), key=natural_key) if glob.has_magic(item) else [item]
        if not matches:
            raise UserError(f"ingredients: the glob {item!r} matches no file")
        for match in map(Path, matches):
            if match.is_dir():
                paths.extend(_runs_under(match))
            elif match.exists():
                if match.suffix not in SUFFIXES:
                    raise UserError(f"ingredients: {match} is not a checkpoint (expected one of {', '.join(SUFFIXES)})")
                paths.append(match)
            else:
                raise UserError(f"ingredients: {match}: no such file or folder")
    if not paths:
        raise UserError("ingredients: the ingredient set is empty; give a glob, a list of checkpoints or a finished sweep folder")
    duplicates = {p for p in paths if paths.count(p) > 1}
    if duplicates:
        raise UserError(f"ingredients: {sorted(duplicates)[0]} is listed twice; list each checkpoint once")
    return paths


def describe(path: Path, model_cfg: Any) -> Ingredient:
    """Metadata and tensor specs of one checkpoint, without reading its tensors (safetensors)."""
    if is_pt(path):
        state, has_head = import_checkpoint(path)
        if not has_head:
            raise UserError(f"{path}: no classification head; soups average whole classifiers (image tower + head)")
        from models.factory import wants_quick_gelu  # open_clip loads where a model is read, not for a sweep's launcher

        meta = CheckpointMeta(
            arch=model_cfg.arch,
            pretrained=model_cfg.pretrained,
            num_classes=int(state["head.weight"].shape[0]),
            classes=model_cfg.classes,
            kind="imported",
            # a .pt ingredient is an official model-soups checkpoint (OpenAI CLIP fine-tuned) or an open_clip one
            activation="quick_gelu" if wants_quick_gelu(model_cfg.arch, model_cfg.pretrained) else None,
            hparams={"source": OFFICIAL_SOURCE},  # .pt ingredients are taken as the official model_{i}.pt
        )
        return Ingredient(path, meta, {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()})
    return Ingredient(path, read_meta(path), tensor_specs(path))


def architecture_specs(arch: str, num_classes: int) -> dict[str, TensorSpec]:
    """Key -> (shape, dtype) of the classifier `arch` builds, on the meta device (no memory, no download)."""
    import torch

    from models.classifier import ImageClassifier, embed_dim_of
    from models.factory import create_clip

    with torch.device("meta"):
        clip_model, _, _ = create_clip(arch, None, device="meta")
        classifier = ImageClassifier(clip_model.visual, embed_dim_of(clip_model), num_classes)
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in classifier.state_dict().items()}


def resolve_ingredients(spec: Any, model_cfg: Any) -> list[Ingredient]:
    return [describe(path, model_cfg) for path in resolve_paths(spec)]


def recorded_heldout(ingredient: Ingredient, dataset: str, n: int, sha256: Callable[[Path], str] = sha256_prefix) -> int | None:
    """Correct count on the held-out set from the ingredient run's own results.jsonl, if recorded.

    Only a record for this dataset over the same number of examples counts; when the record names a
    checkpoint with a sha256 prefix, it must be this file's.
    """
    results = ingredient.path.parent / RESULTS_FILE
    if not results.exists():
        return None
    digest = None
    found = None
    for record in read_records(results):
        if record["dataset"] != dataset or record["role"] != "heldout" or record["n"] != n:
            continue
        recorded_sha = (record.get("checkpoint") or {}).get("sha256")
        if recorded_sha:
            digest = digest or sha256(ingredient.path)
            if not digest.startswith(recorded_sha) and not recorded_sha.startswith(digest):
                continue
        found = record  # the latest matching record wins
    return None if found is None else round(found["top1"] * n)
