"""Model soups as plain functions over state dicts: the library behind `python -m soups`.

No Hydra, no files written. An ingredient is a state dict, or the path of a checkpoint (project
`.safetensors`, streamed tensor by tensor, or an official `model_{i}.pt`). Every function is the one the
stage, the plots and the world probe use, so a method exists once.

    from soups import uniform_soup, greedy_soup, wise_ft
    soup = uniform_soup(["runs/demo/finetune/model_1/model.safetensors", "runs/demo/finetune/model_2/model.safetensors"])
    soup, chosen = greedy_soup(ingredients, score=held_out_accuracy)   # score(state_dict) -> float
    robust = wise_ft(zeroshot_state, soup, alpha=0.5)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import read_meta
from models.heads import image_tower, is_head_key
from models.schemas import GreedyParams, LearnedParams, SoupParams, check_alpha
from soups import average, checks, greedy, learned, stock
from soups.streaming import is_pt, iter_ingredient_tensors, load_state, tensor_specs

StateDict = dict[str, torch.Tensor]
Ingredient = Mapping[str, torch.Tensor] | str | os.PathLike
ACCUMULATE = getattr(torch, SoupParams.accumulate)  # dtype of running sums, as the stage's default
# A held-out score of a state dict: an accuracy, or (correct, examples) per batch for exact early rejection.
Score = Callable[[StateDict], "float | Iterable[tuple[int, int]]"]


def _is_path(ingredient: Ingredient) -> bool:
    return isinstance(ingredient, (str, os.PathLike))


def without_module_prefix(state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """A state dict saved from a DataParallel/DDP wrapper has `module.` before every key: the wrapper's name,
    not another model's, so it is stripped (as imported checkpoints are). A prefix on only some keys stays,
    and the key check names the first key that then differs."""
    if state and all(key.startswith("module.") for key in state):
        return {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _tensors(ingredient: Ingredient) -> Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]:
    if _is_path(ingredient):
        path = Path(ingredient)
        return load_state(path) if is_pt(path) else iter_ingredient_tensors(path)
    return without_module_prefix(ingredient)


def _state(ingredient: Ingredient) -> StateDict:
    return load_state(Path(ingredient)) if _is_path(ingredient) else dict(without_module_prefix(ingredient))


def _spec(ingredient: Ingredient, name: str) -> checks.IngredientSpec:
    """Keys, shapes and dtypes of an ingredient: a file's from its header (or its import, for .pt), named by its path."""
    if _is_path(ingredient):
        return checks.tensors_only(str(ingredient), tensor_specs(ingredient))
    tensors = {key: (tuple(value.shape), str(value.dtype)) for key, value in without_module_prefix(ingredient).items()}
    return checks.tensors_only(name, tensors)


def check_ingredients(ingredients: Sequence[Ingredient], names: Sequence[str]) -> None:
    """The stage's check (soups.checks.check_compatible) on the library's ingredients: every one has the
    first one's keys, shapes and dtypes, else a UserError naming the ingredient and the key. Without it a
    key missing from one ingredient would be divided by N and mismatched shapes broadcast."""
    specs = [_spec(ingredient, name) for ingredient, name in zip(ingredients, names)]
    for spec in specs[1:]:
        checks.check_compatible([specs[0], spec])


def _names(count: int) -> list[str]:
    return [f"ingredient {i}" for i in range(count)]


def uniform_soup(checkpoints: Iterable[Ingredient], *, accumulate: torch.dtype = ACCUMULATE) -> StateDict:
    """The plain average θ = (1/N) Σ θ_i (paper, Eq. 1), streaming one ingredient at a time.

    >>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
    >>> uniform_soup([a, b])["w"].tolist()
    [2.0, 4.0]
    """
    return average.uniform_soup(_checked_stream(checkpoints), accumulate)


def _checked_stream(checkpoints: Iterable[Ingredient]) -> Iterator[Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]]:
    """Each ingredient's tensors, after checking it against the first (one at a time: a stream stays a stream)."""
    first = None
    for index, ingredient in enumerate(checkpoints):
        spec = _spec(ingredient, f"ingredient {index}")
        if first is None:
            first = spec
        else:
            checks.check_compatible([first, spec])
        yield _tensors(ingredient)


def _batches(result: float | Iterable[tuple[int, int]]) -> tuple[Iterator[tuple[float, int]], int | None]:
    """A score as (correct, examples) batches; an accuracy is one batch of one "example"."""
    if isinstance(result, (int, float)) or (isinstance(result, torch.Tensor) and result.ndim == 0):
        return iter([(float(result), 1)]), 1
    return iter(result), None


