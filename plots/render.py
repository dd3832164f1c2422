"""Figure output: the Agg backend, one look for every figure, atomic PNG + PDF writes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from models.atomic import atomic_path  # noqa: E402
from models.errors import UserError  # noqa: E402

FORMATS = ("png", "pdf")
# No creation date in PDFs, so rerunning a figure leaves an unchanged file byte for byte.
_METADATA = {"pdf": {"CreationDate": None}}
RC = {"font.size": 12, "axes.labelsize": 14, "axes.titlesize": 13, "legend.fontsize": 11, "savefig.dpi": 150}


def new_figure(ncols: int = 1, width: float = 8.0, height: float = 6.0) -> tuple[Figure, list]:
    # Text sizes are read when text is created, so the look is applied around the whole drawing (global rc).
    matplotlib.rcParams.update(RC)
    fig = plt.figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def save_figure(fig: Figure, out_dir: str | os.PathLike, name: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write `<out_dir>/<name>.<fmt>` for each format, each atomically, then close the figure."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"plots.formats: unknown format(s) {unknown}; choose from {list(FORMATS)}")
    paths = []
    try:
        for fmt in formats:
            path = Path(out_dir) / f"{name}.{fmt}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, bbox_inches="tight", metadata=_METADATA.get(fmt))
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
