"""The basin check (soups/diagnose.py): its pieces by hand, and on small networks fine-tuned from one or two inits."""

from __future__ import annotations

import math

import torch
from torch import nn

from soups.diagnose import Pair, basins, difference_resolution, gram_angle_degrees, greedy_would_add, update_gram


def test_resolution_is_two_standard_errors_of_a_difference():
    # p = 0.5 on 200 examples: var of one accuracy 0.25/200, of a difference twice that
    assert math.isclose(difference_resolution(0.5, 200), 2 * math.sqrt(0.5 / 200))


def test_basins_join_ingredients_whose_midpoints_show_no_barrier():
    pairs = [Pair(0, 1, 0.80, 0.80, None), Pair(0, 2, 0.40, 0.80, None), Pair(1, 2, 0.41, 0.80, None), Pair(2, 3, 0.79, 0.80, None)]
    assert basins(4, pairs, tolerance=0.02) == [[0, 1], [2, 3]]
    assert basins(4, pairs, tolerance=0.5) == [[0, 1, 2, 3]]  # a barrier of 0.395 on average is within 0.5
    # one pair near the tolerance does not bridge two basins: the mean across them counts
    bridged = pairs + [Pair(1, 3, 0.70, 0.80, None)]  # gaps across: -0.40, -0.39, -0.10 → mean -0.30
    assert basins(4, bridged, tolerance=0.2) == [[0, 1], [2, 3]]
    assert basins(4, bridged, tolerance=0.3) == [[0, 1, 2, 3]]


def test_greedy_keeps_one_model_exactly_when_no_midpoint_with_the_best_beats_it():
    accuracy = [0.70, 0.80, 0.75]
    worse = [Pair(0, 1, 0.79, 0.75, None), Pair(1, 2, 0.80, 0.775, None), Pair(0, 2, 0.9, 0.725, None)]
    assert greedy_would_add(accuracy, worse) == []  # a tie is not enough under the default accept=gt
    better = [Pair(0, 1, 0.81, 0.75, None), Pair(1, 2, 0.80, 0.775, None)]
    assert greedy_would_add(accuracy, better) == [0]


# --- constructed ingredients: small MLPs on a task that needs their hidden units ------------------------


def xor_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    return x, ((x[:, 0] * x[:, 1]) > 0).long()


def train(model: nn.Module, seed: int, steps: int, lr: float) -> dict[str, torch.Tensor]:
    x, y = xor_data(512, seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def mlp(state: dict[str, torch.Tensor] | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 2))
    if state is not None:
        model.load_state_dict(state)
    return model


def heldout_accuracies(states):
    x, y = xor_data(2000, 99)
    scores = []
    for state in states:
        with torch.no_grad():
            scores.append((int((mlp(state)(x).argmax(1) == y).sum()), len(y)))
    return scores


def test_the_basin_check_separates_one_init_from_two_and_says_why():
    from soups import basin_check  # the library export is the same function

    torch.set_num_threads(1)
    pretrained = [train(mlp(seed=s), seed=s, steps=400, lr=0.01) for s in (0, 1)]  # two independent "pretrained" inits

    def finetune(init: int, seed: int) -> dict[str, torch.Tensor]:
        return train(mlp(pretrained[init]), seed=10 + seed, steps=60, lr=0.003)

    one_init = [finetune(0, s) for s in range(3)]
    good = basin_check(one_init, heldout_accuracies, ["a0", "a1", "a2"], init=pretrained[0], init_ids=["A"] * 3, lrs=[0.003] * 3)
    assert min(good.accuracy) > 0.9
    assert good.basins == [[0, 1, 2]] and "share one basin" in good.verdict[0], good.verdict
    assert all(p.gap > -good.tolerance for p in good.pairs)

    two_inits = [finetune(0, 0), finetune(0, 1), finetune(1, 0), finetune(1, 1)]
    bad = basin_check(two_inits, heldout_accuracies, ["a0", "a1", "b0", "b1"], init_ids=["A", "A", "B", "B"], lrs=[0.003] * 4)
    assert min(bad.accuracy) > 0.9  # every ingredient is good on its own ...
    across = [p.gap for p in bad.pairs if (p.i < 2) != (p.j < 2)]
    assert max(across) < -0.1  # ... but midpoints across the two inits fall off a barrier
    assert sorted(bad.basins) == [[0, 1], [2, 3]]
    assert "leave the shared basin" in bad.verdict[0] and "2 different initialisations" in bad.verdict[1], bad.verdict


def test_update_angles_from_the_streamed_gram_matrix():
    init = {"w": torch.zeros(2), "b": torch.zeros(1), "steps": torch.tensor(3)}
    states = [
        {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0]), "steps": torch.tensor(3)},
        {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0]), "steps": torch.tensor(3)},
        dict(init),
    ]
    g = update_gram(states, init)
    assert g.tolist() == [[1.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]
    assert math.isclose(gram_angle_degrees(g, 0, 1), 45.0) and gram_angle_degrees(g, 0, 2) is None  # the init has no update


def test_ingredients_at_chance_are_never_called_soupable():
    """Untrained copies of one network guess at XOR (50% on 2 classes): their midpoints are as good as their
    endpoints, one "basin", yet there is nothing to soup. With one good model among them, the two at chance are named."""
    from soups import basin_check

    torch.set_num_threads(1)
    guessing = mlp(seed=3).state_dict()
    copies = [{k: v + 1e-4 * torch.randn_like(v) for k, v in guessing.items()} for _ in range(3)]
    report = basin_check(copies, heldout_accuracies, ["g0", "g1", "g2"], chance=0.5)
    assert max(report.accuracy) < 0.5 + 2 * math.sqrt(0.25 / 2000)  # constructed at chance
    assert report.verdict == [report.verdict[0]] and report.verdict[0].startswith("All 3 ingredients are at chance"), report.verdict
    assert "can be souped" not in " ".join(report.verdict) and report.to_json()["at_chance"] == ["g0", "g1", "g2"]

    good = train(mlp(guessing), seed=5, steps=400, lr=0.01)
    mixed = basin_check([good, *copies[:2]], heldout_accuracies, ["good", "g0", "g1"], chance=0.5)
    assert mixed.verdict[0].startswith("2 of 3 ingredients are at chance on the held-out set (g0, g1; chance is 50.0%"), mixed.verdict
    assert not any("so they can be souped" in line for line in mixed.verdict)
