"""Shared fixtures. Tests are CPU-only and make the files they need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "reference" / "model-soups-official"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def reference_dir() -> Path:
    """The official model-soups results, read in place; tests skip when they are absent."""
    if not (REFERENCE / "individual_model_results.jsonl").exists():
        pytest.skip(f"official reference data not present at {REFERENCE}")
    return REFERENCE


def mark_done(*run_dirs: Path) -> None:
    """Mark run folders finished, as the stage wrapper does last (readers skip records of unfinished runs)."""
    for run_dir in run_dirs:
        (Path(run_dir) / "DONE").write_text("")


def run_module(module: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m module args...` from the repo root, capturing output."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, env=full_env, timeout=timeout)
