"""The one table of methods: which records make each table row, and how each method is drawn.

Every figure takes its colour, marker and label from `STYLES`, so a method looks the same everywhere.
Row names follow the soups stage's `model_id`s (soups/): `uniform_soup`, `greedy_soup`, ... .
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Style:
    label: str
    color: str
    marker: str
    size: float = 140.0  # scatter marker area (pt^2)


# Table rows, in the paper's order (its ViT-B/32 table, Wortsman et al. 2022), then later methods.
ROWS: tuple[str, ...] = (
    "zeroshot",
    "lp_init",
    "best_individual",
    "second_best_individual",
    "oracle",
    "uniform_soup",
    "greedy_soup",
    "greedy_soup_random_order",
    "learned_soup",
    "learned_soup_by_layer",
    "ensemble",
    "greedy_ensemble",
    "wise_ft",
    "model_stock",
)

# Rows that are one method's records each, found by `kind` (the soups stage names its row there) or model_id;
# the others are picked among the individual models (or, for wise_ft, among its α grid).
PICKED_ROWS = frozenset({"zeroshot", "lp_init", "best_individual", "second_best_individual", "oracle", "wise_ft"})
MODEL_ID_ROWS: tuple[str, ...] = tuple(row for row in ROWS if row not in PICKED_ROWS)

# Record `kind` -> role of the model among the individual models.
INIT_KINDS = {"zeroshot": "zeroshot", "lp": "lp_init"}
INDIVIDUAL_KIND = "individual"
WISE_FT_KIND = "wise_ft"
WISE_FT_DEFAULT_ALPHA = 0.5  # the WiSE-FT paper's default mixing coefficient; the table row uses it

# The official Figure 1's choices for the four methods it shows (mlfoundations/model-soups main.py), kept.
STYLES: dict[str, Style] = {
    "individual": Style("Fine-tuned models (various hyperparameters)", "C2", "d", 110),
    "zeroshot": Style("Initialization (zero-shot)", "black", "p", 150),
    "lp_init": Style("Initialization (LP)", "slategray", "h", 150),
    "best_individual": Style("Best individual (held-out)", "C2", "D", 150),
    "second_best_individual": Style("Second-best individual (held-out)", "C2", "d", 110),
    "oracle": Style("Oracle (best per test set)", "gray", "x", 110),
    "uniform_soup": Style("Uniform soup", "C0", "o", 200),
    "greedy_soup": Style("Greedy soup", "C4", "*", 400),
    "greedy_soup_random_order": Style("Greedy soup (random order)", "C9", "P", 200),
    "learned_soup": Style("Learned soup", "C1", "s", 170),
    "learned_soup_by_layer": Style("Learned soup (by layer)", "C3", "v", 180),
    "ensemble": Style("Ensemble", "C5", "^", 180),
    "greedy_ensemble": Style("Greedy ensemble", "C6", ">", 180),
    "wise_ft": Style("WiSE-FT", "C8", "X", 170),
    "model_stock": Style("Model Stock", "teal", "8", 170),
    "chance": Style("Chance (most frequent class)", "lightgray", ".", 60),
}


def style(method: str) -> Style:
    return STYLES.get(method, Style(method, "dimgray", "o"))


_ALPHA = re.compile(r"alpha[_=]?([0-9]*\.?[0-9]+)")


def wise_ft_alpha(model_id: str, alpha: object = None) -> float | None:
    """The mixing coefficient of a WiSE-FT record: its `alpha` field, else parsed from `wise_ft_alpha0.5`."""
    if alpha is not None and alpha == alpha:  # not None, not NaN
        return float(alpha)
    match = _ALPHA.search(model_id)
    return float(match.group(1)) if match else None
