"""Every soup method behind one interface, picked by name (`soup=<name>`, conf/soup/<name>.yaml).

A method is a function `(SoupContext) -> SoupOutcome`. It reads ingredients only through the context
(streaming, one checkpoint or one layer at a time) and scores through its evaluate callbacks; it writes
no file. The stage (soups.stage) evaluates the outcome's models on the sets and writes everything.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from models.checkpoint import sha256_prefix
from models.errors import UserError
from models.heads import image_tower, is_head_key
from models.schemas import GreedyParams, LearnedParams, TaskArithmeticParams, WiseFTParams
from soups import average, greedy, learned, library, output_space, stock
from soups.ingredients import Ingredient, recorded_heldout
from soups.registry import METHODS, Method, Row, register
from soups.scoring import Scorer
from soups.streaming import BackgroundHashes, iter_ingredient_tensors, iter_layers, load_state

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


@dataclasses.dataclass
class Candidate:
    """One model the stage evaluates and records: a weight-space state, or an ensemble of members."""

    model_id: str
    state: StateDict | None = None
    members: list[int] | None = None  # ensemble members (ingredient indices) when state is None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # added to each results record


@dataclasses.dataclass
class SoupOutcome:
    kind: str  # the results records' kind, one row of the main table (e.g. greedy_soup)
    candidates: list[Candidate]
    checkpoint: StateDict | None = None  # written to <out>/model.safetensors
    weights: list[float] | None = None  # per ingredient, for the checkpoint metadata
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_weight: float | None = None  # weight of the init checkpoint (wise_ft, model_stock)
    members: list[int] | None = None  # the ingredients the soup is made of (the greedy soup's selection); None: all
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> text, written to <out>/


@dataclasses.dataclass
class SoupContext:
    ingredients: list[Ingredient]
    params: Any  # cfg.soup as its method's dataclass (models/schemas.py, through soups.config.soup_params)
    run_name: str
    seed: int
    device: torch.device
    make_scorer: Callable[[], Scorer]
    init: Ingredient | None = None  # the zero-shot / LP init (wise_ft, model_stock)
    hashes: BackgroundHashes | None = None
    _scorer: Scorer | None = None
    # across tasks (soup.across_tasks): ingredients are read without their heads (only image towers are souped);
    # the Scorer and the written checkpoint add the one head of the stage's data (soups.stage.AcrossTasks)
    across: Any = None

    @property
    def across_tasks(self) -> bool:
        return self.across is not None

    def sha256(self, path: Path) -> str:
        return self.hashes.get(path) if self.hashes is not None else sha256_prefix(path)

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            self._scorer = self.make_scorer()
        return self._scorer

    def stream(self, index: int, borrowed: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """One ingredient, tensor by tensor; `borrowed` tensors are only valid until the next is read."""
        pairs = iter_ingredient_tensors(self.ingredients[index].path, borrowed=borrowed)
        return ((k, v) for k, v in pairs if not is_head_key(k)) if self.across_tasks else pairs

    def load(self, index: int) -> StateDict:
        return self._soupable(load_state(self.ingredients[index].path))

    def load_init(self) -> StateDict:
        if self.init is None:
            raise UserError(
                f"soup.init: {self.params.name} needs the zero-shot (or LP) init checkpoint; pass soup.init=/path/to/model.safetensors"
            )
        return self._soupable(load_state(self.init.path))

    def layers(self, indices: list[int]) -> Iterator[tuple[str, list[torch.Tensor]]]:
        """The ingredients `indices` layer by layer (soups.streaming.iter_layers), without heads across tasks."""
        layers = iter_layers([self.ingredients[i].path for i in indices])
        return ((k, v) for k, v in layers if not is_head_key(k)) if self.across_tasks else layers

    def _soupable(self, state: StateDict) -> StateDict:
        return image_tower(state) if self.across_tasks else state

    def heldout_correct(self) -> list[int]:
        """Each ingredient's held-out correct count: from its run's results records, else computed."""
        scorer, n = self.scorer, self.scorer.n_heldout
        # across tasks an ingredient's own record scored its own task's head, not the one the soup is scored with
        recorded = [None if self.across_tasks else recorded_heldout(ing, scorer.heldout.name, n, self.sha256) for ing in self.ingredients]
        counts: list[int | None] = recorded
        missing = [i for i, c in enumerate(counts) if c is None]
        log.info("held-out accuracy: %d ingredient(s) from results records, %d to compute", len(counts) - len(missing), len(missing))
        chunk = self.params.eval_chunk
        for start in range(0, len(missing), chunk):
            group = missing[start : start + chunk]
            for index, (correct, _) in zip(group, scorer.accuracies([self.load(i) for i in group], scorer.heldout)):
                counts[index] = correct
        return [int(c) for c in counts]  # type: ignore[arg-type]

    def order(self, correct: list[int]) -> list[int]:
        """Candidates by held-out accuracy, best first (paper, Recipe 1), or shuffled (`soup.order=random`)."""
        if self.params.order == "random":
            indices = list(range(len(correct)))
            random.Random(self.seed).shuffle(indices)
            return indices
        return library.sorted_by_score(correct)


def _uniform_state(ctx: SoupContext, indices: list[int]) -> StateDict:
    running = average.RunningSum(_accumulate_dtype(ctx))
    for i in indices:
        running.add(ctx.stream(i, borrowed=True), name=ctx.ingredients[i].name)
    return running.mean(in_place=True)


def _accumulate_dtype(ctx: SoupContext) -> torch.dtype:
    return getattr(torch, ctx.params.accumulate)


def _trajectory(ctx: SoupContext, steps: list[greedy.GreedyStep], individual: list[int], n: int) -> str:
    lines = []
    for number, step in enumerate(steps):
        line = {
            "step": number,
            "ingredient": ctx.ingredients[step.index].name,
            "ingredient_heldout_top1": individual[step.index] / n,
            "accepted": step.accepted,
            "heldout_top1": None if step.correct is None else step.correct / n,
            "evaluated": step.evaluated,
            "stopped_early": step.correct is None,
            "soup_heldout_top1": step.soup_correct / n,
            "soup_size": step.soup_size,
        }
        lines.append(line)
    return "".join(json.dumps(line) + "\n" for line in lines)


def _log_savings(steps: list[greedy.GreedyStep], n: int) -> dict[str, int]:
    candidates = max(len(steps) - 1, 0)
    saved = greedy.forward_passes_saved(steps, n)
    total = candidates * n
    log.info("early rejection saved %d of %d held-out forward passes (%.1f%%)", saved, total, 100.0 * saved / max(total, 1))
    return {"forward_passes_saved": saved, "forward_passes_full": total}


# --- the methods --------------------------------------------------------------------------------------


@register("uniform", "paper Eq. 1, Table 3 'Uniform soup'", (Row("uniform_soup", "Uniform soup", "C0", "o", 200),), across_tasks=True)
def uniform_method(ctx: SoupContext) -> SoupOutcome:
    state = _uniform_state(ctx, list(range(len(ctx.ingredients))))
    n = len(ctx.ingredients)
    return SoupOutcome("uniform_soup", [Candidate(ctx.run_name, state)], state, [1.0 / n] * n)


@register(
    "greedy",
    "paper Recipe 1, Table 3 'Greedy soup'; order=random: 'Greedy soup (random order)'",
    (Row("greedy_soup", "Greedy soup", "C4", "*", 400), Row("greedy_soup_random_order", "Greedy soup (random order)", "C9", "P", 200)),
    GreedyParams,
    across_tasks=True,
)
def greedy_method(ctx: SoupContext) -> SoupOutcome:
    scorer = ctx.scorer
    n = scorer.n_heldout
    individual = ctx.heldout_correct()
    order = ctx.order(individual)
    running = average.RunningSum(_accumulate_dtype(ctx))
    pending: dict[int, StateDict] = {}

    def score(index: int, chunks: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        pending.clear()
        pending[index] = ctx.load(index)
        return scorer.heldout_outcomes(running.mean_with(pending[index], name=ctx.ingredients[index].name), chunks)

    def commit(index: int) -> None:
        state = pending.pop(index, None)
        running.add(state if state is not None else ctx.stream(index), name=ctx.ingredients[index].name, owned=True)

    steps = greedy.greedy_select(
        order,
        individual[order[0]],
        n,
        score,
        commit,
        accept=ctx.params.accept,
        early_rejection=ctx.params.early_rejection,
    )
    pending.clear()
    members = {s.index for s in steps if s.accepted}
    state = running.mean(in_place=True)
    weights = [1.0 / len(members) if i in members else 0.0 for i in range(len(ctx.ingredients))]
    kind = "greedy_soup_random_order" if ctx.params.order == "random" else "greedy_soup"
    savings = _log_savings(steps, n)
    log.info("greedy soup: %d of %d ingredients, held-out %.4f", len(members), len(ctx.ingredients), steps[-1].soup_correct / n)
    return SoupOutcome(
        kind,
        [Candidate(ctx.run_name, state, extra={"soup_size": len(members)})],
        state,
        weights,
        hparams={"order": ctx.params.order, "accept": ctx.params.accept, **savings},
        files={"greedy_trajectory.jsonl": _trajectory(ctx, steps, individual, n)},
        members=sorted(members),
    )


def _learned(ctx: SoupContext, by_layer: bool) -> SoupOutcome:
    scorer = ctx.scorer
    params: LearnedParams = ctx.params

    def batches(epoch: int):
        generator = torch.Generator().manual_seed(ctx.seed * 1000 + epoch)
        return DataLoader(
            scorer.heldout.dataset, batch_size=params.batch_size, shuffle=True, generator=generator, num_workers=params.workers
        )

    states = [ctx.load(i) for i in range(len(ctx.ingredients))]
    options = (params.epochs, params.lr, params.weight_decay)
    soup, history = library.fit_learned(states, scorer.model, batches, by_layer, *options, ctx.device)
    state = learned.learned_state(soup)
    weights = soup.ingredient_weights()
    log.info(
        "learned soup: β=%.3f, loss by epoch %s, mean α %s",
        history.beta,
        [round(x, 4) for x in history.losses],
        [round(w, 3) for w in weights],
    )
    kind = "learned_soup_by_layer" if by_layer else "learned_soup"
    files = {
        "learned_weights.json": json.dumps({"beta": history.beta, "losses": history.losses, "alpha": soup.alpha_by_key()}, indent=1) + "\n"
    }
    return SoupOutcome(
        kind, [Candidate(ctx.run_name, state)], state, weights, hparams={"beta": history.beta, "losses": history.losses}, files=files
    )


@register("learned", "paper App. I, Table 3 'Learned soup'", (Row("learned_soup", "Learned soup", "C1", "s"),), LearnedParams)
def learned_method(ctx: SoupContext) -> SoupOutcome:
    return _learned(ctx, by_layer=False)


@register(
    "learned_by_layer",
    "paper App. I, Table 3 'Learned soup (by layer)'",
    (Row("learned_soup_by_layer", "Learned soup (by layer)", "C3", "v", 180),),
    LearnedParams,
)
def learned_by_layer_method(ctx: SoupContext) -> SoupOutcome:
    return _learned(ctx, by_layer=True)


@register(
    "ensemble", "paper Sec. 3, Table 3 'Ensemble' (the mean of the logits)", (Row("ensemble", "Ensemble", "C5", "^", 180),), space="output"
)
def ensemble_method(ctx: SoupContext) -> SoupOutcome:
    members = list(range(len(ctx.ingredients)))
    return SoupOutcome("ensemble", [Candidate(ctx.run_name, members=members, extra={"ensemble_size": len(members)})])


@register(
    "greedy_ensemble",
    "paper Table 3 'Greedy ensemble' (Recipe 1's rule on the ensemble)",
    (Row("greedy_ensemble", "Greedy ensemble", "C6", ">", 180),),
    GreedyParams,
    space="output",
)
def greedy_ensemble_method(ctx: SoupContext) -> SoupOutcome:
    scorer = ctx.scorer
    n = scorer.n_heldout
    chunk = ctx.params.eval_chunk
    heldout_logits: list[torch.Tensor] = []
    labels = None
    for start in range(0, len(ctx.ingredients), chunk):
        group = range(start, min(start + chunk, len(ctx.ingredients)))
        logits, labels = scorer.logits([ctx.load(i) for i in group], scorer.heldout)
        heldout_logits.extend(logits)
    individual = [int((x.argmax(dim=-1) == labels).sum()) for x in heldout_logits]
    order = ctx.order(individual)
    members, steps = output_space.greedy_ensemble(
        heldout_logits,
        labels,
        order,
        accept=ctx.params.accept,
        early_rejection=ctx.params.early_rejection,
    )
    log.info("greedy ensemble: %d of %d ingredients, held-out %.4f", len(members), len(ctx.ingredients), steps[-1].soup_correct / n)
    extra = {"ensemble_size": len(members), "members": [ctx.ingredients[i].name for i in members]}
    outcome = SoupOutcome("greedy_ensemble", [Candidate(ctx.run_name, members=members, extra=extra)])
    outcome.files["greedy_trajectory.jsonl"] = _trajectory(ctx, steps, individual, n)
    outcome.files["members.json"] = json.dumps(extra["members"], indent=1) + "\n"
    return outcome


@register(
    "wise_ft",
    "Wortsman et al. 2022b (WiSE-FT), Eq. 1: the robust fine-tuning baseline",
    (Row("wise_ft", "WiSE-FT", "C8", "X"),),
    WiseFTParams,
)
def wise_ft_method(ctx: SoupContext) -> SoupOutcome:
    init = ctx.load_init()
    n = len(ctx.ingredients)
    if n > 1 and ctx.params.endpoint == "best":  # the WiSE-FT paper's setting: one fine-tuned model, picked on held-out
        best = library.sorted_by_score(ctx.heldout_correct())[0]
        indices, endpoint_name = [best], f"best on held-out of {n}: {ctx.ingredients[best].name}"
    elif n > 1:
        indices, endpoint_name = list(range(n)), f"uniform soup of {n}"
    else:
        indices, endpoint_name = [0], ctx.ingredients[0].name
    log.info("wise_ft: from %s to %s", ctx.init.name if ctx.init else None, endpoint_name)
    endpoint = _uniform_state(ctx, indices)
    alphas = [float(a) for a in ctx.params.alphas]
    ends = {"wise_ft_from": ctx.init.name if ctx.init else None, "wise_ft_to": endpoint_name}
    candidates = [Candidate(f"{ctx.run_name}_alpha{a:.2f}", library.wise_ft(init, endpoint, a), extra={"alpha": a, **ends}) for a in alphas]
    alpha = float(ctx.params.alpha)
    checkpoint = library.wise_ft(init, endpoint, alpha)
    weights = [alpha / len(indices) if i in indices else 0.0 for i in range(n)]
    hparams = {"alpha": alpha, "alphas": alphas, **ends}
    return SoupOutcome("wise_ft", candidates, checkpoint, weights, hparams=hparams, init_weight=1.0 - alpha)


@register(
    "model_stock",
    "Jang et al. 2024 (Model Stock), Eq. 7: one of the later baselines",
    (Row("model_stock", "Model Stock", "teal", "8"),),
    across_tasks=True,
)
def model_stock_method(ctx: SoupContext) -> SoupOutcome:
    init = ctx.load_init()
    assert ctx.init is not None  # load_init refused otherwise
    theta0 = (ctx.init.path.resolve(), ctx.sha256(ctx.init.path))
    same = [ing.path.resolve() == theta0[0] or ctx.sha256(ing.path) == theta0[1] for ing in ctx.ingredients]
    kept = stock.besides_init([ing.name for ing in ctx.ingredients], same)
    names = [ctx.ingredients[i].name for i in kept]
    state, ratios, clipped = stock.model_stock(init, ctx.layers(kept), names)
    mean_t = sum(ratios.values()) / max(len(ratios), 1)
    n = len(kept)
    log.info("model stock: mean ratio t = %.4f over %d tensors, %d clipped to [0, 1]", mean_t, len(ratios), len(clipped))
    files = {
        "model_stock_ratios.json": json.dumps(ratios, indent=1) + "\n",
        "model_stock_clipped.json": json.dumps({"clipped": len(clipped), "tensors": len(ratios), "keys": clipped}, indent=1) + "\n",
    }
    return SoupOutcome(
        "model_stock",
        [Candidate(ctx.run_name, state)],
        state,
        [mean_t / n if i in kept else 0.0 for i in range(len(ctx.ingredients))],
        hparams={"mean_t": mean_t, "clipped_tensors": len(clipped), "dropped_theta0": len(ctx.ingredients) - n},
        init_weight=1.0 - mean_t,
        files=files,
    )


@register(
    "task_arithmetic",
    "Ilharco et al. 2023 (Editing models with task arithmetic), Sec. 2: θ0 + λ Σ_i (θ_i − θ0)",
    (Row("task_arithmetic", "Task arithmetic", "olive", "d"),),
    TaskArithmeticParams,
    across_tasks=True,
)
def task_arithmetic_method(ctx: SoupContext) -> SoupOutcome:
    params: TaskArithmeticParams = ctx.params
    init = ctx.load_init()
    # one task vector per task (the reference's τ_t): of several fine-tunes of one task (one class list), their mean
    per_task = collections.Counter(ing.meta.classes for ing in ctx.ingredients)
    running = average.RunningSum(_accumulate_dtype(ctx))
    for i, ing in enumerate(ctx.ingredients):
        running.add(ctx.stream(i, borrowed=True), weight=1.0 / per_task[ing.meta.classes], name=ing.name)
    count = len(per_task)  # Σ_t τ_t = Σ_i w_i θ_i − T·θ0, the weights of each task summing to 1
    scalings = [float(params.scaling)] if params.scaling is not None else [float(x) for x in params.scalings]
    heldout: dict[float, float] = {}
    if len(scalings) > 1:  # the reference picks λ on held-out data: the best held-out accuracy, the smallest λ on ties
        for start in range(0, len(scalings), params.eval_chunk):
            group = scalings[start : start + params.eval_chunk]
            states = [average.add_task_vectors(init, running.sums, count, x) for x in group]
            for x, (correct, n) in zip(group, ctx.scorer.accuracies(states, ctx.scorer.heldout)):
                heldout[x] = correct / n
        scaling = max(scalings, key=lambda x: (heldout[x], -x))
        log.info("task arithmetic: λ = %.2f (held-out %.4f of %s)", scaling, heldout[scaling], [round(v, 4) for v in heldout.values()])
    else:
        scaling = scalings[0]
    state = average.add_task_vectors(init, running.sums, count, scaling)
    files = {"task_arithmetic_scalings.json": json.dumps({"scaling": scaling, "heldout_top1": heldout}, indent=1) + "\n"}
    return SoupOutcome(
        "task_arithmetic",
        [Candidate(ctx.run_name, state, extra={"scaling": scaling})],
        state,
        [scaling / per_task[ing.meta.classes] for ing in ctx.ingredients],
        hparams={"scaling": scaling, "tasks": count, "heldout_top1_by_scaling": heldout},
        init_weight=1.0 - scaling * count,
        files=files,
    )


def all_methods() -> dict[str, Method]:
    """Every registered method (this module's, and any a user registered), in registration order."""
    return METHODS


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"soup.name: unknown soup method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