def greedy_soup(
    checkpoints: Sequence[Ingredient],
    score: Score,
    *,
    accept: str = GreedyParams.accept,
    order: Sequence[int] | None = None,
    early_rejection: bool = GreedyParams.early_rejection,
    accumulate: torch.dtype = ACCUMULATE,
) -> tuple[StateDict, list[int]]:
    """The greedy soup (paper, Recipe 1): visit ingredients best first by their own held-out score, keep
    each one whose addition improves the soup's score. Returns the soup and the chosen indices.

    `score(state_dict)` is the held-out accuracy, or yields (correct, examples) per batch: then a losing
    candidate is rejected as soon as the remaining examples cannot save it (exact: the same decisions).
    `accept="gt"` keeps strict improvements (the official code), `"ge"` ties too (the paper's ≥). `order`
    overrides the sort, which breaks ties as the official code does (later ingredients first).

    >>> states = [{"w": torch.tensor([v])} for v in (0.0, 1.0, 4.0)]
    >>> soup, chosen = greedy_soup(states, score=lambda s: -abs(float(s["w"]) - 0.6))
    >>> chosen, soup["w"].tolist()
    ([1, 0], [0.5])
    """
    GreedyParams(accept=accept, early_rejection=early_rejection)  # the stage's checks (models/schemas.py), before any work
    check_ingredients(checkpoints, _names(len(checkpoints)))
    own: list[float] = []
    n = None
    for ingredient in checkpoints:
        batches, one = _batches(score(_state(ingredient)))
        pairs = list(batches)
        n = one or sum(size for _, size in pairs)
        own.append(sum(correct for correct, _ in pairs))
    if not own:
        raise ValueError("greedy_soup needs at least one ingredient")
    visit = list(order) if order is not None else sorted_by_score(own)
    running = average.RunningSum(accumulate)
    pending: dict[int, StateDict] = {}

    def candidate_score(index: int, chunks: list[torch.Tensor]) -> Iterator[tuple[float, int]]:  # counts in the scorer's order
        pending.clear()
        pending[index] = _state(checkpoints[index])
        return _batches(score(running.mean_with(pending[index], name=f"ingredient {index}")))[0]

    def commit(index: int) -> None:
        state = pending.pop(index, None)
        # the sum may take over tensors read from a file, never the caller's own state dicts
        fresh = isinstance(checkpoints[index], (str, os.PathLike))
        running.add(state if state is not None else _tensors(checkpoints[index]), name=f"ingredient {index}", owned=fresh)

    steps = greedy.greedy_select(visit, own[visit[0]], n, candidate_score, commit, accept, early_rejection)
    return running.mean(in_place=True), [step.index for step in steps if step.accepted]


def split_heads(checkpoints: Sequence[Ingredient]) -> tuple[list[StateDict], list[StateDict]]:
    """Models fine-tuned on different tasks from one foundation, as (image towers, heads): soup the towers
    with any method; the heads stay as they are, one per ingredient (never averaged across tasks). Files must
    name one foundation, and the towers must share keys, shapes and dtypes (one line naming the first that differs).

    >>> a = {"visual.w": torch.tensor([1.0]), "head.weight": torch.zeros(2, 1)}
    >>> b = {"visual.w": torch.tensor([3.0]), "head.weight": torch.zeros(5, 1)}
    >>> towers, heads = split_heads([a, b])
    >>> uniform_soup(towers)["visual.w"].tolist(), [h["head.weight"].shape[0] for h in heads]
    ([2.0], [2, 5])
    """
    specs = [_spec(c, name) for c, name in zip(checkpoints, _names(len(checkpoints)))]
    for spec, c in zip(specs, checkpoints):
        if _is_path(c) and not is_pt(Path(c)):
            spec.pretrained = read_meta(c).pretrained
    checks.check_across_tasks(specs)
    states = [_state(c) for c in checkpoints]
    return [image_tower(s) for s in states], [{k: v for k, v in s.items() if is_head_key(k)} for s in states]


