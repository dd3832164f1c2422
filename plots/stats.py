"""Statistics of per-example predictions: a paired bootstrap over test images, and calibration.

Pure functions over numpy arrays; plots/findings.py applies them to the saved logits of a run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


def bootstrap_ci(
    samples: Mapping[str, np.ndarray],
    statistic: Callable[[Mapping[str, np.ndarray]], float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(observed, lo, hi): `statistic` of `samples`, and the percentile interval of its bootstrap distribution.

    `samples` maps a test set to an array whose first axis is that set's examples (e.g. [n, models] of
    0/1 correctness). Each replicate resamples every set's examples with replacement, independently per
    set, and the same rows for every model: the comparison is paired, so what two models get right
    together does not count as noise.
    """
    rng = np.random.default_rng(seed)
    observed = float(statistic(samples))
    replicates = np.empty(n_boot)
    for b in range(n_boot):
        replicates[b] = statistic({name: x[rng.integers(0, len(x), len(x))] for name, x in samples.items()})
    tail = (1 - level) / 2
    lo, hi = np.quantile(replicates, [tail, 1 - tail])
    return observed, float(lo), float(hi)


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """The top class's softmax probability per row."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p.max(axis=1) / p.sum(axis=1)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-mass bins of the examples sorted by confidence: (mean confidence, accuracy, examples) per bin.

    Each bin holds n/n_bins examples (the first n % n_bins bins one more), as the paper's calibration
    appendix bins them; equal-width bins would leave most bins empty for a confident model."""
    order = np.argsort(confidence, kind="stable")
    groups = np.array_split(order, min(n_bins, len(order)))
    mean_conf = np.array([confidence[g].mean() for g in groups])
    accuracy = np.array([correct[g].mean() for g in groups])
    return mean_conf, accuracy, np.array([len(g) for g in groups])


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-mass binning: sum over bins of (bin share) x |accuracy - mean confidence|."""
    mean_conf, accuracy, counts = reliability_bins(confidence, correct, n_bins)
    return float(np.sum(counts / counts.sum() * np.abs(accuracy - mean_conf)))


def accuracy_half_width(top1: np.ndarray, n: np.ndarray, z: float = 1.96) -> float:
    """Half-width of the normal-approximation 95% interval of the mean of independent accuracies
    `top1` measured on `n` images each (one set: the accuracy's own interval)."""
    top1, n = np.asarray(top1, dtype=float), np.asarray(n, dtype=float)
    return float(z * np.sqrt(np.sum(top1 * (1 - top1) / n)) / len(top1))
