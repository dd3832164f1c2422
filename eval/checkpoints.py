"""Which checkpoints to evaluate: `checkpoints=<glob | list | sweep folder>`, and their model ids."""

from __future__ import annotations

import functools
import glob
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from models.checkpoint import sha256_prefix
from models.cli import DONE_FILE
from models.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.safetensors"


def _as_list(spec) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str | Path):
        return [str(spec)]
    return [str(item) for item in spec]


def _from_folder(folder: Path) -> list[Path]:
    """A run folder or a sweep folder: every finished run's model.safetensors under it."""
    found = sorted(folder.rglob(CHECKPOINT_NAME))
    finished = [p for p in found if (p.parent / DONE_FILE).exists()]
    for unfinished in sorted(set(found) - set(finished)):
        log.warning("skipping %s: its run has no %s marker (unfinished)", unfinished, DONE_FILE)
    if not found:
        found = finished = sorted(folder.rglob("*.safetensors"))
    return finished


def resolve_checkpoints(spec: str | Sequence[str] | None) -> list[Path]:
    """Checkpoint files in the given order (globs sorted), each once."""
    paths: list[Path] = []
    for item in _as_list(spec):
        path = Path(item)
        if path.is_dir():
            matched = _from_folder(path)
            if not matched:
                raise UserError(f"checkpoints: no finished runs with {CHECKPOINT_NAME} (or *.safetensors) under {path}")
        elif glob.has_magic(item):
            matched = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()]
            if not matched:
                raise UserError(f"checkpoints: the pattern {item!r} matched no files")
        elif path.is_file():
            matched = [path]
        else:
            raise UserError(f"checkpoints: {item} not found")
        paths.extend(matched)
    if not paths:
        raise UserError("checkpoints: none given; pass checkpoints=<glob>, checkpoints=[a.safetensors,b.safetensors] or a sweep folder")
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    return unique


def checkpoint_digests(spec: str | Sequence[str] | None) -> tuple[str, dict[str, str]]:
    """The eval run's inputs (models.cli `stage_entry(inputs=)`): the files `checkpoints=` resolves to, each
    with its sha256 prefix, so a grown folder or a retrained run changes the identity, and the string does not."""
    return "checkpoints", {str(path): checkpoint_sha256(path) for path in resolve_checkpoints(spec)}


def checkpoint_sha256(path: Path) -> str:
    """The file's sha256 prefix, hashed once per process while the file is unchanged (the identity and the
    records both name it; a ViT-B/32 checkpoint takes a second to hash)."""
    stat = path.stat()
    return _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    return sha256_prefix(path)


def model_ids(paths: Iterable[Path]) -> list[str]:
    """A run's checkpoint is named after its run folder; other files after their stem.

    Clashing names fall back to the path relative to the deepest common folder.
    """
    paths = list(paths)
    names = [p.parent.name if p.name == CHECKPOINT_NAME else p.stem for p in paths]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [str((p.parent if p.name == CHECKPOINT_NAME else p.with_suffix("")).relative_to(common)) for p in paths]
