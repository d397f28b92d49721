"""Tests for Theorem 1 (linear invertible generator): Monte Carlo error against its bounds."""

import io
import math

import matplotlib
import pytest
import torch

from deepinv_glowprior.theory import (
    exponential_spectrum,
    flat_spectrum,
    gradient_descent_limit,
    linear_recovery_error,
    plot_theorem1,
    polynomial_spectrum,
    theorem1_lower_bound,
    theorem1_upper_bound,
)

matplotlib.use("Agg")

N = 48
SPECTRA = {
    "exponential": exponential_spectrum(N, rate=0.2),
    "polynomial": polynomial_spectrum(N, power=1.0),
    "flat": flat_spectrum(N),
}


def _random_generator_matrix(singular_values: torch.Tensor, seed: int) -> torch.Tensor:
    n = singular_values.numel()
    rng = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=rng))
    V, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=rng))
    return U * singular_values @ V.T


@pytest.mark.parametrize("m", [6, 16, 32, 44])
@pytest.mark.parametrize("name", list(SPECTRA))
def test_monte_carlo_error_lies_between_bounds(name, m):
    values = SPECTRA[name]
    mean, stderr = linear_recovery_error(values, m, trials=200, seed=1)
    assert stderr > 0
    assert theorem1_lower_bound(values, m) - 3 * stderr <= mean
    assert mean <= theorem1_upper_bound(values, m) + 3 * stderr


def test_flat_spectrum_error_is_n_minus_m():
    # G orthogonal: the error is ||(I - P) z0||^2 with rank(P) = m, a chi-square with n - m dof.
    mean, stderr = linear_recovery_error(flat_spectrum(N), 20, trials=400, seed=2)
    assert abs(mean - (N - 20)) <= 3 * stderr


@pytest.mark.parametrize("name", list(SPECTRA))
def test_upper_bound_is_non_increasing_in_m(name):
    bounds = [theorem1_upper_bound(SPECTRA[name], m) for m in range(4, N)]
    assert all(later <= earlier for earlier, later in zip(bounds, bounds[1:], strict=False))
    lower = [theorem1_lower_bound(SPECTRA[name], m) for m in range(4, N)]
    assert all(lo <= up for lo, up in zip(lower, bounds, strict=True))


def test_bounds_match_hand_computation():
    values = torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    # m = 4 allows only k = 2: (1 + 2 / 1) * (2^2 + 1 + 1 + 0.25).
    assert theorem1_upper_bound(values, 4) == pytest.approx(3 * 6.25)
    assert theorem1_lower_bound(values, 4) == pytest.approx(1.25)
    # m = 5: k = 2 gives (1 + 2/2) * 6.25 = 12.5, k = 3 gives (1 + 3/1) * 2.25 = 9.
    assert theorem1_upper_bound(values, 5) == pytest.approx(9.0)


def test_error_is_the_range_finder_error_of_g_transpose():
    # The identity behind the docstring's derivation: x_hat - x0 = -G (I - P_B) z0, B = G^T A^T.
    n, m = 12, 5
    rng = torch.Generator().manual_seed(3)
    G = _random_generator_matrix(exponential_spectrum(n, rate=0.3), seed=3)
    A = torch.randn(m, n, dtype=torch.float64, generator=rng)
    z0 = torch.randn(n, dtype=torch.float64, generator=rng)
    x_hat = G @ torch.linalg.pinv(A @ G) @ (A @ G @ z0)
    Q, _ = torch.linalg.qr(G.T @ A.T)
    expected = -G @ (z0 - Q @ (Q.T @ z0))
    torch.testing.assert_close(x_hat - G @ z0, expected, rtol=1e-10, atol=1e-12)


def test_gradient_descent_from_zero_reaches_minimum_norm_solution():
    n, m = 8, 5
    rng = torch.Generator().manual_seed(4)
    G = _random_generator_matrix(torch.linspace(1.0, 0.5, n, dtype=torch.float64), seed=4)
    A = torch.randn(m, n, dtype=torch.float64, generator=rng)
    y = A @ G @ torch.randn(n, dtype=torch.float64, generator=rng)
    z = gradient_descent_limit(A, G, y, steps=20_000)
    minimum_norm = torch.linalg.pinv(A @ G) @ y
    torch.testing.assert_close(z, minimum_norm, rtol=1e-9, atol=1e-10)
    # Any other solution adds a null-space component, so it is longer.
    null_direction = torch.linalg.svd(A @ G).Vh[-1]
    assert torch.linalg.norm(z + null_direction) > torch.linalg.norm(z)


