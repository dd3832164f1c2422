"""The figures `python -m plots figure=NAME` draws, declared once: each name, what it is drawn from, and the
two groups (`all`: every figure from records; `checkpoints`: every figure computed from checkpoints)."""

from __future__ import annotations

from models.errors import UserError

FROM_RECORDS = ("table", "findings", "fig1", "greedy", "wise_ft")  # read results records only
FROM_CHECKPOINTS = ("landscape", "angle", "approx", "soup_size")  # evaluate weight combinations (plots/compute.py)
GROUPS = {"all": FROM_RECORDS, "checkpoints": FROM_CHECKPOINTS}
CHOICES = (*GROUPS, *FROM_RECORDS, *FROM_CHECKPOINTS)


def wanted(figure: str) -> tuple[str, ...]:
    """The figures `figure=` asks for (a group, or one figure); the table is written whatever is asked."""
    if figure not in CHOICES:
        raise UserError(f"figure={figure}: unknown; choose from {', '.join(CHOICES)}")
    return GROUPS.get(figure, (figure,))
