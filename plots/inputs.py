"""Read what the plots are made from: the project's records, or a folder of the official released results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from models.cli import CONF_DIR
from models.errors import UserError
from models.results import RESULTS_FILE, load_results, read_official_results

# The official files, their kind, and whether a folder must hold them (mlfoundations/model-soups).
OFFICIAL_FILES: dict[str, tuple[str, bool]] = {
    "individual_model_results.jsonl": ("individual", True),
    "uniform_soup_results.jsonl": ("soup", True),
    "greedy_soup_results.jsonl": ("soup", True),
    "ensemble_results.jsonl": ("ensemble", False),
}
OFFICIAL_HPARAMS = "hparam_info.json"
LP_INFO = "LP initialization"  # hparam_info.json's note on model_0, the LP-initialised start of the sweep


def is_official_folder(root: Path) -> bool:
    return root.is_dir() and (root / "individual_model_results.jsonl").exists() and not any(root.rglob(RESULTS_FILE))


def load_official(root: str | os.PathLike) -> pd.DataFrame:
    """The official files as long records. Models that hparam_info.json marks as the LP init get kind `lp`."""
    root = Path(root)
    frames = []
    for name, (kind, required) in OFFICIAL_FILES.items():
        path = root / name
        if not path.exists():
            if required:
                raise UserError(
                    f"{path}: missing; an official results folder holds {', '.join(n for n, (_, r) in OFFICIAL_FILES.items() if r)}"
                )
            continue
        frames.append(read_official_results(path, kind=kind))
    records = pd.concat(frames, ignore_index=True)
    hparams_path = root / OFFICIAL_HPARAMS
    if hparams_path.exists():
        try:
            hparams = json.loads(hparams_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{hparams_path}: not valid JSON ({err})") from None
        lp_models = {model for model, info in hparams.items() if isinstance(info, dict) and info.get("info") == LP_INFO}
        records.loc[records["model_id"].isin(lp_models) & (records["kind"] == "individual"), "kind"] = "lp"
    return records


def load_any(root: str | os.PathLike) -> pd.DataFrame:
    """Every record under `root`: the project's results.jsonl files, or the official wide files."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"results={root}: folder not found; pass results=<a run folder> or results=<folder of official *_results.jsonl>")
    if is_official_folder(root):
        return load_official(root)
    return load_results(root)


def shift_suites() -> list[list[str]]:
    """Each data config's shift list (conf/data/*.yaml): the five ImageNet shifts, the world's five."""
    suites = [[str(s) for s in OmegaConf.load(path).get("shifts", [])] for path in sorted(CONF_DIR.glob("data/*.yaml"))]
    return [suite for suite in suites if suite]


def preferred_shift_order() -> list[str]:
    """Shift names in the order of the data configs (conf/data/*.yaml): ImageNet V2, R, Sketch, ObjectNet, A; the world's."""
    order: list[str] = []
    for path in sorted(CONF_DIR.glob("data/*.yaml")):
        order += [str(s) for s in OmegaConf.load(path).get("shifts", [])]
    return order
