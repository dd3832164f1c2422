"""Figures 3-5 and the random-subset soups: computed from checkpoints and data (cached), then drawn.

    python -m plots figure=landscape|angle|approx|soup_size|checkpoints results=<runs dir> [plots.init=...] [plots.models=...]

The checkpoints come from the records (`checkpoint.path` of the zeroshot/lp init and of the individual models,
best held-out first) unless plots.init / plots.models name them. Index 0 of the evaluator is always the init.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig
from torch.utils.data import Subset

from datasets import EvalSet, eval_sets
from models.atomic import write_text_atomic
from models.checkpoint import read_meta
from models.classifier import clip_for_checkpoint
from models.errors import UserError
from models.evaluate import resolve_device
from plots import figures
from plots.approx import agreement, pair_terms
from plots.evaluator import CombinationEvaluator, average, single
from plots.geometry import angle_degrees, flat_update, gram, plane_coefficients, plane_frame, plane_grid
from plots.methods import INIT_KINDS
from plots.render import save_figure
from plots.table import AVG, HELDOUT, ID, SetNames, individuals
from soups.greedy import greedy_select
from soups.library import sorted_by_score

log = logging.getLogger(__name__)
INIT = 0


def checkpoint_of(records: pd.DataFrame) -> dict[str, str]:
    """model_id -> checkpoint path, from the records' `checkpoint` field (the latest record wins)."""
    paths: dict[str, str] = {}
    if "checkpoint" not in records:
        return paths
    for model_id, checkpoint in zip(records["model_id"], records["checkpoint"]):
        if isinstance(checkpoint, dict) and checkpoint.get("path"):
            paths[str(model_id)] = str(checkpoint["path"])
    return paths


def resolve_checkpoints(cfg: DictConfig, records: pd.DataFrame, models: pd.DataFrame) -> tuple[str, list[str]]:
    """The init θ₀ and the fine-tuned checkpoints (best held-out first), from plots.init/plots.models or the records."""
    known = checkpoint_of(records)
    init = cfg.plots.init
    if init is None:
        for kind in INIT_KINDS:
            candidates = [m for m in models.index[models["kind"] == kind] if m in known]
            if candidates:
                init = known[candidates[0]]
                break
    if init is None:
        raise UserError("plots.init: the records name no zeroshot or lp checkpoint; pass plots.init=<path to the init's model.safetensors>")
    chosen = cfg.plots.models
    if chosen is None:
        paths = [known[m] for m in individuals(models).index if m in known]
    elif isinstance(chosen, str):
        paths = sorted(glob.glob(chosen))
    elif isinstance(chosen, (list, ListConfig)):
        paths = [str(p) for p in chosen]
    else:
        raise UserError(f"plots.models: expected a list or a glob, got {chosen!r}")
    for path in [init, *paths]:
        if not Path(path).exists():
            raise UserError(f"{path}: checkpoint not found (named by the records or plots.init/plots.models)")
    if len(paths) < 2:
        raise UserError(f"plots.models: need at least 2 fine-tuned checkpoints, found {len(paths)}")
    return str(init), paths


def _mean_shift(evaluator: CombinationEvaluator, combinations, shifts) -> np.ndarray:
    return np.mean([evaluator.accuracy(combinations, name) for name in shifts], axis=0)


def landscape(evaluator: CombinationEvaluator, sets: SetNames, points: int, margin: float) -> dict:
    """Error over the plane through θ₀ (init), θ₁, θ₂ (the two best fine-tuned models)."""
    g = gram([flat_update(evaluator.states[1], evaluator.states[INIT]), flat_update(evaluator.states[2], evaluator.states[INIT])])
    frame = plane_frame(g)
    xs, ys = plane_grid(frame, points, margin)
    combinations = []
    for y in ys:
        for x in xs:
            c0, c1, c2 = plane_coefficients(g, x, y)
            combinations.append(((INIT, c0), (1, c1), (2, c2)))
    shape = (len(ys), len(xs))
    id_error = 100 * (1 - np.array(evaluator.accuracy(combinations, sets.id))).reshape(shape)
    errors = {f"Test error, {sets.id} (id)": id_error}
    if sets.shifts:
        errors[f"Avg. error on {len(sets.shifts)} shifts"] = 100 * (1 - _mean_shift(evaluator, combinations, sets.shifts)).reshape(shape)
    return {"x": xs.tolist(), "y": ys.tolist(), "errors": {k: v.tolist() for k, v in errors.items()}, "points": frame}


