"""The basin check (`python -m soups diagnose ingredients=...`): can these ingredients be souped at all?

A soup helps when its ingredients lie in one low-error basin (paper §3, Fig. 2-3): then the midpoint of two
of them is at least as accurate as its endpoints. The check measures, on the held-out set, each
ingredient and the midpoint of every pair, the angle between their updates θ_i − θ₀ (from their Gram matrix),
and says in words what separates them: ingredients from different initialisations, learning rates large
enough to leave the basin, or a held-out set too small to tell the models apart. While a greedy soup holds
only the best ingredient, each candidate it tries is that ingredient's midpoint with another, so
`greedy_would_add` says exactly whether it keeps only one model (with the default strict `accept=gt`).

`basin_check` is the pure function over state dicts and an accuracy callback; `run_diagnose` is the stage.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soups.average import combine

log = logging.getLogger(__name__)

State = Mapping[str, torch.Tensor]
MIN_BARRIER = 0.02  # a midpoint this much (2 pp) below its endpoints' mean leaves the basin, unless noise is larger
COARSE = 0.05  # a held-out set that cannot resolve 5 pp is too small to tell ingredients or barriers apart


@dataclasses.dataclass
class Pair:
    i: int
    j: int
    midpoint: float  # held-out accuracy of (θ_i + θ_j) / 2
    endpoints: float  # mean held-out accuracy of θ_i and θ_j
    angle: float | None  # degrees between θ_i − θ₀ and θ_j − θ₀, when θ₀ is known

    @property
    def gap(self) -> float:
        """Midpoint minus the endpoints' mean: ≥ 0 inside one basin, strongly negative across a barrier."""
        return self.midpoint - self.endpoints


@dataclasses.dataclass
class BasinReport:
    names: list[str]
    accuracy: list[float]  # held-out accuracy of each ingredient
    n: int  # held-out examples
    pairs: list[Pair]
    basins: list[list[int]]  # groups joined by barrier-free midpoints, largest first
    init_ids: list[str]  # each ingredient's recorded initialisation
    lrs: list[float | None]
    tolerance: float  # the gap below which a midpoint counts as a barrier
    resolution: float  # two standard errors of a difference of two held-out accuracies
    verdict: list[str]
    chance: float | None = None  # the held-out accuracy of guessing (1 / classes), when known

    def to_json(self) -> dict[str, Any]:
        return {
            "ingredients": [
                {"name": n, "heldout": a, "init": i, "lr": lr} for n, a, i, lr in zip(self.names, self.accuracy, self.init_ids, self.lrs)
            ],
            "n_heldout": self.n,
            "pairs": [
                {"i": p.i, "j": p.j, "midpoint": p.midpoint, "endpoints": p.endpoints, "gap": p.gap, "angle": p.angle} for p in self.pairs
            ],
            "basins": [[self.names[k] for k in b] for b in self.basins],
            "tolerance": self.tolerance,
            "resolution": self.resolution,
            "chance": self.chance,
            "at_chance": [self.names[k] for k in at_chance(self)],
            "verdict": self.verdict,
        }


def difference_resolution(accuracy: float, n: int) -> float:
    """Two binomial standard errors of the difference of two accuracies near `accuracy` on n examples."""
    return 2 * math.sqrt(2 * accuracy * (1 - accuracy) / max(n, 1))


def basins(count: int, pairs: Sequence[Pair], tolerance: float) -> list[list[int]]:
    """Groups of ingredients whose midpoints show no barrier, largest first: average-linkage clustering that
    joins two groups while the mean gap of the midpoints across them is within `tolerance` (one noisy pair
    cannot bridge two basins)."""
    gap = {(p.i, p.j): p.gap for p in pairs} | {(p.j, p.i): p.gap for p in pairs}
    groups = [[k] for k in range(count)]

    def mean_gap(a: list[int], b: list[int]) -> float:
        gaps = [gap[i, j] for i in a for j in b if (i, j) in gap]
        return float(np.mean(gaps)) if gaps else -math.inf

    while len(groups) > 1:
        score, x, y = max((mean_gap(a, b), x, y) for x, a in enumerate(groups) for y, b in enumerate(groups) if x < y)
        if score < -tolerance:
            break
        groups[x] = sorted(groups[x] + groups.pop(y))
    return sorted(groups, key=lambda g: (-len(g), g))


