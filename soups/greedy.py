"""The greedy rule (paper, Recipe 1) with exact early rejection, for soups and for ensembles alike.

Candidates are visited in order; each is kept if the held-out accuracy of the soup with it beats the
current soup's. The official code compares with strict `>`; the paper writes `≥` (`accept="ge"`).

Exact early rejection: a candidate's held-out correct count is summed chunk by chunk. Once
`correct so far + examples left < correct needed`, no outcome of the remaining examples can make it
accepted, so evaluation stops. Every decision is the one full evaluation makes.

To stop a losing candidate early, the held-out examples are scored hardest first (`HeldoutOrder`): the
ones the current soup gets wrong (known once a candidate is accepted: its outcomes were all scored), then
the ones the candidate's ingredient gets wrong on its own (when the caller knows), then the ones earlier
candidates got wrong, then the rest in set order; the first chunk holds all those suspects, later chunks
double up to `chunk` examples. A scorer that reports per-example outcomes gets this order; one that can
only report counts in its own order yields `(correct, examples)` pairs and gets batch-level rejection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

# Held-out score of "the current soup plus candidate i" on `chunks` (example indices, scored in that order):
# yields per chunk either a tensor of per-example outcomes (1 right, 0 wrong; one per index in the chunk),
# or a (correct, examples) pair when the scorer counts in its own order (then `chunks` only gives the total).
Outcome = torch.Tensor | tuple[float, int]
ScoreChunks = Callable[[int, list[torch.Tensor]], Iterator[Outcome]]

ACCEPT_RULES = ("gt", "ge")
FIRST_CHUNK = 32  # smallest first chunk: one small forward batch


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


class HeldoutOrder:
    """What is known about each held-out example, and the order that puts likely errors first.

    >>> order = HeldoutOrder(6, chunk=4, own_outcomes={1: torch.tensor([1, 1, 1, 1, 0, 1])})
    >>> order.soup_outcomes = torch.tensor([1, 1, 0, 1, 1, 1])
    >>> [chunk.tolist() for chunk in order.chunks(1)]  # the soup's error, the ingredient's, then the rest
    [[2, 4, 0, 1], [3, 5]]
    """

    def __init__(self, n: int, chunk: int = 256, own_outcomes: Mapping[int, torch.Tensor] | None = None, first_chunk: int = FIRST_CHUNK):
        self.n, self.chunk, self.first_chunk = n, max(int(chunk), 1), max(int(first_chunk), 1)
        self.soup_outcomes: torch.Tensor | None = None  # the current soup's per-example outcomes, when all are known
        self.own_wrong = {i: torch.as_tensor(x).flatten() < 1 for i, x in (own_outcomes or {}).items()}
        self.misses = torch.zeros(n, dtype=torch.int64)  # how many scored candidate soups got each example wrong

    def chunks(self, candidate: int) -> list[torch.Tensor]:
        """Example indices for `candidate`, suspects first, split into growing chunks."""
        soup_wrong = torch.zeros(self.n, dtype=torch.int64) if self.soup_outcomes is None else (self.soup_outcomes < 1).long()
        own_wrong = self.own_wrong.get(candidate, torch.zeros(self.n, dtype=torch.bool)).long()
        # rank: the soup's errors, then the ingredient's own, then by earlier candidates' misses; ties in set order
        rank = (soup_wrong * 2 + own_wrong) * (int(self.misses.max()) + 1) + self.misses
        examples = torch.sort(rank, descending=True, stable=True).indices
        suspects = int((rank > 0).sum())
        size = min(max(suspects, self.first_chunk), self.chunk)
        chunks, start = [], 0
        while start < self.n:
            chunks.append(examples[start : start + size])
            start += size
            size = min(size * 2, self.chunk)
        return chunks

    def record(self, examples: torch.Tensor, outcomes: torch.Tensor) -> None:
        self.misses[examples] += (outcomes < 1).long()


def _outcomes(result: Outcome, chunk: torch.Tensor) -> tuple[float, int, torch.Tensor | None]:
    if isinstance(result, torch.Tensor):
        outcomes = result.flatten().double()
        if len(outcomes) != len(chunk):
            raise ValueError(f"held-out scorer returned {len(outcomes)} outcomes for a chunk of {len(chunk)} examples")
        return float(outcomes.sum()), len(outcomes), outcomes
    correct, size = result
    return correct, size, None


def score_candidate(
    results: Iterator[Outcome],
    chunks: Sequence[torch.Tensor],
    n: int,
    current: float,
    accept: str,
    early_rejection: bool,
    known: HeldoutOrder | None = None,
) -> tuple[float, int, torch.Tensor | None]:
    """(correct, evaluated, outcomes): stops as soon as even all remaining examples right could not beat
    `current`; `outcomes` are the per-example outcomes in set order when every example was scored one by one."""
    correct = evaluated = 0
    full = torch.full((n,), float("nan"), dtype=torch.float64)
    per_example = True
    try:
        for position, result in enumerate(results):
            chunk = chunks[position] if position < len(chunks) else torch.empty(0, dtype=torch.int64)
            part, size, outcomes = _outcomes(result, chunk)
            correct += part
            evaluated += size
            if outcomes is None:
                per_example = False
            else:
                full[chunk] = outcomes
                if known is not None:
                    known.record(chunk, outcomes)
            if early_rejection and evaluated < n and not beats(correct + (n - evaluated), current, accept):
                return correct, evaluated, None
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # let a data loader behind the iterator shut down
    if evaluated != n:
        raise ValueError(f"held-out scorer yielded {evaluated} examples, expected {n}")
    return correct, evaluated, full if per_example else None


def greedy_select(
    order: Sequence[int],
    first_correct: float | torch.Tensor,
    n: int,
    score: ScoreChunks,
    commit: Callable[[int], None],
    accept: str = "gt",
    early_rejection: bool = True,
    *,
    chunk: int = 256,
    own_outcomes: Mapping[int, torch.Tensor] | None = None,
) -> list[GreedyStep]:
    """Run the greedy rule over `order`; the soup starts as `order[0]`, whose held-out score is
    `first_correct`: its correct count, or its per-example outcomes (n of them, 1 right, 0 wrong).

    `score(i, chunks)` scores the current soup with candidate i added on the held-out examples in
    `chunks` (see `ScoreChunks`); `commit(i)` adds i to the soup. `own_outcomes` (ingredient index ->
    per-example outcomes of that ingredient alone), when known, put each candidate's own errors early.
    A score known only as a whole (an accuracy) is one chunk of `n = 1` "example".
    """
    if not order:
        raise ValueError("greedy_select needs at least one candidate")
    beats(0, 0, accept)  # an unknown rule fails before any work
    known = HeldoutOrder(n, chunk, own_outcomes)
    if isinstance(first_correct, torch.Tensor) and first_correct.ndim > 0:
        if first_correct.numel() != n:
            raise ValueError(f"first_correct has {first_correct.numel()} per-example outcomes, expected {n}")
        known.soup_outcomes = first_correct.flatten().double()
        first_correct = float(known.soup_outcomes.sum())
    current = float(first_correct)
    commit(order[0])
    steps = [GreedyStep(order[0], True, n, current, current, 1)]
    size = 1
    for index in order[1:]:
        chunks = known.chunks(index)
        correct, evaluated, outcomes = score_candidate(score(index, chunks), chunks, n, current, accept, early_rejection, known)
        complete = evaluated == n
        accepted = complete and beats(correct, current, accept)
        if accepted:
            commit(index)
            current, size = correct, size + 1
            known.soup_outcomes = outcomes
        steps.append(GreedyStep(index, accepted, evaluated, correct if complete else None, current, size))
    return steps


def forward_passes_saved(steps: Sequence[GreedyStep], n: int) -> int:
    """Held-out examples not scored thanks to early rejection (first step excluded: it is not a candidate)."""
    return sum(n - step.evaluated for step in steps[1:])
