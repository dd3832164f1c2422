"""Which examples each optimizer step sees, and with which augmentation randomness.

Both are functions of counters, not of hidden random state: the order of epoch `e` is a permutation
drawn from (seed, e), and the augmentation of example `i` in epoch `e` is drawn from (seed, e, i).
So a run resumed at step k sees exactly what an uninterrupted run sees from step k, and a DDP rank
sees exactly its slice of the global batch a 1-process run would see. `seed` is the job's data seed
(`finetune.sweeps.data_seed`: each job of a sweep its own stream).

As the official fine-tuning (a DataLoader with drop_last=False), the last partial batch of an epoch is
a step of its own: it is trained on and counted in the schedule.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def counter_seed(*counters: int) -> int:
    """A 63-bit seed from integer counters (a blake2b hash: the same on every machine and Python)."""
    digest = hashlib.blake2b(":".join(str(int(c)) for c in counters).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(counter_seed(seed, epoch))
    return torch.randperm(num_examples, generator=generator)


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """Optimizer steps per epoch: the last partial batch counts (the official DataLoader keeps it)."""
    return math.ceil(num_examples / global_batch)


def micro_batch_sizes(num_examples: int, global_batch: int, micro_batches: int, step: int) -> list[int]:
    """How many examples each micro-batch of step `step` of an epoch holds (rank-major, then accumulation).

    A full step splits evenly. The last, partial step is cut into contiguous slices of one size, rounded
    up to an even number when full micro-batches are even, so mixup's neighbour pairs stay together as in a
    1-process run; trailing slices may be empty (0: the loop runs a stand-in example with no weight, so
    every rank still takes part in the all-reduce).
    """
    size = min(global_batch, num_examples - step * global_batch)
    full = global_batch // micro_batches
    if size == global_batch:
        return [full] * micro_batches
    per = math.ceil(size / micro_batches)
    per += per % 2 if full % 2 == 0 else 0
    return [max(0, min(per, size - k * per)) for k in range(micro_batches)]


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Micro-batches of one rank for epoch `epoch`, starting at step `start_step` of that epoch.

    Each optimizer step takes the next `global_batch` indices of the epoch's permutation (fewer at the
    epoch's last step); the step is cut into `world x grad_accum` contiguous micro-batches
    (`micro_batch_sizes`), rank r taking the r-th group of `grad_accum`. Items are (example index, epoch)
    pairs so the dataset can seed that example's augmentation. An empty micro-batch of a partial step
    yields the step's first example as a stand-in (the loop gives it no weight).
    """

    def __init__(
        self,
        num_examples: int,
        global_batch: int,
        grad_accum: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world: int = 1,
        start_step: int = 0,
    ):
        if global_batch % (grad_accum * world):
            raise ValueError(f"batch size {global_batch} is not divisible by grad_accum x world size = {grad_accum * world}")
        self.num_examples, self.global_batch, self.grad_accum = num_examples, global_batch, grad_accum
        self.seed, self.epoch, self.rank, self.world, self.start_step = seed, epoch, rank, world, start_step

    def __len__(self) -> int:
        return (steps_per_epoch(self.num_examples, self.global_batch) - self.start_step) * self.grad_accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_permutation(self.num_examples, self.seed, self.epoch).tolist()
        for step in range(self.start_step, steps_per_epoch(self.num_examples, self.global_batch)):
            batch = order[step * self.global_batch : (step + 1) * self.global_batch]
            sizes = micro_batch_sizes(self.num_examples, self.global_batch, self.grad_accum * self.world, step)
            starts = [sum(sizes[:k]) for k in range(len(sizes))]
            for k in range(self.rank * self.grad_accum, (self.rank + 1) * self.grad_accum):
                micro = batch[starts[k] : starts[k] + sizes[k]] or batch[:1]  # an empty slice: a stand-in, weight 0
                yield [(i, self.epoch) for i in micro]


@contextlib.contextmanager
def seeded_randomness(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch for one block.

    timm's RandAugment draws from `random` and `numpy.random`, torchvision transforms from torch. The
    python and torch states are restored afterwards; numpy's is left reseeded, since saving it costs
    more than a whole RandAugment (nothing in the training loop draws from numpy's global state).
    """
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        torch.set_rng_state(torch_state)


class SeededExamples(Dataset):
    """Index with (example, epoch): the example's random augmentation is drawn from (seed, epoch, example).

    `random_transform=False` (no augmentation configured) skips the seeding, which then has no effect.
    """

    def __init__(self, dataset: Dataset, seed: int, random_transform: bool = True):
        self.dataset, self.seed, self.random_transform = dataset, seed, random_transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        if not self.random_transform:
            return self.dataset[index]
        with seeded_randomness(counter_seed(self.seed, epoch, index)):
            return self.dataset[index]

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> list:
        """A batch through the dataset's own batched read where it has one (the embedded world converts a
        batch at once): as is without random augmentation; with it, only where the read seeds each example
        (`seeds_batched_reads`: it draws each example's augmentation inside the context given). Else example
        by example, each under its own seed."""
        indices = [index for index, _ in keys]
        if not self.random_transform and hasattr(self.dataset, "__getitems__"):
            return self.dataset.__getitems__(indices)
        if self.random_transform and getattr(self.dataset, "seeds_batched_reads", False):
            return self.dataset.__getitems__(indices, around=lambda p: seeded_randomness(counter_seed(self.seed, keys[p][1], keys[p][0])))
        return [self[key] for key in keys]