def greedy_would_add(accuracy: Sequence[float], pairs: Sequence[Pair]) -> list[int]:
    """Ingredients whose midpoint with the best one beats the best alone: greedy adds the first of them it
    tries, and keeps only the best model when there is none."""
    best = int(np.argmax(accuracy))
    return [p.j if p.i == best else p.i for p in pairs if best in (p.i, p.j) and p.midpoint > accuracy[best]]


def _pp(x: float) -> str:
    return f"{100 * x:.1f} pp"


def _names(names: Sequence[str], members: Sequence[int], limit: int = 4) -> str:
    shown = ", ".join(names[k] for k in members[:limit])
    return shown + (f" and {len(members) - limit} more" if len(members) > limit else "")


def chance_margin(chance: float, n: int) -> float:
    """Two standard errors of an accuracy of `n` guesses at `chance`: above chance + this, a model does better than guessing."""
    return 2 * math.sqrt(chance * (1 - chance) / n)


def at_chance(report: BasinReport) -> list[int]:
    """Ingredients whose held-out accuracy is not above chance by more than two standard errors (or is below it)."""
    if report.chance is None:
        return []
    limit = report.chance + chance_margin(report.chance, report.n)
    return [k for k, a in enumerate(report.accuracy) if a <= limit]


def verdict(report: BasinReport) -> list[str]:
    """The findings in words, most important first."""
    names, acc, pairs = report.names, report.accuracy, report.pairs
    lines = []
    guessing = at_chance(report)
    if guessing:
        chance = f"chance is {100 * report.chance:.1f}% (±{_pp(chance_margin(report.chance, report.n))} on {report.n} images)"
        if len(guessing) == len(names):
            return [
                f"All {len(names)} ingredients are at chance on the held-out set (best {100 * max(acc):.1f}%; {chance}): "
                "these models cannot do this task, so there is nothing to soup; see docs/your_dataset.md for what the model can read."
            ]
        lines.append(
            f"{len(guessing)} of {len(names)} ingredients are at chance on the held-out set ({_names(names, guessing)}; {chance}): "
            "they cannot do this task; leave them out of any soup."
        )
    main, others = report.basins[0], [k for b in report.basins[1:] for k in b]
    inits = sorted(set(report.init_ids))
    if not others:
        mean_gap = float(np.mean([p.gap for p in pairs])) if pairs else 0.0
        soupable = "so they can be souped" if not guessing else f"so the {len(names) - len(guessing)} above chance can be souped"
        lines.append(
            f"All {len(names)} ingredients share one basin: no midpoint is more than {_pp(report.tolerance)} below its endpoints "
            f"(on average {mean_gap * 100:+.1f} pp), {soupable}."
        )
        if len(inits) > 1:
            lines.append(f"Their recorded initialisations differ ({'; '.join(inits[:3])}), yet no midpoint shows a barrier.")
    else:
        across = [p.gap for p in pairs if (p.i in main) != (p.j in main)]
        lines.append(
            f"{len(others)} of {len(names)} ingredients leave the shared basin ({_names(names, others)}): their midpoints with the "
            f"{len(main)} others are {_pp(-float(np.mean(across)))} worse than their endpoints."
            if len(main) > 1
            else f"The {len(names)} ingredients share no basin: midpoints are {_pp(-float(np.mean(across)))} worse than their endpoints."
        )
        if len(inits) > 1:
            lines.append(
                f"They were fine-tuned from {len(inits)} different initialisations ({'; '.join(inits[:3])}): soups need one shared "
                "init (the paper fine-tunes every ingredient from the same zero-shot or LP init)."
            )
        lr_out = [report.lrs[k] for k in others if report.lrs[k] is not None]
        lr_main = [report.lrs[k] for k in main if report.lrs[k] is not None]
        if lr_out and lr_main and min(lr_out) > max(lr_main):
            lines.append(
                f"They were fine-tuned with lr ≥ {min(lr_out):.2g} (the others with lr ≤ {max(lr_main):.2g}): "
                "a learning rate that large leaves the pretrained basin; narrow the sweep's lr range."
            )
    added = greedy_would_add(acc, pairs)
    best = int(np.argmax(acc))
    tied = [k for k, a in enumerate(acc) if a == acc[best]]
    best_name = names[best] if len(tied) == 1 else f"one of {_names(names, tied)} (tied)"
    if len(names) > 1:
        if added:
            lines.append(
                f"A greedy soup keeps more than {best_name} ({100 * acc[best]:.1f}%): the midpoints of {names[best]} with "
                f"{len(added)} of the {len(names) - 1} others are better on the held-out set."
            )
        else:
            lines.append(
                f"A greedy soup keeps only {best_name} ({100 * acc[best]:.1f}%): the midpoint of {names[best]} with every other "
                "ingredient is no better on the held-out set."
            )
    spread = sorted(acc, reverse=True)
    top_gap = spread[0] - spread[1] if len(spread) > 1 else math.inf
    if report.resolution > COARSE:
        lines.append(
            f"The held-out set ({report.n} images) resolves only differences above {_pp(report.resolution)} (2 standard errors): "
            "greedy's choices and this check are partly noise; hold out more images (data.heldout_fraction / heldout_per_class)."
        )
    elif top_gap < report.resolution:
        lines.append(
            f"The two best ingredients differ by {_pp(top_gap)} on the held-out set, less than it resolves "
            f"({_pp(report.resolution)}, 2 standard errors of {report.n} images): which one greedy starts from is chance."
        )
    return lines


