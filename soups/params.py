"""Each soup method's parameters as a typed dataclass: the one place their defaults live.

The same class validates a library call (`greedy_soup(accept=...)` checks through `GreedyParams`) and is
the Hydra structured config of `conf/soup/<name>.yaml` (registered by soups.config), so a typo or a
wrong type in `soup.*` is refused before any work. No Hydra, no torch: `import soups` stays light.
"""

from __future__ import annotations

import dataclasses

from soups.greedy import ACCEPT_RULES

MISSING = "???"  # OmegaConf's marker of a value the YAML file must set (name, run_name, loader settings)
ACCUMULATE = ("float32", "float64")
ORDERS = ("sorted", "random")


def _one_of(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{field}: unknown value {value!r}; use {' or '.join(allowed)}")


def check_alpha(alpha: float) -> None:
    """WiSE-FT interpolates: α outside [0, 1] would extrapolate away from both endpoints."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (interpolation, not extrapolation), got {alpha}")


@dataclasses.dataclass
class SoupParams:
    """What every method takes (`soup=uniform`, `ensemble` and `model_stock` take nothing more)."""

    name: str = MISSING  # the method, a key of soups.registry.METHODS
    run_name: str = MISSING  # the run folder and model_id: runs/<name>/soups/<run_name>
    init: str | None = None  # θ0, the zero-shot (or LP) init checkpoint: wise_ft and model_stock start from it
    evaluate: bool = True  # evaluate the result on eval.sets and write results records
    eval_chunk: int = 8  # models scored per decoded batch (shared decoding) when evaluating several
    accumulate: str = "float32"  # dtype of running sums: float32 | float64

    def __post_init__(self) -> None:
        _one_of("accumulate", self.accumulate, ACCUMULATE)
        if self.eval_chunk < 1:
            raise ValueError(f"eval_chunk must be >= 1, got {self.eval_chunk}")


@dataclasses.dataclass
class GreedyParams(SoupParams):
    """The greedy soup and the greedy ensemble (paper, Recipe 1)."""

    order: str = "sorted"  # sorted (by held-out accuracy, best first) | random (the paper's ablation; seed=...)
    accept: str = "gt"  # gt: strict > as the official code | ge: the paper's >=
    early_rejection: bool = True  # stop scoring a candidate once it cannot win (exact: the same selection)

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("order", self.order, ORDERS)
        _one_of("accept", self.accept, ACCEPT_RULES)


@dataclasses.dataclass
class LearnedParams(SoupParams):
    """The learned soup (paper, App. I): AdamW on the mixing weights over the held-out split."""

    lr: float = 0.05  # AdamW, as the official by-layer script
    weight_decay: float = 0.0
    epochs: int = 5
    batch_size: int = MISSING  # conf/soup/learned.yaml: ${data.batch_size}
    workers: int = MISSING  # conf/soup/learned.yaml: ${data.workers}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0, weight_decay >= 0, epochs >= 0; got {self.lr}, {self.weight_decay}, {self.epochs}")


def _wise_ft_alphas() -> list[float]:
    return [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@dataclasses.dataclass
class WiseFTParams(SoupParams):
    """WiSE-FT: (1 − α)·init + α·fine-tuned over a grid of α, one results record per α."""

    alphas: list[float] = dataclasses.field(default_factory=_wise_ft_alphas)
    alpha: float = 0.5  # the α whose weights are written to model.safetensors

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(not 0.0 <= float(a) <= 1.0 for a in self.alphas):
            raise ValueError(f"alphas: every α must lie in [0, 1] (interpolation, not extrapolation), got {list(self.alphas)}")
        check_alpha(self.alpha)
