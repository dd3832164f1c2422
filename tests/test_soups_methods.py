"""Soup math on constructed cases whose answers are computed by hand (no files, no data)."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.errors import UserError
from soups.average import RunningSum, interpolate, uniform_soup
from soups.greedy import forward_passes_saved, greedy_select
from soups.learned import LearnedSoup, fit_learned_soup, learned_state, mix
from soups.output_space import greedy_ensemble
from soups.stock import model_stock, model_stock_ratio, model_stock_tensor


def test_uniform_soup_is_the_hand_computed_mean():
    states = [
        {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5], dtype=torch.float16), "step": torch.tensor([7])},
        {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([1.5], dtype=torch.float16), "step": torch.tensor([7])},
        {"w": torch.tensor([5.0, -2.0]), "b": torch.tensor([4.0], dtype=torch.float16), "step": torch.tensor([7])},
    ]
    soup = uniform_soup(iter(states))
    assert soup["w"].tolist() == [3.0, 2.0]  # (1+3+5)/3, (2+6-2)/3
    assert soup["b"].dtype == torch.float16 and soup["b"].item() == 2.0  # (0.5+1.5+4)/3, summed in float32
    assert soup["step"].tolist() == [7]  # integer buffers are carried, not averaged


def test_running_sum_streams_pairs_and_weights():
    running = RunningSum(torch.float64)
    running.add(iter([("w", torch.tensor([2.0]))]), weight=1.0)
    running.add(iter([("w", torch.tensor([8.0]))]), weight=3.0)
    assert running.mean()["w"].item() == pytest.approx((2 + 24) / 4)
    assert running.mean_with({"w": torch.tensor([0.0])}, weight=4.0)["w"].item() == pytest.approx(26 / 8)
    assert running.count == 2  # mean_with did not add


def test_unequal_integer_tensors_are_an_error_naming_the_key():
    running = RunningSum()
    running.add({"ids": torch.tensor([1, 2])}, name="a.safetensors")
    with pytest.raises(UserError, match=r"b.safetensors: non-float tensor 'ids'"):
        running.add({"ids": torch.tensor([1, 3])}, name="b.safetensors")


def test_batchnorm_step_counters_are_kept_not_compared():
    # num_batches_tracked counts training steps: it differs between runs and is unused in eval mode.
    running = RunningSum()
    running.add({"bn.num_batches_tracked": torch.tensor(40), "bn.running_mean": torch.tensor([1.0])})
    running.add({"bn.num_batches_tracked": torch.tensor(120), "bn.running_mean": torch.tensor([3.0])})
    soup = running.mean()
    assert soup["bn.num_batches_tracked"].item() == 40 and soup["bn.running_mean"].item() == 2.0


def test_interpolation_endpoints_and_midpoint():
    start, end = {"w": torch.tensor([0.0, 10.0])}, {"w": torch.tensor([4.0, 0.0])}
    assert interpolate(start, end, 0.0)["w"].tolist() == [0.0, 10.0]
    assert interpolate(start, end, 1.0)["w"].tolist() == [4.0, 0.0]
    assert interpolate(start, end, 0.25)["w"].tolist() == [1.0, 7.5]


# --- greedy -------------------------------------------------------------------------------------------
# A 1-parameter "model" w; held-out example j is correct iff w > THRESHOLDS[j]. Soup accuracy is then
# a hand-computable step function of the averaged w.
THRESHOLDS = [0.5, 1.5, 2.5, 3.5]
WEIGHTS = {"a": 3.2, "b": 2.9, "c": 4.0}  # individual correct counts: a 3, b 3, c 4


def correct_of(w: float) -> list[int]:
    return [int(w > t) for t in THRESHOLDS]


def run_greedy(order: list[str], accept: str, early_rejection: bool = True, batch: int = 1, weights: dict[str, float] = WEIGHTS):
    names = list(weights)
    running = RunningSum(torch.float64)

    def score(i, chunks):  # counts in set order: batch-level rejection
        w = running.mean_with({"w": torch.tensor([weights[names[i]]])})["w"].item()
        hits = correct_of(w)
        for start in range(0, len(hits), batch):
            yield sum(hits[start : start + batch]), len(hits[start : start + batch])

    def commit(i):
        running.add({"w": torch.tensor([weights[names[i]]])})

    indices = [names.index(x) for x in order]
    steps = greedy_select(indices, sum(correct_of(weights[order[0]])), len(THRESHOLDS), score, commit, accept, early_rejection)
    members = [names[s.index] for s in steps if s.accepted]
    return members, running.mean()["w"].item(), steps


def test_greedy_strict_rejects_a_tie_and_ge_accepts_it():
    # Sorted by held-out accuracy: c (4), then a, b (3 each, input order kept).
    # {c}: w=4.0 → 4 correct. +a: w=3.6 → 4 correct: a tie. Strict rejects; ≥ accepts.
    # strict: +b: w=(4+2.9)/2=3.45 → 3 < 4 → reject.  Final {c}, w=4.0.
    # ge:     +b: w=(4+3.2+2.9)/3=3.367 → 3 < 4 → reject. Final {c, a}, w=3.6.
    assert run_greedy(["c", "a", "b"], "gt")[:2] == (["c"], pytest.approx(4.0))
    assert run_greedy(["c", "a", "b"], "ge")[:2] == (["c", "a"], pytest.approx(3.6))


def test_greedy_order_matters():
    # Random order b, a, c under strict: {b}: w=2.9 → 3. +a: w=3.05 → 3, tie, reject.
    # +c: w=(2.9+4)/2=3.45 → 3, reject. Final {b}: worse than the sorted order's {c}.
    members, w, steps = run_greedy(["b", "a", "c"], "gt")
    assert members == ["b"] and w == pytest.approx(2.9)
    assert [s.soup_correct for s in steps] == [3, 3, 3]


def test_greedy_rejects_early_only_when_the_outcome_is_certain():
    # One example per batch. With ≥, soup {c} (4 of 4) needs 4: a candidate is dropped at its first miss.
    # b: soup w = (4 + 2.9)/2 = 3.45 → hits [1,1,1,0]; the miss is the last example, so all 4 are scored.
    _, _, steps = run_greedy(["c", "b"], "ge")
    assert steps[1].evaluated == 4 and steps[1].correct == 3 and not steps[1].accepted
    # low: soup w = (4 − 8)/2 = −2 → misses example 0 → stopped after 1 of 4, 3 passes saved.
    weights = {"b": 2.9, "c": 4.0, "low": -8.0}
    _, _, steps = run_greedy(["c", "low"], "ge", weights=weights)
    assert steps[1].evaluated == 1 and steps[1].correct is None and not steps[1].accepted
    assert forward_passes_saved(steps, 4) == 3
    # Strict: a perfect soup cannot be beaten, so even b is dropped after the first example.
    _, _, steps = run_greedy(["c", "b"], "gt")
    assert steps[1].evaluated == 1
    # Soup {b} has 3 correct. Strict needs 4 (no miss allowed); ≥ needs 3 (one miss allowed).
    _, _, steps = run_greedy(["b", "low"], "gt", weights=weights)  # low: w = −2.55, misses all
    assert steps[1].evaluated == 1
    _, _, steps = run_greedy(["b", "low"], "ge", weights=weights)
    assert steps[1].evaluated == 2


def random_greedy_case(seed: int, accept: str, early_rejection: bool):
    """Each possible soup gets random per-example correctness (fixed per seed); returns the decisions and passes."""
    rng = random.Random(seed)
    n, batch, count = rng.randint(5, 40), rng.randint(1, 7), rng.randint(2, 7)
    bias = [rng.uniform(0.3, 0.9) for _ in range(count)]
    hits_rng = random.Random(seed + 1)
    table: dict[tuple, list[int]] = {}

    def hits_of(members: frozenset) -> list[int]:
        key = tuple(sorted(members))
        if key not in table:
            p = sum(bias[m] for m in members) / len(members)
            table[key] = [int(random.Random(f"{seed}-{key}").random() < p) for _ in range(n)]
        return table[key]

    soup: set[int] = set()
    evaluated = 0

    def score(i, chunks):  # counts in set order: batch-level rejection
        nonlocal evaluated
        hits = hits_of(frozenset(soup | {i}))
        for start in range(0, n, batch):
            evaluated += len(hits[start : start + batch])
            yield sum(hits[start : start + batch]), len(hits[start : start + batch])

    order = list(range(count))
    hits_rng.shuffle(order)
    steps = greedy_select(order, sum(hits_of(frozenset({order[0]}))), n, score, soup.add, accept, early_rejection)
    return [s.accepted for s in steps], [s.soup_correct for s in steps], evaluated, forward_passes_saved(steps, n)


@pytest.mark.parametrize("accept", ["gt", "ge"])
def test_early_rejection_selects_exactly_what_full_evaluation_selects(accept):
    total_full = total_early = 0
    for seed in range(60):
        full = random_greedy_case(seed, accept, early_rejection=False)
        early = random_greedy_case(seed, accept, early_rejection=True)
        assert early[:2] == full[:2], f"seed {seed}: early rejection changed the selection"
        assert early[2] == full[2] - early[3]  # the logged saving is what was actually skipped
        total_full, total_early = total_full + full[2], total_early + early[2]
    assert total_early < total_full  # fewer forward passes overall


def test_greedy_ensemble_on_hand_logits():
    labels = torch.tensor([0, 1, 1])
    # model 0 gets examples 0,1 right; model 1 gets 1,2; model 2 only 2 (but confidently).
    logits = [
        torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]),
        torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 3.0]]),
        torch.tensor([[0.0, 9.0], [9.0, 0.0], [0.0, 9.0]]),
    ]
    # Sorted by accuracy: 0 (2/3), 1 (2/3), 2 (1/3). {0}+1: mean → [[1,.5],[0,1],[.5,1.5]] → all 3 right: accept.
    # +2: mean of 3 → [[.67,3.33],[3,.67],[.33,4.33]] → only example 2 right: reject.
    members, steps = greedy_ensemble(logits, labels, order=[0, 1, 2], accept="gt", early_rejection=False)
    assert members == [0, 1]
    assert [s.soup_correct for s in steps] == [2, 3, 3]


# --- learned soups --------------------------------------------------------------------------------------


def test_mix_gradient_matches_plain_autograd():
    torch.manual_seed(0)
    tensors = [torch.randn(3, 4) for _ in range(3)]
    raw = torch.randn(3, requires_grad=True)
    target = torch.randn(3, 4)
    (mix(torch.softmax(raw, 0), tensors, "cpu") * target).sum().backward()
    ours = raw.grad.clone()
    raw.grad = None
    (torch.einsum("n,nij->ij", torch.softmax(raw, 0), torch.stack(tensors)) * target).sum().backward()
    torch.testing.assert_close(ours, raw.grad)


@pytest.mark.parametrize("by_layer", [False, True])
def test_learned_soup_weights_the_clearly_best_ingredient_most(by_layer):
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    teacher = {"weight": torch.randn(4, 8) * 3, "bias": torch.zeros(4)}
    x = torch.randn(256, 8)
    y = F.linear(x, teacher["weight"]).argmax(dim=1)
    noisy = [{k: v + torch.randn_like(v) * 3 for k, v in teacher.items()} for _ in range(3)]
    ingredients = [noisy[0], noisy[1], teacher, noisy[2]]  # the teacher, index 2, is the clearly best one
    soup = LearnedSoup(ingredients, by_layer=by_layer)
    assert soup.ingredient_weights() == pytest.approx([0.25] * 4)  # starts uniform, as the official script
    batches = lambda epoch: [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]  # noqa: E731
    history = fit_learned_soup(soup, model, batches, epochs=5, lr=0.05)
    weights = soup.ingredient_weights()
    assert max(range(4), key=lambda i: weights[i]) == 2
    assert history.losses[-1] < history.losses[0]
    alpha = soup.alpha().detach()
    expected = {k: sum(alpha[i if by_layer else 0, j] * ingredients[j][k] for j in range(4)) for i, k in enumerate(["weight", "bias"])}
    state = learned_state(soup)
    for key in expected:
        torch.testing.assert_close(state[key], expected[key])


# --- Model Stock ----------------------------------------------------------------------------------------


def test_model_stock_matches_its_closed_form_on_two_models():
    init = torch.tensor([1.0, 1.0, 0.0])
    # Task vectors at 60° (cos = 1/2): t = 2·(1/2) / (1 + 1/2) = 2/3.
    d1, d2 = torch.tensor([2.0, 0.0, 0.0]), torch.tensor([1.0, math.sqrt(3.0), 0.0])
    merged, t, clipped = model_stock_tensor(init, [init + d1, init + d2])
    assert t == pytest.approx(2 / 3) and not clipped
    # θ = t·(θ1+θ2)/2 + (1−t)·θ0 = θ0 + (2/3)·(d1+d2)/2 = [1 + 1, 1 + √3/3, 0]
    torch.testing.assert_close(merged, torch.tensor([2.0, 1.0 + math.sqrt(3.0) / 3, 0.0]))
    assert model_stock_ratio(1.0, 5) == (pytest.approx(1.0), False)  # parallel task vectors: the plain average
    assert model_stock_ratio(0.0, 5) == (0.0, False)  # orthogonal: back to the init


def test_model_stock_clips_t_and_never_divides_by_zero():
    # Opposite task vectors (N = 2, cos = −1): Eq. 7's denominator 1 + (N−1)·cos is 0; t is clipped to 0.
    init = torch.zeros(2)
    merged, t, clipped = model_stock_tensor(init, [torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])])
    assert (t, clipped) == (0.0, True) and merged.tolist() == [0.0, 0.0]
    # cos = −1/4 with N = 3: Eq. 7 gives 3·(−1/4) / (1 − 1/2) = −1.5 (an extrapolation); clipped to 0.
    assert model_stock_ratio(-0.25, 3) == (0.0, True)
    assert model_stock_ratio(1.0 + 1e-12, 2) == (1.0, True)  # rounding above 1
    layers = [("a", [torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])]), ("b", [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])])]
    _, ratios, clipped_keys = model_stock({"a": torch.zeros(2), "b": torch.zeros(2)}, layers, ["m0", "m1"])
    assert ratios == {"a": 0.0, "b": pytest.approx(1.0)} and clipped_keys == ["a"]


def test_model_stock_per_layer_with_three_models_and_integer_buffers():
    init = {"w": torch.zeros(2), "ids": torch.tensor([3])}
    models = [
        {"w": torch.tensor([1.0, 0.0]), "ids": torch.tensor([3])},
        {"w": torch.tensor([0.0, 1.0]), "ids": torch.tensor([3])},
        {"w": torch.tensor([1.0, 1.0]), "ids": torch.tensor([3])},
    ]
    layers = [(k, [m[k] for m in models]) for k in init]
    merged, ratios, clipped = model_stock(init, layers, ["m0", "m1", "m2"])
    assert clipped == []
    cos = (0.0 + 1 / math.sqrt(2) + 1 / math.sqrt(2)) / 3  # pairs (0,1), (0,2), (1,2)
    t = 3 * cos / (1 + 2 * cos)
    assert ratios["w"] == pytest.approx(t)
    torch.testing.assert_close(merged["w"], torch.tensor([2 / 3, 2 / 3]) * t)
    assert merged["ids"].tolist() == [3]