def basin_check(
    states: Sequence[State],
    heldout_accuracies: Callable[[Sequence[State]], Sequence[tuple[int, int]]],
    names: Sequence[str],
    init: State | None = None,
    init_ids: Sequence[str] | None = None,
    lrs: Sequence[float | None] | None = None,
    max_ingredients: int | None = None,
    chunk: int = 8,
    chance: float | None = None,
) -> BasinReport:
    """Score the ingredients and every pair's midpoint with `heldout_accuracies` (states → (correct, n) each),
    measure update angles relative to `init` when given, and explain the result. Only the `max_ingredients`
    best on the held-out set are paired (pairs grow with the square); `chunk` midpoints exist at a time.
    `chance` (1 / classes): ingredients not above it are named as unable to do the task, never as soupable."""
    scores = heldout_accuracies(states)
    if max_ingredients is not None and len(states) > max_ingredients:
        keep = sorted(np.argsort([-c / m for c, m in scores], kind="stable")[:max_ingredients].tolist())
        log.info("pairing the %d best of %d ingredients (diagnose.max_ingredients)", len(keep), len(states))
        states, names, scores = [states[k] for k in keep], [names[k] for k in keep], [scores[k] for k in keep]
        init_ids = [init_ids[k] for k in keep] if init_ids is not None else None
        lrs = [lrs[k] for k in keep] if lrs is not None else None
    n = scores[0][1]
    accuracy = [c / m for c, m in scores]
    index_pairs = list(itertools.combinations(range(len(states)), 2))
    midpoints = []
    for start in range(0, len(index_pairs), chunk):
        group = [combine([states[i], states[j]], [0.5, 0.5]) for i, j in index_pairs[start : start + chunk]]
        midpoints += [c / m for c, m in heldout_accuracies(group)]
    gram_matrix = update_gram(states, init) if init is not None else None
    pairs = [
        Pair(i, j, mid, (accuracy[i] + accuracy[j]) / 2, gram_angle_degrees(gram_matrix, i, j) if gram_matrix is not None else None)
        for (i, j), mid in zip(index_pairs, midpoints)
    ]
    resolution = difference_resolution(float(np.mean(accuracy)), n)
    tolerance = max(MIN_BARRIER, resolution)
    report = BasinReport(
        names=list(names),
        accuracy=accuracy,
        n=n,
        pairs=pairs,
        basins=basins(len(states), pairs, tolerance),
        init_ids=list(init_ids) if init_ids is not None else ["unrecorded"] * len(states),
        lrs=list(lrs) if lrs is not None else [None] * len(states),
        tolerance=tolerance,
        resolution=resolution,
        verdict=[],
        chance=chance,
    )
    report.verdict = verdict(report)
    return report


