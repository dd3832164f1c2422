"""The math behind figures 3-5, on cases worked out by hand."""

import math

import numpy as np
import pytest
import torch

from models.errors import UserError
from plots.approx import agreement, approximation, calibrate_beta, cross_entropy, pair_terms, second_difference, softmax_variance
from plots.geometry import angle_degrees, flat_update, gram, plane_coefficients, plane_frame, plane_grid
from soups.average import combine


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_linear_model_soup_equals_ensemble_and_curvature_is_the_softmax_variance():
    # A model linear in its weights: f(x; θ) = θ (one example, two classes). θ₀ = (−.5, .5), θ₁ = (.5, −.5), label 0.
    # Soup and ensemble logits coincide, so L_soup − L_ens = 0. At α = .5, f = (0, 0), p = (.5, .5), Δf = (1, −1):
    # Var = .25·(1 − (−1))² = 1. L(α) = log(1 + e^{1−2α}) so L'' = 4σ(1−σ) = 1 at α = .5. The approximation is 0.
    theta0, theta1 = torch.tensor([[-0.5, 0.5]], dtype=torch.float64), torch.tensor([[0.5, -0.5]], dtype=torch.float64)  # float64: h = 1e-3
    labels = torch.tensor([0])
    h = 1e-3
    soup = [(1 - a) * theta0 + a * theta1 for a in (0.5 - h, 0.5, 0.5 + h)]
    terms = pair_terms(theta0, theta1, *soup, labels, alpha=0.5, step=h, beta=1.0)
    assert terms.variance == pytest.approx(1.0, abs=1e-12)
    assert terms.curvature == pytest.approx(1.0, abs=1e-5)
    assert terms.measured == pytest.approx(0.0, abs=1e-12)
    assert terms.approximation == pytest.approx(0.0, abs=1e-6)


def test_quadratic_model_terms_match_hand_values():
    # f(θ) = θ² elementwise; θ₀ = (1, 0), θ₁ = (1, 1): θ_α = (1, α), soup logits (1, α²), ensemble logits (1, α). Label 0.
    # L(α) = log(1 + e^{α²−1}); L'' = 4α²σ(1−σ) + 2σ with σ = σ(α²−1). At α = .5, σ = σ(−.75).
    # Δf = (0, 1): Var = σ(1−σ). Measured = log(1 + e^{−.75}) − log(1 + e^{−.5}).
    def soup_logits(a: float) -> torch.Tensor:
        return ((1 - a) * torch.tensor([[1.0, 0.0]], dtype=torch.float64) + a * torch.tensor([[1.0, 1.0]], dtype=torch.float64)).square()

    labels = torch.tensor([0])
    h = 1e-3
    terms = pair_terms(
        soup_logits(0.0), soup_logits(1.0), soup_logits(0.5 - h), soup_logits(0.5), soup_logits(0.5 + h), labels, 0.5, h, beta=1.0
    )
    s = sigmoid(-0.75)
    curvature = 4 * 0.25 * s * (1 - s) + 2 * s
    assert terms.curvature == pytest.approx(curvature, abs=1e-5)  # 0.859537
    assert terms.variance == pytest.approx(s * (1 - s), abs=1e-12)  # 0.217895
    assert terms.approximation == pytest.approx(0.125 * (-curvature + s * (1 - s)), abs=1e-6)  # -0.080205
    assert terms.measured == pytest.approx(math.log(1 + math.exp(-0.75)) - math.log(1 + math.exp(-0.5)), abs=1e-12)  # -0.087206
    # The second-order approximation has the measured sign and is within 10% of it here.
    assert terms.approximation < 0 and abs(terms.approximation - terms.measured) < 0.1 * abs(terms.measured)


def test_terms_scale_with_beta():
    logits = torch.tensor([[0.0, 0.0]])
    delta = torch.tensor([[1.0, -1.0]])
    # With f_α = 0 the softmax is uniform for every β, so only β² scales the variance term.
    assert softmax_variance(logits, delta, beta=3.0) == pytest.approx(1.0)
    assert approximation(0.5, curvature=2.0, beta=3.0, variance=1.0) == pytest.approx(0.125 * (-2 + 9))
    assert approximation(0.25, curvature=0.0, beta=1.0, variance=1.0) == pytest.approx(0.25 * 0.75 / 2)