def test_estimate_is_reproducible_and_depends_on_seed():
    values = SPECTRA["polynomial"]
    assert linear_recovery_error(values, 10, 50, seed=5) == linear_recovery_error(
        values, 10, 50, seed=5
    )
    assert linear_recovery_error(values, 10, 50, seed=5) != linear_recovery_error(
        values, 10, 50, seed=6
    )


@pytest.mark.parametrize(
    ("singular_values", "m", "trials", "match"),
    [
        (flat_spectrum(10), 3, 10, "m must be at least 4"),
        (flat_spectrum(10), 10, 10, "m must be smaller than n"),
        (flat_spectrum(10), 12, 10, "m must be smaller than n"),
        (flat_spectrum(10), 5.0, 10, "m must be an integer"),
        (flat_spectrum(10), True, 10, "m must be an integer"),
        (flat_spectrum(10), 5, 1, "trials must be at least 2"),
        (flat_spectrum(10), 5, 20.5, "trials must be an integer"),
        (torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0, 0.0]), 4, 10, "must be positive"),
        (torch.tensor([3.0, 2.0, 1.0, -1.0, -2.0, -3.0]), 4, 10, "must be positive"),
        (torch.tensor([3.0, 2.0, math.nan, 1.0, 1.0, 1.0]), 4, 10, "must be finite"),
        (torch.tensor([math.inf, 2.0, 1.0, 1.0, 1.0, 1.0]), 4, 10, "must be finite"),
        (torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0, 1.0]), 4, 10, "non-increasing"),
        (torch.ones(2, 6), 4, 10, "1-D"),
        ([], 4, 10, "1-D"),
    ],
)
def test_invalid_inputs_raise_value_error(singular_values, m, trials, match):
    with pytest.raises(ValueError, match=match):
        linear_recovery_error(singular_values, m, trials=trials)
    if not isinstance(trials, float) and trials >= 2:
        with pytest.raises(ValueError, match=match):
            theorem1_lower_bound(singular_values, m)
        with pytest.raises(ValueError, match=match):
            theorem1_upper_bound(singular_values, m)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: exponential_spectrum(10, rate=0.0), "rate must be positive"),
        (lambda: polynomial_spectrum(10, power=math.inf), "power must be a finite"),
        (lambda: flat_spectrum(0), "n must be at least 1"),
        (lambda: gradient_descent_limit(torch.ones(3, 4), torch.eye(3), torch.ones(3)), "A must"),
        (lambda: gradient_descent_limit(torch.ones(3, 4), torch.eye(4), torch.ones(4)), "y must"),
        (lambda: gradient_descent_limit(torch.eye(4), torch.eye(4), torch.ones(4), lr=-1.0), "lr"),
    ],
)
def test_invalid_helper_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [exponential_spectrum, polynomial_spectrum])
def test_spectra_are_positive_and_non_increasing(make):
    values = make(30, 0.7)
    assert values.shape == (30,) and values.dtype == torch.float64
    assert (values > 0).all() and (values[1:] < values[:-1]).all()


def test_plot_theorem1_draws_three_panels_with_bounds():
    from matplotlib.figure import Figure

    figure = plot_theorem1(n=16, ms=[4, 8, 12], trials=20)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 3
    for axis in figure.axes:
        assert axis.get_yscale() == "log"
        bound_lines = [line for line in axis.lines if "bound" in str(line.get_label())]
        assert len(bound_lines) == 2
        assert all(len(line.get_xdata()) == 3 for line in bound_lines)
        assert len(axis.containers) == 1  # the Monte Carlo error bars
    _, labels = figure.axes[0].get_legend_handles_labels()
    assert sorted(labels) == ["Monte Carlo (±2 s.e.)", "lower bound", "upper bound"]
    figure.savefig(io.BytesIO(), format="png")