def update_gram(states: Sequence[State], init: State) -> np.ndarray:
    """⟨θ_i − θ₀, θ_j − θ₀⟩ over every floating-point tensor, accumulated one tensor at a time (float64), so
    that no flattened update of a large model is ever held."""
    total = np.zeros((len(states), len(states)))
    for key in sorted(init):
        if init[key].is_floating_point():
            deltas = torch.stack([(s[key].double() - init[key].double()).flatten() for s in states])
            total += (deltas @ deltas.T).numpy()
    return total


def gram_angle_degrees(gram_matrix: np.ndarray, i: int, j: int) -> float | None:
    """The angle between updates i and j from their Gram matrix; None when either update is zero."""
    norms = gram_matrix[i, i] * gram_matrix[j, j]
    if norms <= 0:
        return None
    return math.degrees(math.acos(max(-1.0, min(1.0, gram_matrix[i, j] / math.sqrt(norms)))))


# --- the stage ---------------------------------------------------------------------------------------


def init_identity(meta: Any, path: Path) -> str:
    """Which initialisation a checkpoint was fine-tuned from, as recorded in its metadata."""
    hparams = meta.hparams or {}
    if meta.kind in ("zeroshot", "lp"):  # the init itself
        return str(path.resolve()) if meta.kind == "lp" else f"zero-shot head on {meta.pretrained}"
    if hparams.get("lp_init_from"):
        return str(Path(hparams["lp_init_from"]).resolve())
    if hparams.get("source"):  # imported official checkpoints: all from OpenAI CLIP's LP init
        return str(hparams["source"])
    return f"{hparams.get('init', 'unrecorded')} init on {hparams.get('parent_pretrained', meta.pretrained)}"


