"""Data order and augmentation randomness are functions of counters (resume and DDP rely on it)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from finetune.data import SeededExamples, StepBatchSampler, epoch_permutation, steps_per_epoch


def flat(sampler) -> list[list[int]]:
    return [[i for i, _ in batch] for batch in sampler]


def test_an_epoch_visits_each_example_at_most_once_and_drops_the_partial_batch():
    batches = flat(StepBatchSampler(103, 10, 1, seed=0, epoch=0))
    seen = [i for b in batches for i in b]
    assert len(batches) == steps_per_epoch(103, 10) == 10
    assert len(seen) == len(set(seen)) == 100 and set(seen) <= set(range(103))
    assert seen == epoch_permutation(103, 0, 0).tolist()[:100]
    assert flat(StepBatchSampler(103, 10, 1, seed=0, epoch=1)) != batches  # each epoch reshuffles


def test_ranks_and_accumulation_split_the_same_global_batches():
    one = flat(StepBatchSampler(40, 8, 1, seed=3, epoch=2))
    accum = flat(StepBatchSampler(40, 8, 2, seed=3, epoch=2))
    rank0 = flat(StepBatchSampler(40, 8, 1, seed=3, epoch=2, rank=0, world=2))
    rank1 = flat(StepBatchSampler(40, 8, 1, seed=3, epoch=2, rank=1, world=2))
    assert [accum[2 * s] + accum[2 * s + 1] for s in range(5)] == one
    assert [rank0[s] + rank1[s] for s in range(5)] == one
    assert all(len(b) == 4 for b in rank0 + rank1 + accum)
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(40, 6, 2, seed=0, epoch=0, world=2)


def test_starting_mid_epoch_yields_the_rest_of_the_same_epoch():
    full = flat(StepBatchSampler(50, 5, 1, seed=1, epoch=4))
    assert flat(StepBatchSampler(50, 5, 1, seed=1, epoch=4, start_step=7)) == full[7:]
    assert len(StepBatchSampler(50, 5, 1, seed=1, epoch=4, start_step=7)) == 3


class RandomDraws(Dataset):
    """Each item draws from the three global RNGs, as augmentations do."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int):
        return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_augmentation_randomness_depends_only_on_seed_epoch_and_example():
    data = SeededExamples(RandomDraws(), seed=5)
    first = data[(3, 0)]
    random.random(), torch.rand(3)  # unrelated draws in between change nothing
    assert data[(3, 0)] == first
    assert data[(3, 1)] != first and data[(4, 0)] != first
    assert SeededExamples(RandomDraws(), seed=6)[(3, 0)] != first


def test_seeding_leaves_the_callers_python_and_torch_streams_alone():
    random.seed(0)
    torch.manual_seed(0)
    expected = (random.random(), float(torch.rand(())))
    random.seed(0)
    torch.manual_seed(0)
    SeededExamples(RandomDraws(), seed=5)[(1, 1)]
    assert (random.random(), float(torch.rand(()))) == expected


class BatchedReads(RandomDraws):
    """Counts batched reads (each answers what item-by-item reads would)."""

    def __init__(self):
        self.batched = 0

    def __getitems__(self, indices):
        self.batched += 1
        return [self[i] for i in indices]


class Squares(BatchedReads):
    def __getitem__(self, index: int):
        return index * index


def test_a_batch_is_read_at_once_only_without_random_augmentation():
    keys = [(3, 0), (7, 0), (1, 1)]
    plain = Squares()
    assert SeededExamples(plain, seed=5, random_transform=False).__getitems__(keys) == [9, 49, 1]
    assert plain.batched == 1  # the dataset's own batched read (the world's vectorised conversion)
    augmented = BatchedReads()
    data = SeededExamples(augmented, seed=5)
    assert data.__getitems__(keys) == [data[key] for key in keys]  # each example under its own seed
    assert augmented.batched == 0
