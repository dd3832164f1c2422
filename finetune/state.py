"""The resumable training state: everything a killed run needs to continue bit for bit.

Model, optimizer, the global step (the sampler position and the schedule follow from it), the running
sums of the current epoch's metrics and the RNG states. Written atomically to `train_state.pt` in the
run folder; read back with `torch.load(weights_only=True)`, so it never unpickles code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.atomic import atomic_path
from models.errors import UserError

STATE_FILE = "train_state.pt"


def rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(tuple(states["python"][:1]) + (tuple(states["python"][1]),) + tuple(states["python"][2:]))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def save_state(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, epoch_sums: dict[str, float], scaler=None
) -> Path:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch_sums": dict(epoch_sums),
        "rng": rng_states(),
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    path = Path(run_dir) / STATE_FILE
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_state(run_dir: Path) -> dict[str, Any] | None:
    """The saved state, or None if the run never saved one."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and how to proceed
        raise UserError(f"{path}: unreadable training state ({type(err).__name__}); delete it to restart the run from scratch") from None
