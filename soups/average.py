"""Weight averaging: a streaming running sum (uniform and greedy soups) and linear interpolation (WiSE-FT).

A soup's weights are θ = Σ_i w_i θ_i / Σ_i w_i (paper, Eq. 1 with uniform weights). The sum is kept in
float32 (or float64 if asked) whatever the ingredients' dtype, and cast back at the end. Non-float
tensors (integer buffers) are not averaged: they must be equal across ingredients.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from models.errors import UserError

StateDict = dict[str, torch.Tensor]


# Step counters, not weights: BatchNorm's `num_batches_tracked` differs between fine-tuning runs of
# different lengths and is unused in eval mode (fixed momentum), so the first ingredient's value is kept.
COUNTER_SUFFIXES = ("num_batches_tracked",)


def is_counter(key: str) -> bool:
    return key.endswith(COUNTER_SUFFIXES)


def check_equal(key: str, first: torch.Tensor, other: torch.Tensor, name: str) -> None:
    """Non-float tensors are not averaged: they must be equal across ingredients (counters excepted)."""
    if not is_counter(key) and not torch.equal(first, other):
        raise UserError(
            f"{name}: non-float tensor '{key}' differs from the first ingredient's; such tensors are not averaged and must be equal"
        )


class RunningSum:
    """Σ_i w_i θ_i over ingredients added one tensor at a time, so only the sum stays in memory."""

    def __init__(self, accumulate: torch.dtype = torch.float32):
        self.accumulate = accumulate
        self.sums: StateDict = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(
        self,
        tensors: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
        weight: float = 1.0,
        name: str = "ingredient",
        owned: bool = False,
    ) -> None:
        """Add one ingredient. `owned=True` lets the sum take over the first ingredient's tensors (no copy)."""
        pairs = tensors.items() if isinstance(tensors, Mapping) else tensors
        for key, tensor in pairs:
            if not tensor.is_floating_point():
                if key in self.sums:
                    check_equal(key, self.sums[key], tensor, name)
                else:
                    self.sums[key], self.dtypes[key] = tensor.clone(), tensor.dtype
            elif key in self.sums:
                self.sums[key].add_(tensor.to(self.accumulate), alpha=weight)
            else:
                self.dtypes[key] = tensor.dtype
                reuse = owned and tensor.dtype == self.accumulate
                self.sums[key] = (tensor if reuse else tensor.to(self.accumulate, copy=True)).mul_(weight)
        self.total_weight += weight
        self.count += 1

    def mean(self, in_place: bool = False) -> StateDict:
        """The weighted average, in the ingredients' dtypes. `in_place=True` divides the sums themselves
        (no second model in memory) and leaves this running sum spent."""
        if self.count == 0:
            raise UserError("ingredients: the ingredient set is empty; nothing to average")
        if in_place:
            out = {k: v.div_(self.total_weight).to(self.dtypes[k]) if v.is_floating_point() else v for k, v in self.sums.items()}
            self.sums, self.count = {}, 0
            return out
        return {k: (v / self.total_weight).to(self.dtypes[k]) if v.is_floating_point() else v.clone() for k, v in self.sums.items()}

    def weighted_sum(self) -> StateDict:
        """Σ_i w_i θ_i itself, in the ingredients' dtypes (for coefficients that are not an average)."""
        return {k: v.to(self.dtypes[k]) if v.is_floating_point() else v.clone() for k, v in self.sums.items()}

    def mean_with(self, state: Mapping[str, torch.Tensor], weight: float = 1.0, name: str = "candidate") -> StateDict:
        """The average if `state` were added, without adding it (greedy soup's candidate)."""
        total = self.total_weight + weight
        out = {}
        for key, summed in self.sums.items():
            if not summed.is_floating_point():
                check_equal(key, summed, state[key], name)
                out[key] = summed.clone()
            else:
                out[key] = summed.add(state[key].to(self.accumulate), alpha=weight).div_(total).to(self.dtypes[key])
        return out


def uniform_soup(
    states: Iterable[Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]], accumulate: torch.dtype = torch.float32
) -> StateDict:
    """The plain average of all ingredients (paper, "uniform soup"), streaming one at a time."""
    running = RunningSum(accumulate)
    for index, state in enumerate(states):
        running.add(state, name=f"ingredient {index}")
    return running.mean(in_place=True)


def combine(states: Sequence[Mapping[str, torch.Tensor]], coefficients: Sequence[float]) -> StateDict:
    """Σ_k c_k θ_k for any coefficients (the points of the paper's Fig. 2 plane, Fig. 3's mixtures), with the
    soups' rule for non-float tensors: they must be equal across states (step counters excepted)."""
    if len(states) != len(coefficients) or not states:
        raise ValueError("give one coefficient per state, at least one state")
    running = RunningSum()
    for index, (state, coefficient) in enumerate(zip(states, coefficients)):
        running.add(state, weight=float(coefficient), name=f"state {index}")
    return running.weighted_sum()


def interpolate(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], alpha: float) -> StateDict:
    """(1 − α)·start + α·end (WiSE-FT, Wortsman et al. 2022b, Eq. 1); non-float tensors must agree."""
    out = {}
    for key, a in start.items():
        b = end[key]
        if a.is_floating_point():
            out[key] = torch.lerp(a.float(), b.float(), alpha).to(a.dtype)
        else:
            check_equal(key, a, b, "fine-tuned endpoint")
            out[key] = a.clone()
    return out


def add_task_vectors(init: Mapping[str, torch.Tensor], total: Mapping[str, torch.Tensor], count: int, scaling: float) -> StateDict:
    """Task arithmetic (Ilharco et al. 2023, Sec. 2): θ0 + λ·Σ_i (θ_i − θ0), from `total` = Σ_i θ_i over `count`
    ingredients (a RunningSum's sums), in the init's dtypes; non-float tensors must equal the init's."""
    out = {}
    for key, theta0 in init.items():
        if key not in total:
            raise UserError(f"task_arithmetic: key '{key}' of the init checkpoint is missing from the ingredients")
        if theta0.is_floating_point():
            base = theta0.to(total[key].dtype)
            out[key] = (base + float(scaling) * (total[key] - count * base)).to(theta0.dtype)
        else:
            check_equal(key, theta0, total[key], "the ingredients")
            out[key] = theta0.clone()
    return out
