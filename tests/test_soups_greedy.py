"""The greedy core's exact early rejection on per-example outcomes, against an independent brute-force loop."""

from __future__ import annotations

import json
import random

import pytest
import torch

from soups.greedy import HeldoutOrder, greedy_select
from soups.output_space import greedy_ensemble


def brute_force(order, outcomes_of, accept):
    """The official loop, written out: score every candidate on every example, keep it if it wins."""
    soup = [order[0]]
    current = sum(outcomes_of(frozenset(soup)))
    scores = [current]
    for index in order[1:]:
        correct = sum(outcomes_of(frozenset(soup + [index])))
        scores.append(correct)
        if correct > current or (accept == "ge" and correct == current):
            soup.append(index)
            current = correct
    return soup, scores


def run_core(order, outcomes_of, n, accept, *, chunk=256, know_first=False, own=False):
    """greedy_select with a per-example scorer; also checks, chunk by chunk, that it stopped exactly when
    the outcome became certain (and not before), and counts the outcomes it was given."""
    soup: set[int] = set()
    log = []

    def score(index, chunks):
        outcomes = torch.tensor(outcomes_of(frozenset(soup | {index})), dtype=torch.float64)
        assert sorted(torch.cat(chunks).tolist()) == list(range(n))  # every example exactly once
        record = {"index": index, "yielded": [], "soup": frozenset(soup)}
        log.append(record)
        for rows in chunks:
            record["yielded"].append(outcomes[rows])
            yield outcomes[rows]

    first = torch.tensor(outcomes_of(frozenset({order[0]})), dtype=torch.float64)
    own_outcomes = {i: torch.tensor(outcomes_of(frozenset({i}))) for i in order} if own else None
    steps = greedy_select(
        order, first if know_first else float(first.sum()), n, score, soup.add, accept, chunk=chunk, own_outcomes=own_outcomes
    )
    return steps, log


def certain_loss(correct, remaining, needed_over, accept):
    best = correct + remaining
    return best <= needed_over if accept == "gt" else best < needed_over


def random_case(seed):
    """Per-example outcomes for every member set, drawn from a few shared patterns so that counts tie often."""
    rng = random.Random(seed)
    n, count = rng.choice([1, 2, 7, 40, 100, 300]), rng.randint(2, 8)
    patterns = [[int(rng.random() < rng.uniform(0.5, 1.0)) for _ in range(n)] for _ in range(rng.randint(1, 4))]
    table = {}

    def outcomes_of(members):
        if members not in table:
            pattern = list(rng.choice(patterns))
            for j in rng.sample(range(n), rng.randint(0, min(n, 3))):  # a few flips: near ties
                pattern[j] = 1 - pattern[j]
            table[members] = pattern
        return table[members]

    order = list(range(count))
    rng.shuffle(order)
    return order, outcomes_of, n


@pytest.mark.parametrize("accept", ["gt", "ge"])
@pytest.mark.parametrize("variant", [{}, {"know_first": True}, {"know_first": True, "own": True}, {"chunk": 3}])
def test_selection_equals_the_brute_force_loop_on_random_cases(accept, variant):
    saved = 0
    for seed in range(150):
        order, outcomes_of, n = random_case(seed)
        steps, log = run_core(order, outcomes_of, n, accept, **variant)
        chosen, scores = brute_force(order, outcomes_of, accept)
        assert [s.index for s in steps if s.accepted] == chosen, f"seed {seed}"
        current = scores[0]
        for step, full, record in zip(steps[1:], scores[1:], log):
            yielded = record["yielded"]
            assert step.evaluated == sum(len(x) for x in yielded)  # the count is what was scored
            if step.correct is not None:
                assert step.correct == full and step.evaluated == n
            else:  # stopped: certain after the last chunk, not yet certain after any earlier one
                saved += n - step.evaluated
                assert step.evaluated < n and not step.accepted
                assert certain_loss(sum(float(x.sum()) for x in yielded), n - step.evaluated, current, accept)
                for k in range(1, len(yielded)):
                    seen = sum(len(x) for x in yielded[:k])
                    assert not certain_loss(sum(float(x.sum()) for x in yielded[:k]), n - seen, current, accept)
            if step.accepted:
                current = full
            assert step.soup_correct == current
    assert saved > 0


