"""Which examples each optimizer step sees, and with which augmentation randomness.

Both are functions of counters, not of hidden random state: the order of epoch `e` is a permutation
drawn from (seed, e), and the augmentation of example `i` in epoch `e` is drawn from (seed, e, i).
So a run resumed at step k sees exactly what an uninterrupted run sees from step k, and a DDP rank
sees exactly its slice of the global batch a 1-process run would see.
"""

from __future__ import annotations

import contextlib
import hashlib
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
    """Optimizer steps per epoch; the last partial batch is dropped so every step has the same size."""
    return num_examples // global_batch


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Micro-batches of one rank for epoch `epoch`, starting at step `start_step` of that epoch.

    Each optimizer step takes the next `global_batch` indices of the epoch's permutation; rank r of
    `world` takes the r-th contiguous slice, cut into `grad_accum` micro-batches. Items are
    (example index, epoch) pairs so the dataset can seed that example's augmentation.
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
        self.micro_batch = global_batch // (grad_accum * world)

    def __len__(self) -> int:
        return (steps_per_epoch(self.num_examples, self.global_batch) - self.start_step) * self.grad_accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_permutation(self.num_examples, self.seed, self.epoch).tolist()
        per_rank = self.global_batch // self.world
        for step in range(self.start_step, steps_per_epoch(self.num_examples, self.global_batch)):
            batch = order[step * self.global_batch : (step + 1) * self.global_batch]
            shard = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
            for m in range(self.grad_accum):
                yield [(i, self.epoch) for i in shard[m * self.micro_batch : (m + 1) * self.micro_batch]]


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
