"""Soup against ensemble: the paper's second-order approximation of L_soup − L_ens (Wortsman et al. 2022, Sec. 4
and App. on "soups and ensembles"), as pure functions over logits.

For θ_α = (1−α)θ₀ + αθ₁ with logits f_α = f(x; θ_α), the ensemble's logits are (1−α)f₀ + αf₁, and with a
calibrated inverse temperature β on the cross-entropy loss L,

    L_soup(α) − L_ens(α) ≈ α(1−α)/2 · ( −d²L_soup/dα² + β² · E_x Var_{Y∼softmax(β f_α(x))}[Δf_Y(x)] ),  Δf = f₁ − f₀.

Why: f_α − f_ens ≈ −α(1−α)/2 · d²f_α/dα², and d²L/dα² = β ∇ℓ·f″ + β² Var_p[f′]; with f′ ≈ Δf the first term is
what remains of the curvature once the softmax's own curvature (the variance) is taken out.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, beta: float = 1.0) -> float:
    """Mean cross-entropy of softmax(β · logits), in nats (float64 for stable differences)."""
    return float(F.cross_entropy(beta * logits.double(), labels))


def calibrate_beta(logits: torch.Tensor, labels: torch.Tensor, low: float = 1e-3, high: float = 1e3, iterations: int = 80) -> float:
    """The inverse temperature β minimising the cross-entropy of softmax(β · logits) (temperature scaling).

    The loss is convex in β, so a golden-section search over log β finds the minimum.
    """
    ratio = (math.sqrt(5) - 1) / 2
    a, b = math.log(low), math.log(high)
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = cross_entropy(logits, labels, math.exp(c)), cross_entropy(logits, labels, math.exp(d))
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = cross_entropy(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = cross_entropy(logits, labels, math.exp(d))
    return math.exp((a + b) / 2)


def ensemble_logits(logits_0: torch.Tensor, logits_1: torch.Tensor, alpha: float) -> torch.Tensor:
    return (1 - alpha) * logits_0.double() + alpha * logits_1.double()


def softmax_variance(logits_alpha: torch.Tensor, delta: torch.Tensor, beta: float) -> float:
    """E_x Var_{Y∼softmax(β f_α(x))}[Δf_Y(x)]: per example Σ p_y Δf_y² − (Σ p_y Δf_y)², then the mean."""
    p = torch.softmax(beta * logits_alpha.double(), dim=-1)
    delta = delta.double()
    mean = (p * delta).sum(-1)
    return float(((p * delta.square()).sum(-1) - mean.square()).mean())


def second_difference(loss_minus: float, loss_mid: float, loss_plus: float, step: float) -> float:
    """Central finite difference of d²L/dα² from L(α−h), L(α), L(α+h); error O(h²)."""
    return (loss_plus - 2 * loss_mid + loss_minus) / step**2


def approximation(alpha: float, curvature: float, beta: float, variance: float) -> float:
    """The paper's α(1−α)/2 · (−d²L_soup/dα² + β² E Var[Δf])."""
    return alpha * (1 - alpha) / 2 * (-curvature + beta**2 * variance)


@dataclasses.dataclass(frozen=True)
class PairTerms:
    beta: float
    curvature: float  # d²L_soup/dα² by finite differences
    variance: float  # E_x Var_{softmax(β f_α)}[Δf]
    approximation: float
    measured: float  # L_soup(α) − L_ens(α)
    soup_loss: float
    ensemble_loss: float


def pair_terms(
    logits_0: torch.Tensor,
    logits_1: torch.Tensor,
    soup_minus: torch.Tensor,
    soup_mid: torch.Tensor,
    soup_plus: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    step: float,
    beta: float | None = None,
) -> PairTerms:
    """Every term for one pair, from the endpoint logits and the soup's logits at α−h, α, α+h.

    β is calibrated on the soup at α unless given (the variance is taken under softmax(β f_α)).
    """
    beta = calibrate_beta(soup_mid, labels) if beta is None else beta
    losses = [cross_entropy(x, labels, beta) for x in (soup_minus, soup_mid, soup_plus)]
    curvature = second_difference(*losses, step)
    variance = softmax_variance(soup_mid, logits_1 - logits_0, beta)
    ensemble_loss = cross_entropy(ensemble_logits(logits_0, logits_1, alpha), labels, beta)
    return PairTerms(
        beta=beta,
        curvature=curvature,
        variance=variance,
        approximation=approximation(alpha, curvature, beta, variance),
        measured=losses[1] - ensemble_loss,
        soup_loss=losses[1],
        ensemble_loss=ensemble_loss,
    )


def agreement(measured: torch.Tensor | np.ndarray, predicted: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """Pearson correlation (NaN for fewer than 2 points or no spread) and the fraction of pairs whose signs agree."""
    measured, predicted = (
        torch.from_numpy(np.array(x, dtype=np.float64)) for x in (measured, predicted)
    )  # copies: inputs may be read-only
    signs = float((torch.sign(measured) == torch.sign(predicted)).double().mean()) if len(measured) else math.nan
    if len(measured) < 2 or measured.std() == 0 or predicted.std() == 0:
        return math.nan, signs
    return float(torch.corrcoef(torch.stack([measured, predicted]))[0, 1]), signs
