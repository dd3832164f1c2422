"""Data order and augmentation randomness are functions of counters (resume and DDP rely on it)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from finetune.data import SeededExamples, StepBatchSampler, epoch_permutation, micro_batch_sizes, steps_per_epoch


def flat(sampler) -> list[list[int]]:
    return [[i for i, _ in batch] for batch in sampler]


def test_an_epoch_visits_each_example_once_and_the_last_partial_batch_is_a_step():
    """As the official DataLoader (drop_last=False): 103 examples at batch 10 are 11 steps, the last of 3."""
    batches = flat(StepBatchSampler(103, 10, 1, seed=0, epoch=0))
    seen = [i for b in batches for i in b]
    assert len(batches) == steps_per_epoch(103, 10) == 11
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert seen == epoch_permutation(103, 0, 0).tolist() and sorted(seen) == list(range(103))
    assert flat(StepBatchSampler(103, 10, 1, seed=0, epoch=1)) != batches  # each epoch reshuffles
    assert steps_per_epoch(100, 10) == 10


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


def test_a_partial_last_step_splits_into_even_slices_and_stand_ins():
    """45 examples at global batch 8 on 2 ranks x 2 micro-batches: the last step has 5 examples, cut into
    slices of 2 (mixup's pairs stay together): 2, 2, 1 and an empty one, which yields a stand-in."""
    assert micro_batch_sizes(45, 8, 4, 5) == [2, 2, 1, 0]
    assert micro_batch_sizes(45, 8, 4, 0) == [2, 2, 2, 2]
    assert micro_batch_sizes(45, 12, 2, 3) == [6, 3]  # 9 examples: slices of 6, even as the full ones
    assert micro_batch_sizes(47, 6, 2, 7) == [3, 2]  # full micro-batches of 3 (odd): no rounding
    one = flat(StepBatchSampler(45, 8, 1, seed=3, epoch=0))
    rank0 = flat(StepBatchSampler(45, 8, 2, seed=3, epoch=0, rank=0, world=2))
    rank1 = flat(StepBatchSampler(45, 8, 2, seed=3, epoch=0, rank=1, world=2))
    assert len(one) == 6 and one[-1] == epoch_permutation(45, 3, 0).tolist()[40:]
    assert rank0[-2:] == [one[-1][0:2], one[-1][2:4]]
    assert rank1[-2:] == [one[-1][4:5], one[-1][:1]]  # the empty slice: the step's first example, weighted 0 by the loop


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
