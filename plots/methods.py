"""Which records make each table row, and how each row is drawn.

The soup methods' rows, labels and styles come from their declaration (soups/registry.py); the rows picked
among the individual models are declared here. Every figure takes its colour, marker and label from
`style`, so a method looks the same everywhere.
"""

from __future__ import annotations

import re

from soups.registry import Row

# Rows chosen among the individual models (or computed from them), before the soup methods' rows.
PICKED_BEFORE: tuple[str, ...] = ("zeroshot", "lp_init", "best_individual", "second_best_individual", "oracle")
# Rows picked among one method's several records (WiSE-FT's α grid) rather than found by kind alone.
PICKED_ROWS = frozenset({*PICKED_BEFORE, "wise_ft"})

# Record `kind` -> role of the model among the individual models.
INIT_KINDS = {"zeroshot": "zeroshot", "lp": "lp_init"}
INDIVIDUAL_KIND = "individual"
WISE_FT_KIND = "wise_ft"
WISE_FT_DEFAULT_ALPHA = 0.5  # the WiSE-FT paper's default mixing coefficient; the table row uses it

# The individual models' looks; the soup methods declare theirs with the method (soups/registry.py). The
# official Figure 1's choices for the four methods it shows (mlfoundations/model-soups main.py), kept.
INDIVIDUAL_STYLES: dict[str, Row] = {
    row.name: row
    for row in (
        Row("individual", "Fine-tuned models (various hyperparameters)", "C2", "d", 110),
        Row("zeroshot", "Initialization (zero-shot)", "black", "p", 150),
        Row("lp_init", "Initialization (LP)", "slategray", "h", 150),
        Row("best_individual", "Best individual (held-out)", "C2", "D", 150),
        Row("second_best_individual", "Second-best individual (held-out)", "C2", "d", 110),
        Row("oracle", "Oracle (best per test set)", "gray", "x", 110),
        Row("chance", "Chance (most frequent class)", "lightgray", ".", 60),
    )
}


def method_rows() -> tuple[Row, ...]:
    """The rows the registered soup methods make, in registration order (the paper's, then later methods)."""
    from soups.methods import all_methods

    return tuple(row for method in all_methods().values() for row in method.rows)


def table_rows() -> tuple[str, ...]:
    """Table rows, in the paper's order (its ViT-B/32 table, Wortsman et al. 2022), then later methods."""
    return PICKED_BEFORE + tuple(row.name for row in method_rows())


def model_id_rows() -> tuple[str, ...]:
    """Rows that are one method's records each, found by `kind` (the soups stage names its row there) or model_id."""
    return tuple(row for row in table_rows() if row not in PICKED_ROWS)


def style(method: str) -> Row:
    """How every figure draws a row: its colour, marker and label (a method looks the same everywhere)."""
    found = INDIVIDUAL_STYLES.get(method) or next((row for row in method_rows() if row.name == method), None)
    return found or Row(method, method, "dimgray", "o", 140.0)


_ALPHA = re.compile(r"alpha[_=]?([0-9]*\.?[0-9]+)")


def wise_ft_alpha(model_id: str, alpha: object = None) -> float | None:
    """The mixing coefficient of a WiSE-FT record: its `alpha` field, else parsed from `wise_ft_alpha0.5`."""
    if alpha is not None and alpha == alpha:  # not None, not NaN
        return float(alpha)
    match = _ALPHA.search(model_id)
    return float(match.group(1)) if match else None
