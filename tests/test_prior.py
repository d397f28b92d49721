"""Tests of :mod:`deepinv_glowprior.prior`: GlowPrior's value and gradient against the Glow's
density, autograd and finite differences, side effects on caller tensors, use inside deepinv's
optimisation algorithms, and input errors."""

from __future__ import annotations

import copy
import math
import warnings

import deepinv as dinv
import pytest
import torch
from helpers import TINY, smooth_images, train_tiny_glow

from deepinv_glowprior import Glow, GlowPrior

IMG = TINY["img_size"]


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def glow() -> Glow:
    return train_tiny_glow()


@pytest.fixture(scope="module")
def glow64(glow) -> Glow:
    return copy.deepcopy(glow).double()


# -- value and gradient ---------------------------------------------------------------------------


def test_fn_is_negative_log_prob(glow):
    prior = GlowPrior(glow)
    x = smooth_images(5, seed=1)
    values = prior.fn(x)
    assert values.shape == (5,)
    torch.testing.assert_close(values, -glow.log_prob(x))
    torch.testing.assert_close(prior(x), values)  # deepinv's Potential.__call__ -> fn
    # The model prefers its training distribution to white noise.
    noise = torch.rand(5, *IMG, generator=torch.Generator().manual_seed(2))
    assert float(prior.fn(noise).detach().min()) > float(values.detach().max())


def test_fn_accepts_slightly_out_of_range_iterates(glow):
    prior = GlowPrior(glow)
    x = smooth_images(2, seed=3) * 1.2 - 0.1
    assert float(x.min()) < 0 or float(x.max()) > 1
    assert bool(torch.isfinite(prior.fn(x)).all())


def test_grad_matches_autograd_and_finite_differences(glow64):
    prior = GlowPrior(glow64)
    x = (0.2 + 0.6 * smooth_images(3, seed=4)).double()
    gradient = prior.grad(x)
    assert gradient.shape == x.shape and gradient.dtype == torch.float64

    x_leaf = x.clone().requires_grad_(True)
    with warnings.catch_warnings():  # the range check reads float(x.min()) of a graph tensor
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
        (expected,) = torch.autograd.grad(glow64.log_prob(x_leaf).neg().sum(), x_leaf)
    torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-10)

    # Directional derivatives by central differences, per sample, along random directions. The
    # coupling nets' ReLUs make fn piecewise smooth: a tiny step rarely straddles a kink (1e-6
    # did for one sample of one machine's trained model; float64 keeps 1e-8 accurate to ~1e-8).
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        direction = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        eps = 1e-8
        numeric = (prior.fn(x + eps * direction) - prior.fn(x - eps * direction)) / (2 * eps)
        analytic = (gradient * direction).flatten(1).sum(dim=1)
        torch.testing.assert_close(numeric, analytic, rtol=1e-5, atol=1e-5)


def test_fn_passes_gradcheck(glow64):
    prior = GlowPrior(glow64)
    x = (0.2 + 0.6 * smooth_images(1, seed=6)).double().requires_grad_(True)
    assert torch.autograd.gradcheck(prior.fn, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_grad_has_no_side_effects(glow):
    prior = GlowPrior(glow)
    for p in glow.parameters():
        p.grad = None
    flags = [p.requires_grad for p in glow.parameters()]
    x = smooth_images(2, seed=7)
    before = x.clone()
    with torch.no_grad():  # deepinv's solvers and test loop call priors under no_grad
        gradient = prior.grad(x)
    assert not x.requires_grad and x.grad is None and x.grad_fn is None
    assert not gradient.requires_grad
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    assert bool(torch.isfinite(gradient).all()) and float(gradient.abs().max()) > 0
    assert all(p.grad is None for p in glow.parameters())
    assert [p.requires_grad for p in glow.parameters()] == flags
    # Also fine with grad enabled, and deepinv's extra positional arguments are ignored.
    torch.testing.assert_close(prior.grad(x, 0.05), gradient)
    assert not x.requires_grad


# -- inside deepinv's optimisers ------------------------------------------------------------------


def test_gradient_descent_with_deepinv_denoises(glow):
    """MAP denoising by deepinv's GD: ||x - y||^2 / (2 sigma^2) - log p_G(x)."""
    sigma = 0.1
    x = glow.sample(4, 0.5, generator=torch.Generator().manual_seed(8))
    physics = dinv.physics.Denoising(
        dinv.physics.GaussianNoise(sigma, rng=torch.Generator().manual_seed(9))
    )
    y = physics(x)
    model = dinv.optim.optim_builder(
        iteration="GD",
        prior=GlowPrior(glow),
        data_fidelity=dinv.optim.L2(sigma=sigma),
        params_algo={"stepsize": 1e-3, "lambda": 0.5, "g_param": None},
        max_iter=50,
        early_stop=False,
    )
    with torch.no_grad():
        x_hat = model(y, physics)
    assert x_hat.shape == x.shape and bool(torch.isfinite(x_hat).all())
    metric = dinv.metric.PSNR()
    noisy, restored = metric(y.clamp(0, 1), x), metric(x_hat.clamp(0, 1), x)
    assert bool((restored > noisy + 1.0).all()), (noisy, restored)
    assert float((restored - noisy).mean()) > 3.0, (noisy, restored)
    assert not y.requires_grad and not x.requires_grad
    assert all(p.grad is None for p in glow.parameters())


def test_prior_in_deepinv_cost(glow):
    """deepinv evaluates the prior as part of its cost with extra positional arguments."""
    prior = GlowPrior(glow)
    x = smooth_images(3, seed=10)
    torch.testing.assert_close(prior(x, None), prior.fn(x))
    assert prior.explicit_prior


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "match"),
    [((1, 8, 8), "4 dimensions"), ((2, 3, 8, 8), "channels"), ((2, 1, 16, 16), "spatial size")],
)
def test_wrong_shapes(glow, shape, match):
    prior = GlowPrior(glow)
    with pytest.raises(ValueError, match=match):
        prior.fn(torch.rand(shape))
    with pytest.raises(ValueError, match=match):
        prior.grad(torch.rand(shape))


def test_wrong_dtype_and_non_finite(glow):
    prior = GlowPrior(glow)
    with pytest.raises(TypeError, match="dtype"):
        prior.fn(torch.rand(2, *IMG, dtype=torch.float64))
    x = torch.rand(2, *IMG)
    x[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        prior.grad(x)


def test_non_glow_and_untrained(glow):
    with pytest.raises(TypeError, match="deepinv_glowprior.Glow"):
        GlowPrior(torch.nn.Identity())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        untrained = Glow(**TINY)
    with pytest.raises(ValueError, match="untrained"):
        GlowPrior(untrained)