def render_figure(report: BasinReport, path: Path) -> None:
    """Midpoint gaps (pp) and update angles (degrees) as two small matrices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(report.names)
    gap, angle = np.full((k, k), np.nan), np.full((k, k), np.nan)
    for p in report.pairs:
        gap[p.i, p.j] = gap[p.j, p.i] = 100 * p.gap
        if p.angle is not None:
            angle[p.i, p.j] = angle[p.j, p.i] = p.angle
    panels = [("Midpoint − endpoints (pp)", gap, "RdBu")] + (
        [("Angle between updates (°)", angle, "viridis")] if np.isfinite(angle).any() else []
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.6, 3.4), squeeze=False)
    labels = report.names
    for ax, (title, matrix, cmap) in zip(axes[0], panels):
        bound = np.nanmax(np.abs(matrix)) if np.isfinite(matrix).any() else 1.0
        image = ax.imshow(matrix, cmap=cmap, vmin=-bound if cmap == "RdBu" else None, vmax=bound if cmap == "RdBu" else None)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(k), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(k), labels, fontsize=6)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def report_markdown(report: BasinReport) -> str:
    lines = [
        "# Basin check",
        "",
        *[f"- {line}" for line in report.verdict],
        "",
        "| ingredient | held-out (%) | init | lr |",
        "|---|---:|---|---:|",
    ]
    for name, acc, init, lr in zip(report.names, report.accuracy, report.init_ids, report.lrs):
        lines.append(f"| {name} | {100 * acc:.2f} | {init} | {'' if lr is None else f'{lr:.3g}'} |")
    lines += ["", "| pair | midpoint (%) | endpoints (%) | gap (pp) | angle (°) |", "|---|---:|---:|---:|---:|"]
    for p in report.pairs:
        angle = "" if p.angle is None else f"{p.angle:.1f}"
        lines.append(
            f"| {report.names[p.i]} + {report.names[p.j]} | {100 * p.midpoint:.2f} | {100 * p.endpoints:.2f} | {100 * p.gap:+.2f} | {angle} |"
        )
    return "\n".join(lines) + "\n"


def run_diagnose(cfg: Any, out: Path) -> BasinReport:
    """Resolve the ingredients (and θ₀), score them and their midpoints on the held-out set, write
    basin.md, basin.json and basin.png into the run folder (after everything is computed)."""
    from models.atomic import write_text_atomic
    from models.errors import UserError
    from models.evaluate import resolve_device
    from soups.checks import check_compatible
    from soups.ingredients import describe, resolve_ingredients
    from soups.scoring import Scorer
    from soups.stage import loader_kwargs
    from soups.streaming import load_state

    ingredients = resolve_ingredients(cfg.ingredients, cfg.model)
    if len(ingredients) < 2:
        raise UserError("ingredients: the basin check compares pairs; give at least two checkpoints")
    check_compatible([ing.spec() for ing in ingredients])
    init_ids = [init_identity(ing.meta, ing.path) for ing in ingredients]
    init_path = cfg.diagnose.get("init")
    if not init_path and len(set(init_ids)) == 1 and Path(init_ids[0]).is_file():
        init_path = init_ids[0]  # the one LP init they all record (or are)
    init = None
    if init_path:
        if not Path(str(init_path)).is_file():
            raise UserError(f"diagnose.init: {init_path}: no such checkpoint")
        check_compatible([ingredients[0].spec(), describe(Path(str(init_path)), cfg.model).spec()])
        init = load_state(str(init_path))
    else:
        log.info("no shared init recorded or given (diagnose.init=...): update angles are left out")
    device = resolve_device(str(cfg.device))
    scorer = Scorer(ingredients[0].meta, cfg.data, [cfg.data.heldout], device, loader_kwargs(cfg.eval))
    chunk = int(cfg.diagnose.get("eval_chunk", 8))

    def heldout_accuracies(states: Sequence[State]) -> list[tuple[int, int]]:
        return [s for start in range(0, len(states), chunk) for s in scorer.accuracies(states[start : start + chunk], scorer.heldout)]

    states = [load_state(ing.path) for ing in ingredients]
    lrs = [ing.meta.hparams.get("lr") if ing.meta.kind == "individual" else None for ing in ingredients]
    # run folders relative to their common parent: model_3, or finetune/model_3 and inits/lp
    folders = [ing.path.resolve().parent for ing in ingredients]
    common = Path(os.path.commonpath(folders)) if len(set(folders)) == len(folders) else None
    names = [str(f.relative_to(common)) if common is not None else ing.name for f, ing in zip(folders, ingredients)]
    chance = 1 / ingredients[0].meta.num_classes
    report = basin_check(states, heldout_accuracies, names, init, init_ids, lrs, cfg.diagnose.get("max_ingredients"), chunk, chance)
    for line in report.verdict:
        log.info("%s", line)
    render_figure(report, out / "basin.png")
    write_text_atomic(out / "basin.json", json.dumps(report.to_json(), indent=1))
    write_text_atomic(out / "basin.md", report_markdown(report))
    print("\n".join(report.verdict))
    return report