def pair_accuracies(evaluator: CombinationEvaluator, sets: SetNames, count: int) -> pd.DataFrame:
    """For every pair of the first `count` fine-tuned models: the angle between their updates and the gain of
    their midpoint over the mean of the endpoints (fractions), on id, on the avg of the shifts and on held-out."""
    indices = list(range(1, min(count, len(evaluator.states) - 1) + 1))
    pairs = list(itertools.combinations(indices, 2))
    singles = [single(i) for i in indices]
    mids = [average(p) for p in pairs]
    columns = {ID: [sets.id], AVG: list(sets.shifts), HELDOUT: [sets.heldout] if sets.heldout else []}
    acc = {}
    for column, names in columns.items():
        if names:
            acc[column] = (_mean_shift(evaluator, singles, names), _mean_shift(evaluator, mids, names))
    updates = {i: flat_update(evaluator.states[i], evaluator.states[INIT]) for i in indices}
    rows = []
    for k, (i, j) in enumerate(pairs):
        row = {
            "model_i": evaluator.paths[i].parent.name,
            "model_j": evaluator.paths[j].parent.name,
            "angle_deg": angle_degrees(updates[i], updates[j]),
        }
        for column, (ends, mid) in acc.items():
            a, b = ends[indices.index(i)], ends[indices.index(j)]
            row[f"midpoint_{column}"] = mid[k]
            row[f"gain_{column}"] = mid[k] - (a + b) / 2
        rows.append(row)
    return pd.DataFrame(rows)


def soup_vs_ensemble(evaluator: CombinationEvaluator, set_name: str, count: int, alpha: float, step: float) -> pd.DataFrame:
    """The approximation's terms and the measured L_soup − L_ens for every pair of the first `count` models."""
    indices = list(range(1, min(count, len(evaluator.states) - 1) + 1))
    rows = []
    for i, j in itertools.combinations(indices, 2):
        combos = [single(i), single(j)] + [((i, 1 - a), (j, a)) for a in (alpha - step, alpha, alpha + step)]
        (f_i, labels), (f_j, _), (minus, _), (mid, _), (plus, _) = evaluator.logits(combos, set_name)
        terms = pair_terms(f_i, f_j, minus, mid, plus, labels, alpha, step)
        rows.append({"model_i": evaluator.paths[i].parent.name, "model_j": evaluator.paths[j].parent.name, **terms.__dict__})
    return pd.DataFrame(rows)


def greedy_indices(evaluator: CombinationEvaluator, candidates: list[int], heldout: str) -> list[int]:
    """The paper's Recipe 1 on held-out, by the soups library's greedy rule (official order and `gt`)."""
    own = evaluator.accuracy([single(i) for i in candidates], heldout)
    soup: list[int] = []

    def score(position: int, chunks: list) -> Iterator[tuple[float, int]]:  # one "example": the accuracy
        (accuracy,) = evaluator.accuracy([average([*soup, candidates[position]])], heldout)
        return iter([(accuracy, 1)])

    order = sorted_by_score(own)
    steps = greedy_select(order, own[order[0]], 1, score, lambda position: soup.append(candidates[position]))
    return [candidates[step.index] for step in steps if step.accepted]


def soup_sizes(evaluator: CombinationEvaluator, sets: SetNames, sizes: list[int], seeds: int) -> pd.DataFrame:
    """Uniform and greedy soups of random subsets of the fine-tuned models, scored on id and the shifts."""
    if not sets.heldout:
        raise UserError("plots: the greedy soup needs a held-out set; the data config has none")
    pool = list(range(1, len(evaluator.states)))
    rows = []
    for size in sorted({min(s, len(pool)) for s in sizes}):
        for seed in range(seeds if size < len(pool) else 1):
            subset = random.Random(1000 * seed + size).sample(pool, size)
            chosen = {"uniform_soup": subset, "greedy_soup": greedy_indices(evaluator, subset, sets.heldout)}
            for method, members in chosen.items():
                combination = [average(members)]
                rows.append(
                    {
                        "method": method,
                        "size": size,
                        "seed": seed,
                        "members": len(members),
                        ID: evaluator.accuracy(combination, sets.id)[0],
                        AVG: float(_mean_shift(evaluator, combination, sets.shifts)[0]) if sets.shifts else np.nan,
                    }
                )
    return pd.DataFrame(rows)


