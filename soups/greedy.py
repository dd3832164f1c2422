"""The greedy rule (paper, Recipe 1) with exact early rejection, for soups and for ensembles alike.

Candidates are visited in order; each is kept if the held-out accuracy of the soup with it beats the
current soup's. The official code compares with strict `>`; the paper writes `≥` (`accept="ge"`).

Exact early rejection: a candidate's held-out correct count is summed batch by batch. Once
`correct so far + examples left < correct needed`, no outcome of the remaining examples can make it
accepted, so evaluation stops. Every decision is the one full evaluation makes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

# Held-out score of "the current soup plus candidate i": yields (correct, examples) per batch.
ScoreBatches = Callable[[int], Iterator[tuple[float, int]]]

ACCEPT_RULES = ("gt", "ge")


@dataclasses.dataclass
class GreedyStep:
    index: int  # the candidate's index among the ingredients
    accepted: bool
    evaluated: int  # held-out examples scored before deciding
    correct: float | None  # candidate soup's held-out correct count; None if rejected early
    soup_correct: float  # the soup's held-out correct count after this step
    soup_size: int  # ingredients in the soup after this step


def beats(candidate: float, current: float, accept: str) -> bool:
    """The greedy rule's test: strictly better (`gt`, the official code) or at least as good (`ge`, the paper)."""
    if accept not in ACCEPT_RULES:
        raise ValueError(f"accept must be one of {ACCEPT_RULES}, got {accept!r}")
    return candidate > current if accept == "gt" else candidate >= current


def score_candidate(
    batches: Iterator[tuple[float, int]], n: int, current: float, accept: str, early_rejection: bool
) -> tuple[float, int, bool]:
    """(correct, evaluated, complete): stops as soon as even all remaining examples right could not beat `current`."""
    correct = evaluated = 0
    for batch_correct, batch_size in batches:
        correct += batch_correct
        evaluated += batch_size
        if early_rejection and evaluated < n and not beats(correct + (n - evaluated), current, accept):
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # let a data loader behind the iterator shut down
            return correct, evaluated, False
    if evaluated != n:
        raise ValueError(f"held-out scorer yielded {evaluated} examples, expected {n}")
    return correct, evaluated, True


def greedy_select(
    order: Sequence[int],
    first_correct: float,
    n: int,
    score: ScoreBatches,
    commit: Callable[[int], None],
    accept: str = "gt",
    early_rejection: bool = True,
) -> list[GreedyStep]:
    """Run the greedy rule over `order`; the soup starts as `order[0]` (held-out correct `first_correct`).

    `score(i)` yields (correct, examples) batches of the current soup with candidate i added; `commit(i)`
    adds i to the soup. A score known only as a whole (an accuracy) is one batch of `n = 1` "example".
    """
    if not order:
        raise ValueError("greedy_select needs at least one candidate")
    beats(0, 0, accept)  # an unknown rule fails before any work
    commit(order[0])
    current = first_correct
    steps = [GreedyStep(order[0], True, n, first_correct, current, 1)]
    size = 1
    for index in order[1:]:
        correct, evaluated, complete = score_candidate(score(index), n, current, accept, early_rejection)
        accepted = complete and beats(correct, current, accept)
        if accepted:
            commit(index)
            current, size = correct, size + 1
        steps.append(GreedyStep(index, accepted, evaluated, correct if complete else None, current, size))
    return steps


def forward_passes_saved(steps: Sequence[GreedyStep], n: int) -> int:
    """Held-out examples not scored thanks to early rejection (first step excluded: it is not a candidate)."""
    return sum(n - step.evaluated for step in steps[1:])
