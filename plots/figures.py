"""Drawing: one function per figure, from plain tables. Computing what they show lives elsewhere
(plots.table for records, plots.approx / plots.geometry / plots.compute for checkpoints)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from plots.methods import INIT_KINDS, model_id_rows, style
from plots.render import new_figure
from plots.table import AVG, HELDOUT, ID, SetNames, individuals, method_mask

PERCENT = 100.0


def id_label(sets: SetNames) -> str:
    return "ImageNet accuracy (top-1, %)" if sets.id == "ImageNet" else f"In-distribution accuracy, {sets.id} (top-1, %)"


def shifts_label(sets: SetNames) -> str:
    return f"Avg. accuracy on {len(sets.shifts)} distribution shifts (%)"


def heldout_label(sets: SetNames) -> str:
    return f"Held-out accuracy, {sets.heldout} (top-1, %)"


def _scatter(ax, method: str, x, y, zorder: int = 3, **kwargs) -> None:
    look = style(method)
    ax.scatter(x, y, marker=look.marker, color=look.color, s=look.size, label=look.label, zorder=zorder, edgecolors="none", **kwargs)


def fig1_accuracy_vs_robustness(models: pd.DataFrame, sets: SetNames) -> Figure:
    """Fig. 1: id accuracy against avg-shift accuracy for every fine-tuned model, the inits, each soup and ensemble."""
    fig, (ax,) = new_figure(width=8, height=6)
    # Legend order as the official figure: soups first, then the init, then the cloud of fine-tuned models.
    for row in reversed(model_id_rows()):
        found = models[method_mask(models, row)]
        if len(found):
            _scatter(ax, row, found[ID] * PERCENT, found[AVG] * PERCENT, zorder=5)
    look = style("wise_ft")
    for k, (curve, wise) in enumerate(wise_ft_curves(models)):
        ax.plot(
            wise[ID] * PERCENT,
            wise[AVG] * PERCENT,
            color=look.color,
            marker=look.marker,
            markersize=7,
            lw=1.5,
            ls=LINESTYLES[k % len(LINESTYLES)],
            label=f"{look.label}{curve_label(curve, wise)} (α = 0…1)",
            zorder=4,
        )
    for kind, row in INIT_KINDS.items():
        inits = models[models["kind"] == kind]
        if len(inits):
            _scatter(ax, row, inits[ID] * PERCENT, inits[AVG] * PERCENT, zorder=4)
    pool = individuals(models)
    if len(pool):
        _scatter(ax, "individual", pool[ID] * PERCENT, pool[AVG] * PERCENT, zorder=3)
    ax.set_xlabel(id_label(sets))
    ax.set_ylabel(shifts_label(sets))
    ax.grid(alpha=0.6)
    ax.legend(loc="best", framealpha=0.9)  # the official figure's lower right, unless points sit there
    return fig


def fig2_greedy_trajectory(trajectory: pd.DataFrame, sets: SetNames) -> Figure:
    """Held-out accuracy along the greedy soup's trajectory (the paper's Recipe 1).

    `trajectory`: one row per candidate in the order tried: `candidate_heldout` (its own accuracy), `tried_heldout`
    (the soup with it added; NaN where exact early rejection stopped the evaluation), `soup_heldout` (the soup
    after the step) and `accepted`.
    """
    fig, (ax,) = new_figure(width=8, height=5)
    steps = np.arange(1, len(trajectory) + 1)
    accepted = trajectory["accepted"].to_numpy(bool)
    tried = trajectory["tried_heldout"].to_numpy(float) * PERCENT
    early = np.isnan(tried)
    look = style("individual")
    ax.scatter(
        steps, trajectory["candidate_heldout"] * PERCENT, marker=look.marker, color=look.color, s=50, label="Candidate alone", zorder=2
    )
    look = style("greedy_soup")
    ax.step(steps, trajectory["soup_heldout"] * PERCENT, where="post", color=look.color, lw=2, label="Greedy soup so far", zorder=3)
    ax.scatter(steps[accepted], tried[accepted], marker=look.marker, color=look.color, s=160, label="Soup + candidate: accepted", zorder=4)
    rejected = ~accepted & ~early
    ax.scatter(
        steps[rejected],
        tried[rejected],
        marker="o",
        facecolors="none",
        edgecolors="gray",
        s=60,
        label="Soup + candidate: rejected",
        zorder=4,
    )
    if early.any():
        # Their accuracy was never computed (evaluation stopped once they could not win): mark them on the axis.
        ax.scatter(
            steps[early],
            np.zeros(early.sum()) + 0.03,
            marker="x",
            color="gray",
            s=40,
            transform=ax.get_xaxis_transform(),
            label="Rejected early (not fully evaluated)",
            zorder=4,
        )
    ax.set_xlabel("Candidate (sorted by held-out accuracy, best first)")
    ax.set_ylabel(heldout_label(sets))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.6)
    ax.legend(loc="best", framealpha=0.9)
    return fig


def fig2_soup_size(by_size: pd.DataFrame, sets: SetNames) -> Figure:
    """Uniform against greedy soups of random subsets: accuracy (mean ± std over subsets) against the number of models.

    `by_size`: columns `method` (uniform_soup | greedy_soup), `size`, `seed`, `id`, `avg_shifts`.
    """
    fig, axes = new_figure(ncols=2, width=12, height=4.8)
    for ax, column, label in ((axes[0], ID, id_label(sets)), (axes[1], AVG, shifts_label(sets))):
        for k, (method, rows) in enumerate(by_size.groupby("method", sort=False)):
            stats = rows.groupby("size")[column].agg(["mean", "std"]).fillna(0.0) * PERCENT
            look = style(str(method))
            nudge = 1.0 + 0.03 * (k - 0.5)  # side by side on the log axis, so the error bars do not hide each other
            ax.errorbar(
                stats.index * nudge,
                stats["mean"],
                yerr=stats["std"],
                color=look.color,
                marker=look.marker,
                markersize=9,
                capsize=3,
                label=look.label,
            )
        ax.set_xscale("log", base=2)
        sizes = sorted(by_size["size"].unique())
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("Number of models in the random subset")
        ax.set_ylabel(label)
        ax.grid(alpha=0.6)
    axes[0].legend(loc="lower right", framealpha=0.9)
    return fig


def fig3_error_landscape(
    grid_x: np.ndarray, grid_y: np.ndarray, errors: dict[str, np.ndarray], points: dict[str, tuple[float, float]]
) -> Figure:
    """The paper's Fig. 2: test error over the plane through the init and two fine-tuned solutions, as contours.

    `errors`: panel title -> error in percent over the grid (shape [len(grid_y), len(grid_x)]);
    `points`: label -> plane coordinates of the init and the two solutions.
    """
    fig, axes = new_figure(ncols=len(errors), width=6.0 * len(errors), height=5.2)
    marks = {0: ("lp_init", "θ₀ (init)"), 1: ("individual", "θ₁"), 2: ("individual", "θ₂")}
    for ax, (title, values) in zip(axes, errors.items()):
        filled = ax.contourf(grid_x, grid_y, values, levels=12, cmap="viridis_r")
        lines = ax.contour(grid_x, grid_y, values, levels=filled.levels, colors="white", linewidths=0.5)
        ax.clabel(lines, lines.levels[::2], fontsize=8, fmt="%.1f")
        fig.colorbar(filled, ax=ax, label="Error (%)")
        for i, (_, (x, y)) in enumerate(points.items()):
            method, text = marks[min(i, 2)]
            look = style(method)
            ax.scatter([x], [y], marker=look.marker, color=look.color, s=150, edgecolors="white", zorder=5)
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(8, 8), color="white", fontsize=12, weight="bold")
            label.set_path_effects([patheffects.withStroke(linewidth=2.5, foreground="black")])
        ax.set_title(title)
        ax.set_xlabel("Along θ₁ − θ₀ (L2 distance)")
        ax.set_ylabel("Orthogonal, in the plane (L2 distance)")
    return fig


def fig4_angle_gain(pairs: pd.DataFrame, panels: Sequence[tuple[str, str]]) -> Figure:
    """The paper's Fig. 3: angle between the updates θᵢ−θ₀, θⱼ−θ₀ against the midpoint's accuracy gain.

    `pairs`: columns `angle_deg` and `gain_<column>` (percentage points) for each (column, title) in `panels`.
    """
    fig, axes = new_figure(ncols=len(panels), width=5.5 * len(panels), height=4.6)
    look = style("uniform_soup")
    for ax, (column, title) in zip(axes, panels):
        ax.scatter(
            pairs["angle_deg"],
            pairs[f"gain_{column}"] * PERCENT,
            marker=look.marker,
            color=look.color,
            s=60,
            label="Pair of fine-tuned models",
        )
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("Angle between the two updates (degrees)")
        ax.set_ylabel("Midpoint gain over mean of endpoints (pp)")
        ax.grid(alpha=0.6)
    axes[0].legend(loc="best", framealpha=0.9)
    return fig


def fig5_soup_vs_ensemble(pairs: pd.DataFrame, correlation: float, sign_agreement: float, set_name: str) -> Figure:
    """Measured L_soup − L_ens at α against the paper's approximation, one point per pair."""
    fig, (ax,) = new_figure(width=6.5, height=6)
    measured, predicted = pairs["measured"].to_numpy(), pairs["approximation"].to_numpy()
    look = style("uniform_soup")
    ax.scatter(predicted, measured, marker=look.marker, color=look.color, s=60, label="Pair of fine-tuned models", zorder=3)
    low = float(min(measured.min(), predicted.min(), 0.0))
    high = float(max(measured.max(), predicted.max(), 0.0))
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", lw=1, ls="--", label="y = x")
    ax.axhline(0.0, color="gray", lw=0.6)
    ax.axvline(0.0, color="gray", lw=0.6)
    ax.set_xlabel("Approximation α(1−α)/2·(−L″ + β²·E Var[Δf]) (nats)")
    ax.set_ylabel(f"Measured L_soup − L_ens on {set_name} (nats)")
    corr = "n/a" if math.isnan(correlation) else f"{correlation:.2f}"
    ax.set_title(f"Pearson r = {corr}, sign agreement = {sign_agreement * PERCENT:.0f}% ({len(pairs)} pairs)")
    ax.grid(alpha=0.6)
    ax.legend(loc="best", framealpha=0.9)
    return fig


