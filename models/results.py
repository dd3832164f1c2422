"""The results store: one `results.jsonl` per run, aggregated into one pandas table.

Each record is one (model, dataset) evaluation (docs/design.md, "Results records"). No two jobs append
to the same file; a file lock guards the rare case of two writers in one run folder anyway.
The official model-soups wide format (`individual_model_results.jsonl`) is read and written here too.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from models.atomic import write_text_atomic
from models.errors import UserError
from models.run_files import DONE_FILE, RESULTS_FILE

log = logging.getLogger(__name__)

ROLES = ("heldout", "id", "shift", "id_relabel")  # id_relabel: the id set under other labels (ImageNet-ReaL, multilabel)
REQUIRED_FIELDS = ("model_id", "kind", "dataset", "role", "top1", "n")

# The official wide format: column name -> role. Order is the official files' order.
OFFICIAL_SETS: dict[str, str] = {
    "ImageNet2p": "heldout",
    "ImageNet": "id",
    "ImageNetV2": "shift",
    "ImageNetSketch": "shift",
    "ImageNetR": "shift",
    "ObjectNet": "shift",
    "ImageNetA": "shift",
}


@cache
def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def make_record(
    *,
    model_id: str,
    kind: str,
    dataset: str,
    role: str,
    correct: int,
    n: int,
    checkpoint: Mapping[str, str] | None = None,
    config: Iterable[str] = (),
    top1: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A results record with `top1 = correct / n` (or the given `top1`, for a metric that is not a plain
    fraction, e.g. class-balanced multilabel accuracy) and the provenance fields filled in."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return {
        "model_id": model_id,
        "kind": kind,
        "dataset": dataset,
        "role": role,
        "top1": correct / n if top1 is None else top1,
        "n": n,
        "checkpoint": dict(checkpoint or {}),
        "git": git_revision(),
        "config": list(config),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def set_records(
    common: Mapping[str, Any], dataset: str, role: str, correct: int, n: int, relabelled: Mapping[str, Any], **extra: Any
) -> list[dict[str, Any]]:
    """One model's records on one set: the set's own (with `extra`), then one per relabelling of it scored in
    the same pass (ImageNetReaL, ImageNetMultilabel: role `id_relabel`, `top1` each one's own metric, and
    `of_dataset` the set). `common`: the fields every record of the model carries (model_id, kind, ...)."""
    record = make_record(**common, dataset=dataset, role=role, correct=correct, n=n, **extra)
    return [record] + [
        make_record(**common, dataset=name, role="id_relabel", correct=s.correct, n=s.n, top1=s.top1, of_dataset=dataset, **s.extra)
        for name, s in relabelled.items()
        if s is not None
    ]


def append_records(run_dir: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """Append records to `<run_dir>/results.jsonl`; each line is written whole, under a lock."""
    path = Path(run_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return path


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read one results.jsonl. A torn last line (a killed writer) is skipped with a warning;
    a malformed line elsewhere is an error naming the file and line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no trailing newline: the writer died mid-line
                log.warning("%s:%d: skipping an incomplete last line", path, number)
                continue
            raise UserError(f"{path}:{number}: not a JSON record; fix or delete that line") from None
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise UserError(f"{path}:{number}: record lacks {missing}")
        records.append(record)
    return records


def load_results(root: str | os.PathLike) -> pd.DataFrame:
    """Every record of every finished run under `root` (or of `root` itself, a results.jsonl), as one table.

    A run's records count only once the run has finished: a results.jsonl whose folder lacks `DONE`
    (a killed, failed or running job) is skipped with a warning.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: results folder not found")
    found = [root] if root.is_file() else sorted(root.rglob(RESULTS_FILE))
    files = [f for f in found if (f.parent / DONE_FILE).exists()]
    for unfinished in sorted(set(found) - set(files)):
        log.warning("skipping %s: its run has no %s marker (unfinished or failed)", unfinished, DONE_FILE)
    records = [dict(r, source=str(f)) for f in files for r in read_records(f)]
    if not records:
        raise UserError(f"{root}: no {RESULTS_FILE} records of finished runs (folders with {DONE_FILE}) found under it")
    return pd.DataFrame.from_records(records)


def wide_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model, one column per dataset (top1 fractions), plus `kind`.

    A model evaluated twice on a set keeps the latest record.
    """
    latest = results.sort_values("time", kind="stable") if "time" in results else results
    latest = latest.drop_duplicates(["model_id", "dataset"], keep="last")
    table = latest.pivot(index="model_id", columns="dataset", values="top1")
    kinds = latest.drop_duplicates("model_id", keep="last").set_index("model_id")["kind"]
    table.insert(0, "kind", kinds.reindex(table.index))
    table.columns.name = None
    return table


def avg_shift_accuracy(results: pd.DataFrame) -> pd.Series:
    """Per model, the unweighted mean of its shift accuracies (the paper's "avg shifts")."""
    shifts = results[results["role"] == "shift"].drop_duplicates(["model_id", "dataset"], keep="last")
    return shifts.groupby("model_id")["top1"].mean()


# --- the official wide format ----------------------------------------------------------------------


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file; a bad line is a UserError naming it."""
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{number}: not a JSON line") from None


def read_official_results(path: str | os.PathLike, kind: str = "individual") -> pd.DataFrame:
    """Read an official `*_results.jsonl` (one line per model, fractions per set) into long records."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    records = []
    for number, row in json_lines(path):
        if "model_name" not in row:
            raise UserError(f"{path}:{number}: no 'model_name' key; is this the official wide format?")
        for dataset, role in OFFICIAL_SETS.items():
            if dataset in row:
                records.append(
                    {
                        "model_id": row["model_name"],
                        "kind": kind,
                        "dataset": dataset,
                        "role": role,
                        "top1": float(row[dataset]),
                        "n": None,
                        "source": str(path),
                    }
                )
    if not records:
        raise UserError(f"{path}: no records in the official format")
    return pd.DataFrame.from_records(records)


def write_official_results(results: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write long records as the official wide format: one JSON line per model, keys in official order.

    Datasets outside the official set names are left out (the format has no place for them).
    """
    table = wide_table(results)
    lines = []
    for model_id, row in table.iterrows():
        line = {"model_name": model_id}
        line.update({name: float(row[name]) for name in OFFICIAL_SETS if name in row and pd.notna(row[name])})
        lines.append(json.dumps(line))
    write_text_atomic(path, "\n".join(lines) + "\n")
    return Path(path)
