"""Model soups: the library (`from soups import greedy_soup`) and the `python -m soups` stage.

The library (soups.library) works on plain state dicts or checkpoint paths, with no Hydra and no files:

    from soups import uniform_soup, greedy_soup, learned_soup, wise_ft, model_stock, ensemble
    soup = uniform_soup(["a/model.safetensors", "b/model.safetensors"])
    soup, chosen = greedy_soup(states, score=held_out_accuracy)
    towers, heads = split_heads(models_of_different_tasks)       # soups across tasks: average the towers, keep the heads
    report = basin_check(states, heldout_accuracies, names, init=theta0)   # the basin check; report.verdict in words

The stage's layout: `methods` (the methods behind one interface, picked by name), the math in `average`,
`greedy`, `learned`, `output_space` (ensembles), `stock` (Model Stock); ingredient resolution and checks in `ingredients` and
`checks`; the one place that reads weights in `streaming`; scoring in `scoring`; the stage in `stage`.
"""

from __future__ import annotations

import importlib
from typing import Any

LIBRARY = ("uniform_soup", "greedy_soup", "learned_soup", "wise_ft", "model_stock", "task_arithmetic", "split_heads", "ensemble")
DIAGNOSE = ("basin_check",)  # can these be souped at all? (soups.diagnose, `python -m soups diagnose`)
__all__ = list(LIBRARY + DIAGNOSE)


def __getattr__(name: str) -> Any:
    """Import the library on first use, so `python -m soups --help` does not pay for torch."""
    if name in LIBRARY:
        return getattr(importlib.import_module("soups.library"), name)
    if name in DIAGNOSE:
        return getattr(importlib.import_module("soups.diagnose"), name)
    raise AttributeError(f"module 'soups' has no attribute {name!r}")