def test_a_tie_is_rejected_under_gt_and_accepted_under_ge():
    # soup {0}: 3 of 4 right; {0,1}: 3 of 4 (another example wrong) - a tie; {0,2} or {0,1,2}: 2 of 4.
    table = {
        frozenset({0}): [1, 1, 1, 0],
        frozenset({0, 1}): [0, 1, 1, 1],
        frozenset({0, 2}): [0, 1, 1, 0],
        frozenset({0, 1, 2}): [1, 1, 0, 0],
    }
    gt, _ = run_core([0, 1, 2], table.__getitem__, 4, "gt", know_first=True, chunk=1)
    ge, _ = run_core([0, 1, 2], table.__getitem__, 4, "ge", know_first=True, chunk=1)
    assert [s.index for s in gt if s.accepted] == [0] and [s.soup_correct for s in gt] == [3, 3, 3]
    assert [s.index for s in ge if s.accepted] == [0, 1] and [s.soup_correct for s in ge] == [3, 3, 3]
    # one example per chunk, the soup's error (example 3) first: {0,1} gets it right, then misses example 0:
    # 1 right + 2 left = 3 cannot beat 3 (gt) after 2 examples; under ge it ties, so it is scored in full
    assert gt[1].correct is None and gt[1].evaluated == 2
    assert ge[1].correct == 3 and ge[1].evaluated == 4


def test_the_soups_errors_are_scored_first():
    # 100 examples; the soup gets only the last one wrong. A candidate that gets it wrong too cannot beat
    # the soup under gt: in set order that shows at example 100, hardest first after the first chunk of 32.
    n = 100
    soup_outcomes = [1] * (n - 1) + [0]
    table = {frozenset({0}): soup_outcomes, frozenset({0, 1}): soup_outcomes}
    steps, log = run_core([0, 1], table.__getitem__, n, "gt", know_first=True)
    assert log[0]["yielded"][0].tolist()[0] == 0  # example 99 came first
    assert steps[1].evaluated == 32 and steps[1].correct is None
    steps, _ = run_core([0, 1], table.__getitem__, n, "gt", know_first=False)  # nothing known: set order
    assert steps[1].evaluated == n and steps[1].correct == n - 1


def test_order_puts_the_soups_errors_then_the_ingredients_then_earlier_misses_first():
    order = HeldoutOrder(8, chunk=3, own_outcomes={5: torch.tensor([1, 1, 1, 1, 1, 1, 0, 1])}, first_chunk=2)
    order.soup_outcomes = torch.tensor([1.0, 1, 1, 1, 1, 1, 1, 0])
    order.record(torch.tensor([2, 4]), torch.tensor([0.0, 1.0]))  # an earlier candidate missed example 2
    # rank: 7 (soup wrong) > 6 (own wrong) > 2 (missed once) > the rest in set order; 3 suspects, chunks 3, 3, 2
    assert [c.tolist() for c in order.chunks(5)] == [[7, 6, 2], [0, 1, 3], [4, 5]]
    # another candidate has no own outcomes: 6 is not a suspect for it
    assert [c.tolist() for c in order.chunks(1)] == [[7, 2], [0, 1, 3], [4, 5, 6]]


def test_a_scorer_must_return_one_outcome_per_example():
    def score(index, chunks):
        yield torch.ones(len(chunks[0]) + 1)

    with pytest.raises(ValueError, match="outcomes for a chunk"):
        greedy_select([0, 1], torch.ones(4), 4, score, lambda i: None)


def ensemble_outcomes(logits, labels):
    def outcomes_of(members):
        mean = sum(logits[m] for m in sorted(members)) / len(members)  # integer sums: exact in any order
        return (mean.argmax(-1) == labels).long().tolist()

    return outcomes_of


def test_greedy_ensemble_equals_the_brute_force_loop_on_random_logits():
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        n, count, classes = int(torch.randint(1, 400, (1,), generator=g)), int(torch.randint(2, 7, (1,), generator=g)), 3
        labels = torch.randint(0, classes, (n,), generator=g)
        logits = [torch.randint(-2, 3, (n, classes), generator=g).float() for _ in range(count)]  # small integers: ties
        outcomes_of = ensemble_outcomes(logits, labels)
        order = list(torch.randperm(count, generator=g))
        for accept in ("gt", "ge"):
            members, steps = greedy_ensemble(logits, labels, [int(i) for i in order], accept=accept, batch_size=64)
            chosen, scores = brute_force([int(i) for i in order], outcomes_of, accept)
            assert members == chosen, f"seed {seed} {accept}"
            assert all(s.correct is None or s.correct == full for s, full in zip(steps, scores))


def test_the_demo_replay_chooses_what_the_official_loop_chose():
    # benchmarks/results/greedy_demo_outcomes.json: the real per-example outcomes of every candidate soup of
    # the official loop on the demo's ingredients; the replay raises if any loop's selection differs.
    from benchmarks.greedy_cost import OUTCOMES, demo_rows

    recorded = json.loads(OUTCOMES.read_text())
    rows = demo_rows()
    for kind, row in rows.items():
        assert row["chosen"] == recorded["orders"][kind]["chosen"]
        assert row["lower_bound"] <= row["ordered"] < row["batches"] < 1.0