def task_arithmetic(
    init: Ingredient, checkpoints: Sequence[Ingredient], scaling: float, *, accumulate: torch.dtype = ACCUMULATE
) -> StateDict:
    """Task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic", Sec. 2): the task vectors
    θ_i − θ0 of the fine-tuned models added to the foundation θ0, scaled by λ: θ0 + λ·Σ_i (θ_i − θ0).

    >>> task_arithmetic({"w": torch.tensor([1.0])}, [{"w": torch.tensor([2.0])}, {"w": torch.tensor([4.0])}], 0.5)["w"].tolist()
    [3.0]
    """
    names = _names(len(checkpoints))
    check_ingredients([init, *checkpoints], ["init", *names])
    running = average.RunningSum(accumulate)
    for name, checkpoint in zip(names, checkpoints):
        running.add(_tensors(checkpoint), name=name)
    return average.add_task_vectors(_state(init), running.sums, running.count, scaling)


def sorted_by_score(scores: Sequence[float]) -> list[int]:
    """Indices best first, as the official code orders them: an ascending stable sort, then reversed, so
    tied ingredients come in reverse input order (model_9 before model_4 on equal held-out accuracy)."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i), reverse=True)


def wise_ft(zeroshot: Ingredient, finetuned: Ingredient, alpha: float) -> StateDict:
    """WiSE-FT (Wortsman et al. 2022b): (1 − α)·θ_zero-shot + α·θ_fine-tuned, α in [0, 1].

    >>> wise_ft({"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}, 0.25)["w"].tolist()
    [0.5]
    """
    check_alpha(alpha)
    check_ingredients([zeroshot, finetuned], ["zero-shot", "fine-tuned"])
    return average.interpolate(_state(zeroshot), _state(finetuned), float(alpha))


def model_stock(init: Ingredient, checkpoints: Sequence[Ingredient]) -> StateDict:
    """Model Stock (Jang et al. 2024): per tensor, t·mean_i θ_i + (1 − t)·θ_0 with t from the angle between
    the task vectors θ_i − θ_0 (soups/stock.py). Needs N ≥ 2 fine-tuned ingredients; one equal to θ0 is
    dropped (stock.besides_init)."""
    names = _names(len(checkpoints))
    check_ingredients([init, *checkpoints], ["init", *names])
    theta0 = _state(init)
    states = [_state(c) for c in checkpoints]
    same = [s.keys() == theta0.keys() and all(torch.equal(s[k], theta0[k]) for k in s) for s in states]
    kept = stock.besides_init(names, same)
    states = [states[i] for i in kept]
    layers = ((key, [s[key] for s in states]) for key in states[0])
    merged, _, _ = stock.model_stock(theta0, layers, [names[i] for i in kept])
    return merged


def learned_soup(
    checkpoints: Sequence[Ingredient],
    model: nn.Module,
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    *,
    by_layer: bool = False,
    epochs: int = LearnedParams.epochs,
    lr: float = LearnedParams.lr,
    weight_decay: float = LearnedParams.weight_decay,
    device: torch.device | str = "cpu",
) -> tuple[StateDict, list[float]]:
    """The learned soup (paper, App. I): mixing weights α = softmax(a) (one per ingredient, or per tensor
    with `by_layer`) and a temperature, fitted by AdamW on held-out `batches(epoch)` of (images, labels).
    `model` gives the architecture (its own weights are not used). Returns the soup and the mean α."""
    LearnedParams(lr=lr, weight_decay=weight_decay, epochs=epochs)  # the stage's checks (models/schemas.py)
    check_ingredients(checkpoints, _names(len(checkpoints)))
    soup, _ = fit_learned([_state(c) for c in checkpoints], model, batches, by_layer, epochs, lr, weight_decay, device)
    return learned.learned_state(soup), soup.ingredient_weights()


def fit_learned(
    states: Sequence[StateDict],
    model: nn.Module,
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    by_layer: bool,
    epochs: int,
    lr: float,
    weight_decay: float,
    device: torch.device | str,
) -> tuple[learned.LearnedSoup, learned.LearnedHistory]:
    """The fitted mixing weights and their training history (the stage records both)."""
    for i, state in enumerate(states[1:], start=1):  # non-float tensors are not mixed: they must agree
        for key, tensor in state.items():
            if not tensor.is_floating_point():
                average.check_equal(key, states[0][key], tensor, f"ingredient {i}")
    buffers = [name for name, _ in model.named_buffers()]
    soup = learned.LearnedSoup(states, by_layer=by_layer, device=device, buffers=buffers)
    history = learned.fit_learned_soup(soup, model, batches, epochs=epochs, lr=lr, weight_decay=weight_decay)
    return soup, history


def ensemble(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The output-space baseline: the mean of the members' logits (paper, Sec. 3).

    >>> ensemble([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])]).tolist()
    [[0.5, 1.5]]
    """
    return torch.stack([x.float() for x in logits]).mean(dim=0)