def subsample(eval_set: EvalSet, max_examples: int | None) -> EvalSet:
    """At most `max_examples` images, evenly spaced through the set (deterministic), for figures that evaluate
    dozens of models; None keeps the whole set."""
    n = len(eval_set.dataset)
    if max_examples is None or n <= int(max_examples):
        return eval_set
    indices = np.linspace(0, n - 1, int(max_examples)).round().astype(int).tolist()
    return dataclasses.replace(eval_set, dataset=Subset(eval_set.dataset, indices))


def _portable(path: str) -> str:
    """`path` relative to the working directory when it lies below it, so committed summaries name no machine."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(path)


def checkpoint_figures(cfg: DictConfig, records: pd.DataFrame, models: pd.DataFrame, sets: SetNames, out: Path, figure: str) -> list[str]:
    init, paths = resolve_checkpoints(cfg, records, models)
    _, preprocess, _ = clip_for_checkpoint(read_meta(init), init)
    data_sets = [subsample(s, cfg.plots.get("max_examples")) for s in eval_sets(cfg.data, preprocess)]
    roles = {s.role: s.name for s in data_sets if s.role != "shift"}
    sets = SetNames(roles.get("heldout"), roles.get("id"), tuple(s.name for s in data_sets if s.role == "shift"))
    device = resolve_device(str(cfg.device))
    evaluator = CombinationEvaluator(
        [init, *paths],
        data_sets,
        cfg.plots.cache,
        chunk=cfg.plots.chunk,
        batch_size=int(cfg.data.batch_size),
        workers=int(cfg.data.workers),
        device=device,
    )
    formats = list(cfg.plots.formats)
    wanted = ("landscape", "angle", "approx", "soup_size") if figure == "checkpoints" else (figure,)
    summary: dict = {"init": _portable(init), "models": [_portable(p) for p in paths]}
    if "landscape" in wanted:
        data = landscape(evaluator, sets, int(cfg.plots.grid), float(cfg.plots.margin))
        write_text_atomic(out / "fig3_error_landscape.json", json.dumps(data) + "\n")
        points = {k: tuple(v) for k, v in data["points"].items()}
        errors = {k: np.array(v) for k, v in data["errors"].items()}
        save_figure(
            figures.fig3_error_landscape(np.array(data["x"]), np.array(data["y"]), errors, points), out, "fig3_error_landscape", formats
        )
    if "angle" in wanted:
        pairs = pair_accuracies(evaluator, sets, int(cfg.plots.max_models))
        write_text_atomic(out / "fig4_angle_gain.csv", pairs.to_csv(index=False))
        panels = [(ID, f"{sets.id} (id)"), (AVG, f"Avg. of {len(sets.shifts)} shifts")] if sets.shifts else [(ID, sets.id)]
        save_figure(figures.fig4_angle_gain(pairs, panels), out, "fig4_angle_gain", formats)
    if "approx" in wanted:
        role = str(cfg.plots.approx_set)
        set_name = {"id": sets.id, "heldout": sets.heldout}.get(role)
        if not set_name:
            raise UserError(f"plots.approx_set={role}: expected heldout or id (and the data config must have that set)")
        pairs = soup_vs_ensemble(evaluator, set_name, int(cfg.plots.max_models), float(cfg.plots.alpha), float(cfg.plots.fd_step))
        correlation, signs = agreement(pairs["measured"].to_numpy(), pairs["approximation"].to_numpy())
        summary["approx"] = {"set": set_name, "pairs": len(pairs), "pearson_r": correlation, "sign_agreement": signs}
        write_text_atomic(out / "fig5_soup_vs_ensemble.csv", pairs.to_csv(index=False))
        save_figure(figures.fig5_soup_vs_ensemble(pairs, correlation, signs, set_name), out, "fig5_soup_vs_ensemble", formats)
    if "soup_size" in wanted:
        by_size = soup_sizes(evaluator, sets, [int(s) for s in cfg.plots.subset_sizes], int(cfg.plots.subset_seeds))
        write_text_atomic(out / "fig2_soup_size.csv", by_size.to_csv(index=False))
        save_figure(figures.fig2_soup_size(by_size, sets), out, "fig2_soup_size", formats)
    log.info("checkpoint figures: %d model x set evaluations run, the rest read from the cache", evaluator.forward_passes)
    write_text_atomic(out / "checkpoint_figures.json", json.dumps(summary, indent=1, default=str) + "\n")
    return []