LINESTYLES = ("-", "--", ":", "-.")


def wise_ft_curves(models: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Each WiSE-FT curve (one soups run's α grid), its records sorted by α."""
    wise = models[models["alpha"].notna()]
    curves = wise["wise_ft_curve"] if "wise_ft_curve" in wise else pd.Series("wise_ft", index=wise.index)
    return [(str(curve), rows.sort_values("alpha")) for curve, rows in wise.groupby(curves.fillna("wise_ft"), sort=True)]


def curve_label(curve: str, wise: pd.DataFrame) -> str:
    """': <run> (to <endpoint>)' where the records name the fine-tuned endpoint."""
    ends = wise["wise_ft_to"].dropna() if "wise_ft_to" in wise else pd.Series(dtype=object)
    to = str(ends.iloc[0]) if len(ends) else ""
    to = "best individual" if to.startswith("best on held-out") else Path(to).parent.name if to.endswith(".safetensors") else to
    return f": {curve}" + (f" (to {to})" if to else "")


def fig6_wise_ft(models: pd.DataFrame, sets: SetNames) -> Figure:
    """WiSE-FT: accuracy on id, on each shift and on their average against the mixing coefficient α, one line
    style per curve (θ0 to each fine-tuned endpoint)."""
    fig, axes = new_figure(ncols=2, width=12, height=4.8)
    look = style("wise_ft")
    colours = [f"C{i}" for i in range(10)]
    for k, (curve, wise) in enumerate(wise_ft_curves(models)):
        ls, name = LINESTYLES[k % len(LINESTYLES)], curve_label(curve, wise)
        axes[0].plot(wise["alpha"], wise[ID] * PERCENT, color=look.color, marker=look.marker, lw=2, ls=ls, label=f"{sets.id} (id){name}")
        axes[0].plot(wise["alpha"], wise[AVG] * PERCENT, color="black", marker=look.marker, lw=2, ls=ls, label=f"Avg. of the shifts{name}")
        if wise[HELDOUT].notna().any():
            axes[0].plot(
                wise["alpha"], wise[HELDOUT] * PERCENT, color="gray", marker=".", lw=1, ls=ls, label=f"{sets.heldout} (held-out){name}"
            )
        for i, shift in enumerate(sets.shifts):
            label = shift if k == 0 else None
            axes[1].plot(wise["alpha"], wise[shift] * PERCENT, color=colours[i % 10], marker=".", lw=1.5, ls=ls, label=label)
    axes[0].set_ylabel("Accuracy (top-1, %)")
    axes[1].set_ylabel("Accuracy on each shift (top-1, %)")
    for ax in axes:
        ax.set_xlabel("α (0 = zero-shot/init, 1 = fine-tuned)")
        ax.grid(alpha=0.6)
        ax.legend(loc="best", framealpha=0.9, fontsize=9)
    return fig
