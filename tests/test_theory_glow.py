"""Tests of :mod:`deepinv_glowprior.theory_glow` on a tiny, perturbed Glow: the Jacobian against
finite differences and the decoder's log-determinant, its spectrum, the CS error curve and its
plot, and input errors."""

from __future__ import annotations

import math
import warnings

import matplotlib
import pytest
import torch

from deepinv_glowprior import Glow
from deepinv_glowprior.theory_glow import (
    GlowPanelRow,
    format_glow_panel,
    generator_jacobian,
    glow_cs_error_curve,
    jacobian_singular_values,
    plot_glow_panel,
)

matplotlib.use("Agg")

TINY = {"img_size": (1, 8, 8), "levels": 2, "steps": 2, "hidden_channels": 8}
N = 64
MS = (8, 16, 32, 48, 63)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the tests share two cores with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.lu.*")
        warnings.filterwarnings("ignore", message=".*lu_unpack.*")
        yield


def _images(count: int, seed: int) -> torch.Tensor:
    """Smooth random images in [0.2, 0.8], so that their latents are moderate."""
    rng = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 4, 4, generator=rng, dtype=torch.float64)
    return 0.2 + 0.6 * torch.nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear")


@pytest.fixture(scope="module")
def glow() -> Glow:
    """Tiny float64 Glow, ActNorm initialised, every parameter perturbed so that the couplings
    (zero-initialised) are not the identity and the Jacobian depends on z."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Glow(**TINY).double().initialize(_images(16, seed=1)).eval()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def latent(glow) -> torch.Tensor:
    with torch.no_grad():
        z, _ = glow.encode(_images(1, seed=2))
    return z[0]


@pytest.fixture(scope="module")
def table(glow) -> list[GlowPanelRow]:
    return glow_cs_error_curve(
        glow, _images(3, seed=3), MS, trials_per_m=2, max_iter=60, linear_trials=4, seed=0
    )


def test_jacobian_matches_finite_differences(glow, latent):
    jacobian = generator_jacobian(glow, latent, chunk_size=24)
    assert jacobian.shape == (N, N) and jacobian.dtype == torch.float64
    eps = 1e-6
    steps = eps * torch.eye(N, dtype=torch.float64)
    with torch.no_grad():
        plus, _ = glow._decode(latent + steps)
        minus, _ = glow._decode(latent - steps)
    finite_differences = ((plus - minus) / (2 * eps)).flatten(1).T  # column j: d x / d z_j
    assert torch.allclose(jacobian, finite_differences, atol=1e-7, rtol=1e-6)
    # The perturbation makes the decoder nonlinear: the Jacobian changes with z.
    elsewhere = generator_jacobian(glow, latent + 0.5 * torch.randn_like(latent))
    assert (elsewhere - jacobian).abs().max() > 1e-3


def test_log_singular_values_sum_to_decoder_logdet(glow, latent):
    values = torch.linalg.svdvals(generator_jacobian(glow, latent))
    with torch.no_grad():
        _, logdet = glow._decode(latent[None])
    assert math.isclose(float(values.log().sum()), float(logdet), rel_tol=1e-9, abs_tol=1e-9)


def test_float32_jacobian_leaves_model_alone(glow, latent):
    jacobian = generator_jacobian(glow, latent, dtype=torch.float32)
    assert jacobian.dtype == torch.float32 and glow.dtype == torch.float64
    assert all(p.requires_grad for p in glow.parameters())
    assert torch.allclose(jacobian.double(), generator_jacobian(glow, latent), atol=1e-4)


def test_singular_values_sorted_positive(glow):
    images = _images(2, seed=4)
    values = jacobian_singular_values(glow, images)
    assert values.shape == (2, N) and values.dtype == torch.float64
    assert bool((values > 0).all())
    assert bool((values[:, 1:] <= values[:, :-1]).all())
    with torch.no_grad():
        _, logdet = glow._decode(glow.encode(images)[0])
    assert torch.allclose(values.log().sum(dim=1), logdet, atol=1e-8)


def test_error_curve_table(table):
    assert [row.m for row in table] == list(MS)
    for row in table:
        assert math.isclose(row.ratio, row.m / N)
        values = row.as_dict()
        assert set(values) == {field for field in GlowPanelRow.__dataclass_fields__}
        errors = values.pop("measured_errors")
        assert len(errors) == 3 * 2 and all(math.isfinite(e) and e >= 0 for e in errors)
        assert math.isclose(sum(errors) / len(errors), row.measured_mean, rel_tol=1e-9)
        assert all(math.isfinite(v) for v in values.values())
        assert 0 < row.lower_bound <= row.upper_bound
        assert row.measured_stderr >= 0 and row.linear_stderr > 0
        # Theorem 1 for the linearised generator: the Monte Carlo mean lies between the bounds.
        assert row.lower_bound - 3 * row.linear_stderr <= row.linear_mean
        assert row.linear_mean <= row.upper_bound + 3 * row.linear_stderr
    measured = [row.measured_mean for row in table]
    for fewer, more in zip(measured, measured[1:], strict=False):
        assert more <= fewer * 1.05 + 1e-8
    assert measured[-1] < 0.5 * measured[0]
    text = format_glow_panel(table)
    assert len(text.splitlines()) == len(MS) + 1 and "measured" in text


def test_plot_has_expected_lines(table):
    figure = plot_glow_panel(table, title="tiny")
    (axis,) = figure.axes
    assert axis.get_yscale() == "log"
    _, labels = axis.get_legend_handles_labels()
    assert sorted(labels) == [
        "Theorem 1, linearised (MC)",
        "lower bound",
        "measured (Glow, L-BFGS from z = 0)",
        "measured, each image",
        "tangent model at z*",
        "upper bound",
    ]
    lines = {line.get_label(): line for line in axis.get_lines()}
    assert len(lines) == 5
    for line in lines.values():
        assert list(line.get_xdata()) == list(MS)
    measured = [row.measured_mean for row in table]
    assert list(lines["measured (Glow, L-BFGS from z = 0)"].get_ydata()) == measured
    assert list(lines["upper bound"].get_ydata()) == [row.upper_bound for row in table]
    (dots,) = axis.collections
    assert len(dots.get_offsets()) == len(MS) * 3 * 2


def test_input_errors(glow, latent):
    with pytest.raises(ValueError, match="shape"):
        generator_jacobian(glow, latent[None])
    with pytest.raises(TypeError, match="Glow"):
        generator_jacobian(torch.nn.Linear(2, 2), latent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        untrained = Glow(**TINY).double()
    with pytest.raises(ValueError, match="untrained"):
        jacobian_singular_values(untrained, _images(1, seed=0))
    with pytest.raises(ValueError, match="smaller than n"):
        glow_cs_error_curve(glow, _images(1, seed=0), [N])
    with pytest.raises(ValueError, match="at least 4"):
        glow_cs_error_curve(glow, _images(1, seed=0), [3])
    with pytest.raises(ValueError, match="non-empty"):
        glow_cs_error_curve(glow, _images(1, seed=0), [])
    with pytest.raises(ValueError, match="GlowPanelRow"):
        plot_glow_panel([])
