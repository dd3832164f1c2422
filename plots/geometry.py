"""Weight-space geometry for figures 3 and 4: combinations of checkpoints, angles between updates, and the plane
through three solutions (the paper's Fig. 2, after Garipov et al. 2018). Pure functions over state dicts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

State = Mapping[str, torch.Tensor]


def flat_update(state: State, init: State) -> torch.Tensor:
    """θ − θ₀ over every floating-point tensor, flattened into one float64 vector (keys sorted)."""
    return torch.cat([(state[k].double() - init[k].double()).flatten() for k in sorted(init) if init[k].is_floating_point()])


def angle_degrees(u: torch.Tensor, v: torch.Tensor) -> float:
    cosine = float(torch.dot(u, v) / (u.norm() * v.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


def gram(updates: Sequence[torch.Tensor]) -> np.ndarray:
    """Inner products ⟨u_i, u_j⟩ of flattened updates."""
    return np.array([[float(torch.dot(a, b)) for b in updates] for a in updates])


def plane_frame(gram_uw: np.ndarray) -> dict[str, tuple[float, float]]:
    """Plane coordinates of θ₀, θ₁, θ₂ in the orthonormal frame û = u/|u|, v̂ ∝ w − (w·û)û, with u = θ₁−θ₀, w = θ₂−θ₀."""
    uu, uw, ww = gram_uw[0, 0], gram_uw[0, 1], gram_uw[1, 1]
    norm_u = math.sqrt(uu)
    norm_v = math.sqrt(max(ww - uw**2 / uu, 0.0))
    if norm_u == 0 or norm_v == 0:
        raise ValueError("the init and the two solutions are collinear; they span no plane")
    return {"theta0": (0.0, 0.0), "theta1": (norm_u, 0.0), "theta2": (uw / norm_u, norm_v)}


def plane_coefficients(gram_uw: np.ndarray, x: float, y: float) -> tuple[float, float, float]:
    """Weights (c₀, c₁, c₂) with θ₀ + x û + y v̂ = c₀θ₀ + c₁θ₁ + c₂θ₂.

    x û + y v̂ = a u + b w with b = y/|v|, a = x/|u| − y (u·w)/(|u|² |v|); then c = (1−a−b, a, b).
    """
    uu, uw = gram_uw[0, 0], gram_uw[0, 1]
    frame = plane_frame(gram_uw)
    norm_u, norm_v = frame["theta1"][0], frame["theta2"][1]
    b = y / norm_v
    a = x / norm_u - y * uw / (uu * norm_v)
    return 1.0 - a - b, a, b


def plane_grid(frame: dict[str, tuple[float, float]], points: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid axes covering the three points with `margin` × extent on every side."""
    xs = [p[0] for p in frame.values()]
    ys = [p[1] for p in frame.values()]
    span = max(max(xs) - min(xs), max(ys) - min(ys))
    pad = margin * span
    return np.linspace(min(xs) - pad, max(xs) + pad, points), np.linspace(min(ys) - pad, max(ys) + pad, points)
