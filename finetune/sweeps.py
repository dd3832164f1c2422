"""Hyperparameter sweeps: job i's hyperparameters as a pure function of the sweep config and i.

- `random`: the paper's random search (Wortsman et al. 2022, Sec. 3.3 / App.: lr, weight decay, epochs,
  label smoothing, mixup and RandAugment drawn independently; RandAugment's N with the frequencies of the
  official hparam_info.json: of its 44 augmented runs, N=0 21, N=1 18, N=2 5). Draws come from `random.Random` seeded
  with the string "<seed>:<index>" (seeded through sha512, so independent of PYTHONHASHSEED, the
  machine and the order jobs run in).
- `replay`: the official configurations read from a hparam_info.json (model_1 .. model_71).
- `grid`: the Cartesian product of the listed values, job i taking the i-th combination.
- `none`: no sweep; the finetune config is used as is.

Each returns a dict of `finetune.*` fields that override the config. `data_seed` gives each job its own
data stream (epoch order, augmentation draws, mixup λ), as the official runs shuffle independently.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetune.data import counter_seed
from models.errors import UserError

# hparam_info.json key -> finetune config field
OFFICIAL_KEYS = {"lr": "lr", "wd": "weight_decay", "epochs": "epochs", "smoothing": "label_smoothing", "mix": "mixup", "aug": "randaug"}


def log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def sample_random(space: Mapping[str, Any], seed: int, index: int) -> dict[str, Any]:
    """The hyperparameters of job `index` of the random search over `space` (conf/sweep/paper_random.yaml)."""
    rng = random.Random(f"{seed}:{index}")
    epochs_low, epochs_high = space["epochs"]
    smoothing = 0.0 if rng.random() < space["p_no_smoothing"] else rng.uniform(*space["smoothing"])
    mix = 0.0 if rng.random() < space["p_no_mixup"] else rng.uniform(*space["mixup"])
    if rng.random() < space["p_no_randaug"]:
        randaug = None
    else:
        weights = space["randaug_n_weights"]  # N = 0, 1, 2, ... as often as among the official augmented runs
        magnitude, num_ops = rng.randint(*space["randaug_m"]), rng.choices(range(len(weights)), weights=weights)[0]
        randaug = f"rand-m{magnitude}-n{num_ops}"
    return {
        "lr": log_uniform(rng, *space["lr"]),
        "weight_decay": log_uniform(rng, *space["weight_decay"]),
        "epochs": rng.randint(epochs_low, epochs_high),
        "label_smoothing": smoothing,
        "mixup": mix,
        "randaug": randaug,
    }


def read_official_hparams(path: str | Path) -> dict[str, dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"sweep.hparam_info: {path} not found; download hparam_info.json from github.com/mlfoundations/model-soups")
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"sweep.hparam_info: {path} is not valid JSON ({err})") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise UserError(f"sweep.hparam_info: {path} is not a {{model_i: {{...}}}} table")
    return table


def replay_official(table: Mapping[str, Mapping[str, Any]], index: int, source: str = "hparam_info.json") -> dict[str, Any]:
    """The official configuration of model_{index} (model_0 is the LP initialisation, not a fine-tuning run)."""
    entry = table.get(f"model_{index}")
    if entry is None:
        raise UserError(f"sweep.index: {source} has no model_{index}")
    if not all(k in entry for k in OFFICIAL_KEYS):
        raise UserError(f"sweep.index: model_{index} in {source} is not a fine-tuning run ({dict(entry)}); replay indices start at 1")
    out = {field: entry[key] for key, field in OFFICIAL_KEYS.items()}
    out["randaug"] = None if out["randaug"] in (None, "none") else out["randaug"]
    out["epochs"] = int(out["epochs"])
    return out


def grid_point(grid: Mapping[str, list[Any]], index: int) -> dict[str, Any]:
    """The `index`-th combination of the grid, last field varying fastest."""
    fields = list(grid)
    combos = list(itertools.product(*(grid[f] for f in fields)))
    if not 0 <= index < len(combos):
        raise UserError(f"sweep.index: {index} is outside the grid of {len(combos)} points")
    return dict(zip(fields, combos[index]))


def job_hparams(sweep: Mapping[str, Any]) -> dict[str, Any]:
    """`finetune.*` overrides for job `sweep.index` of `sweep` (a config node of conf/sweep/)."""
    kind, index = sweep.get("kind", "none"), int(sweep.get("index", 0))
    if kind == "none":
        return {}
    overrides: dict[str, Any]
    if kind == "random":
        overrides = sample_random(sweep["space"], int(sweep["seed"]), index)
    elif kind == "replay":
        path = Path(str(sweep["hparam_info"]))
        overrides = replay_official(read_official_hparams(path), index, str(path))
    elif kind == "grid":
        overrides = grid_point(sweep["grid"], index)
    else:
        raise UserError(f"sweep.kind: unknown kind {kind!r}; expected none, random, replay or grid")
    overrides.update(sweep.get("fixed") or {})
    return overrides


def data_seed(seed: int | None, sweep: Mapping[str, Any]) -> int:
    """The seed of a job's data stream (epoch order, augmentation, mixup λ): `seed=` when given; else a pure
    function of the sweep's seed and the job index, so two jobs of one sweep never share a stream (even with
    the same hyperparameters, as official model_4 and model_5) and `--seeds` (sweep.seed) draws new ones;
    0 for a single run without a sweep."""
    if seed is not None:
        return int(seed)
    if sweep.get("kind", "none") == "none":
        return 0
    return counter_seed(int(sweep.get("seed", 0)), int(sweep.get("index", 0)))
