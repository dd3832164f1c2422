"""Output-space comparisons (paper, Sec. 3): the logit ensemble and the greedy ensemble.

An ensemble averages the logits of its members. The greedy ensemble applies the greedy rule
(soups.greedy) to the ensemble's held-out accuracy, scored from cached held-out logits, so it needs
no forward pass beyond one per ingredient.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from soups.greedy import GreedyStep, greedy_select


def average_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(logits)).mean(dim=0)


def greedy_ensemble(
    heldout_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    order: Sequence[int],
    accept: str = "gt",
    early_rejection: bool = True,
    batch_size: int = 256,
) -> tuple[list[int], list[GreedyStep]]:
    """Members chosen by the greedy rule on the ensemble's held-out accuracy, and the trajectory."""
    n = len(labels)
    running = {"sum": torch.zeros_like(heldout_logits[order[0]], dtype=torch.float32), "members": []}

    def commit(index: int) -> None:
        running["sum"] += heldout_logits[index].float()
        running["members"].append(index)

    def score(index: int, chunks: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        size = len(running["members"]) + 1
        for rows in chunks:
            candidate = (running["sum"][rows] + heldout_logits[index][rows].float()) / size
            yield (candidate.argmax(dim=-1) == labels[rows]).long()

    own = {i: (x.float().argmax(dim=-1) == labels).long() for i, x in enumerate(heldout_logits)}
    steps = greedy_select(order, own[order[0]], n, score, commit, accept, early_rejection, chunk=batch_size, own_outcomes=own)
    return list(running["members"]), steps