def test_calibrated_beta_matches_closed_form():
    # n examples with logits (1, 0); 3/4 labelled 0. CE(β) is minimal where σ(β) = 3/4, i.e. β = log 3.
    logits = torch.tensor([[1.0, 0.0]] * 4)
    labels = torch.tensor([0, 0, 0, 1])
    assert calibrate_beta(logits, labels) == pytest.approx(math.log(3), rel=1e-6)
    assert cross_entropy(logits, labels, math.log(3)) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_second_difference_of_a_parabola_is_exact():
    # L(α) = 3α² + α: L'' = 6 everywhere.
    def loss(a: float) -> float:
        return 3 * a * a + a

    assert second_difference(loss(0.4), loss(0.5), loss(0.6), 0.1) == pytest.approx(6.0)


def test_agreement():
    r, signs = agreement(torch.tensor([1.0, 2.0, 3.0, -1.0]), torch.tensor([2.0, 4.0, 6.0, 1.0]))
    assert signs == pytest.approx(0.75)
    assert r == pytest.approx(float(np.corrcoef([1, 2, 3, -1], [2, 4, 6, 1])[0, 1]))
    assert math.isnan(agreement(torch.tensor([1.0]), torch.tensor([1.0]))[0])


def test_plane_through_three_points():
    # θ₀ = 0, θ₁ = (2, 0), θ₂ = (1, 1): the frame is the plane itself.
    init, first, second = ({"w": torch.tensor(v, dtype=torch.float32)} for v in ([0.0, 0.0], [2.0, 0.0], [1.0, 1.0]))
    g = gram([flat_update(first, init), flat_update(second, init)])
    frame = plane_frame(g)
    assert frame["theta1"] == pytest.approx((2.0, 0.0))
    assert frame["theta2"] == pytest.approx((1.0, 1.0))
    assert plane_coefficients(g, *frame["theta0"]) == pytest.approx((1, 0, 0))
    assert plane_coefficients(g, *frame["theta1"]) == pytest.approx((0, 1, 0))
    assert plane_coefficients(g, *frame["theta2"]) == pytest.approx((0, 0, 1))
    # (1, .5) = .25·θ₁ + .5·θ₂ + .25·θ₀
    coefficients = plane_coefficients(g, 1.0, 0.5)
    assert coefficients == pytest.approx((0.25, 0.25, 0.5))
    point = combine([init, first, second], coefficients)["w"]
    assert point.tolist() == pytest.approx([1.0, 0.5])
    xs, ys = plane_grid(frame, points=5, margin=0.5)
    assert (xs[0], xs[-1], ys[0], ys[-1]) == pytest.approx((-1.0, 3.0, -1.0, 2.0))  # pad = .5 × the larger extent (2)


def test_plane_rejects_collinear_solutions():
    g = gram([torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([2.0, 0.0], dtype=torch.float64)])
    with pytest.raises(ValueError, match="collinear"):
        plane_frame(g)


def test_angle_and_combine():
    assert angle_degrees(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    a = {"w": torch.tensor([1.0, 3.0]), "steps": torch.tensor([7])}
    b = {"w": torch.tensor([3.0, 5.0]), "steps": torch.tensor([7])}
    mixed = combine([a, b], [0.5, 0.5])
    assert mixed["w"].tolist() == [2.0, 4.0]
    assert mixed["steps"].tolist() == [7]  # integer buffers are not averaged
    assert combine([a, b], [2.0, -1.0])["w"].tolist() == [-1.0, 1.0]  # any coefficients: a point off the segment
    with pytest.raises(UserError, match="non-float tensor 'steps'"):  # the soups' rule: they must agree
        combine([a, {**b, "steps": torch.tensor([8])}], [0.5, 0.5])
