"""Tests of :mod:`deepinv_glowprior.posterior`: the Langevin core on analytic Gaussian targets
(MALA exact, ULA's known bias, preconditioning, non-finite proposals), split R-hat on known
chains, the Glow posterior sampler against the exact posterior of an affine Glow, on a trained
tiny Glow (shapes, consistency, inpainting uncertainty, reproducibility), deepinv's ULA and
SKRock with GlowPrior, and input errors."""

from __future__ import annotations

import math

import deepinv as dinv
import pytest
import torch
from helpers import TINY, smooth_images, train_tiny_glow

from deepinv_glowprior import Glow, GlowPosteriorSampler, GlowPrior, GlowReconstructor
from deepinv_glowprior.posterior import hamiltonian, langevin, split_rhat
from deepinv_glowprior.tasks import centre_hole_mask

IMG = TINY["img_size"]
N = math.prod(IMG)


pytestmark = pytest.mark.usefixtures("seeded_and_quiet")


@pytest.fixture(scope="module")
def glow() -> Glow:
    return train_tiny_glow()


@pytest.fixture(scope="module")
def affine_glow() -> Glow:
    """An ActNorm-initialised, untrained Glow: its couplings are the identity, so G(z) = Wz + b
    exactly and every posterior under a linear Gaussian physics is Gaussian and known."""
    torch.manual_seed(0)
    return Glow(**TINY).initialize(smooth_images(64)).eval()


def affine_parts(glow: Glow) -> tuple[torch.Tensor, torch.Tensor]:
    """W (N, n) and b (N,) of an affine Glow, in float64."""
    bias = glow.decode(torch.zeros(1, N)).flatten().double().detach()
    jac = torch.autograd.functional.jacobian(
        lambda v: glow.decode(v[None]).flatten(), torch.zeros(N)
    )
    return jac.double().detach(), bias


def exact_denoising_posterior(glow: Glow, y: torch.Tensor, sigma: float):
    """Pixel mean and standard deviation of p(x | y) for y = G(z) + sigma * noise, G affine."""
    weight, bias = affine_parts(glow)
    precision = weight.T @ weight / sigma**2 + torch.eye(N, dtype=torch.float64)
    cov_z = torch.linalg.inv(precision)
    mean_z = cov_z @ weight.T @ (y.flatten().double() - bias) / sigma**2
    mean_x = weight @ mean_z + bias
    std_x = torch.diagonal(weight @ cov_z @ weight.T).sqrt()
    return mean_x.view(IMG).float(), std_x.view(IMG).float()


def affine_denoising_problem(glow: Glow, sigma: float = 0.05):
    """Physics, a measurement of a random image of the affine ``glow``, and the exact posterior
    pixel mean and std."""
    physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(sigma))
    with torch.no_grad():
        latent = 0.3 * torch.randn(1, N, generator=torch.Generator().manual_seed(3))
        y = physics(glow.decode(latent))
    return (physics, y, *exact_denoising_posterior(glow, y, sigma))


def gaussian_potential(mean: torch.Tensor, precision: torch.Tensor):
    return lambda z: 0.5 * ((z - mean).pow(2) * precision).sum(dim=1)


def assert_gaussian_draws(
    draws: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor, mean_atol: float
) -> None:
    """Draws ``(draws, chains, d)`` pooled over chains have the mean and variances of
    N(mean, diag(1 / precision)), the variances within 6%."""
    pooled = draws.flatten(0, 1)
    assert torch.allclose(pooled.mean(0), mean, atol=mean_atol)
    assert torch.allclose(pooled.var(0), 1 / precision, rtol=0.06)


# -- the Langevin core ----------------------------------------------------------------------------
def test_mala_samples_an_anisotropic_gaussian_exactly():
    mean, precision = torch.tensor([1.0, -2.0]), torch.tensor([1.0, 4.0])
    run = langevin(
        gaussian_potential(mean, precision),
        torch.zeros(400, 2),
        draws=100,
        burn_in=100,
        thinning=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert run.draws.shape == (100, 400, 2) and run.energy.shape == (100, 400)
    assert_gaussian_draws(run.draws, mean, precision, mean_atol=0.03)
    assert abs(float(run.acceptance.mean()) - 0.574) < 0.1
    assert run.evaluations == 100 + 100 * 2 + 1


def test_ula_has_its_known_bias_and_mala_removes_it():
    """On N(0, 1/p), ULA with step h is an AR(1) chain of variance 1 / (p (1 - h p / 2))."""
    p, h = 2.0, 0.2
    kwargs = dict(draws=100, burn_in=50, thinning=3, step_size=h, adapt=False)
    ula = langevin(
        lambda z: 0.5 * p * z.pow(2).sum(1),
        torch.zeros(2000, 1),
        adjusted=False,
        generator=torch.Generator().manual_seed(1),
        **kwargs,
    )
    mala = langevin(
        lambda z: 0.5 * p * z.pow(2).sum(1),
        torch.zeros(2000, 1),
        generator=torch.Generator().manual_seed(2),
        **kwargs,
    )
    biased = 1 / (p * (1 - h * p / 2))  # 0.625 against the exact 0.5
    assert float(ula.draws.var()) == pytest.approx(biased, rel=0.04)
    assert float(mala.draws.var()) == pytest.approx(1 / p, rel=0.04)
    assert float(ula.acceptance.min()) == 1.0 and float(mala.acceptance.mean()) < 1.0
    assert torch.allclose(ula.step_size, torch.full((2000,), h))


def test_preconditioner_lets_one_step_size_fit_a_stiff_gaussian():
    precision = torch.tensor([1.0, 1e4])
    common = dict(draws=50, burn_in=100, thinning=2)
    plain = langevin(
        gaussian_potential(torch.zeros(2), precision),
        torch.zeros(200, 2),
        generator=torch.Generator().manual_seed(0),
        **common,
    )
    conditioned = langevin(
        gaussian_potential(torch.zeros(2), precision),
        torch.zeros(200, 2),
        preconditioner=1 / precision,
        generator=torch.Generator().manual_seed(0),
        **common,
    )
    variance = conditioned.draws.flatten(0, 1).var(0)
    assert torch.allclose(variance, 1 / precision, rtol=0.15)
    # Without it the step fits the stiff coordinate and the other one barely moves.
    assert float(plain.draws[..., 0].var()) < 0.5 < float(variance[0] * 0.8)


def test_hmc_samples_a_stiff_gaussian_exactly_with_its_preconditioner():
    mean, precision = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([1.0, 4.0, 1e4])
    run = hamiltonian(
        gaussian_potential(mean, precision),
        torch.zeros(400, 3),
        draws=60,
        burn_in=30,
        leapfrog_steps=5,
        preconditioner=1 / precision,
        generator=torch.Generator().manual_seed(0),
    )
    assert run.draws.shape == (60, 400, 3) and run.energy.shape == (60, 400)
    assert_gaussian_draws(run.draws, mean, precision, mean_atol=0.02)
    assert abs(float(run.acceptance.mean()) - 0.65) < 0.15
    assert run.evaluations == (30 + 60) * 5 + 1


def test_hmc_travels_farther_than_mala_for_the_same_evaluations():
    """On N(0, diag(1, 1/100)) MALA's step is held down by the stiff coordinate and it only
    diffuses along the soft one; HMC's trajectories cross it. Same 401 evaluations each."""
    precision = torch.tensor([1.0, 100.0])
    potential = gaussian_potential(torch.zeros(2), precision)
    start = torch.zeros(200, 2)
    mala = langevin(
        potential,
        start,
        draws=100,
        burn_in=100,
        thinning=3,
        generator=torch.Generator().manual_seed(1),
    )
    hmc = hamiltonian(
        potential,
        start,
        draws=30,
        burn_in=10,
        leapfrog_steps=10,
        generator=torch.Generator().manual_seed(1),
    )
    assert hmc.evaluations == mala.evaluations == 401

    def soft_lag_one(draws: torch.Tensor) -> float:
        centred = draws[..., 0] - draws[..., 0].mean(0)
        return float((centred[1:] * centred[:-1]).mean() / centred.pow(2).mean())

    assert soft_lag_one(mala.draws) > 0.9 and soft_lag_one(hmc.draws) < 0.4
    assert abs(float(hmc.draws[..., 0].var()) - 1) < 0.05


@pytest.mark.parametrize("sampler", ["mala", "ula", "hmc"])
def test_non_finite_proposals_are_rejected(sampler):
    def potential(z: torch.Tensor) -> torch.Tensor:
        energy = 0.5 * z.pow(2).sum(1)
        energy = torch.where(z[:, 0] > 0.5, math.inf, energy)  # a wall, as a decode overflow
        return torch.where(z[:, 1] > 0.5, math.nan, energy)  # and NaN beyond another

    settings = {"draws": 50, "step_size": 0.5, "generator": torch.Generator().manual_seed(0)}
    if sampler == "hmc":
        run = hamiltonian(potential, torch.zeros(100, 2), leapfrog_steps=3, **settings)
    else:
        run = langevin(potential, torch.zeros(100, 2), adjusted=sampler == "mala", **settings)
    assert bool(torch.isfinite(run.draws).all() & torch.isfinite(run.energy).all())
    assert float(run.draws.max()) <= 0.5
    assert float(run.acceptance.mean()) < 1.0


def test_langevin_is_reproducible_with_a_seeded_generator():
    def run(seed: int) -> torch.Tensor:
        return langevin(
            lambda z: 0.5 * z.pow(2).sum(1),
            torch.zeros(3, 4),
            draws=10,
            burn_in=5,
            generator=torch.Generator().manual_seed(seed),
        ).draws

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"z0": torch.zeros(3)}, "shape"),
        ({"z0": torch.full((2, 2), math.nan)}, "NaN"),
        ({"draws": 0}, "draws"),
        ({"thinning": 0}, "thinning"),
        ({"step_size": -1.0}, "step_size"),
        ({"target_accept": 1.0}, "target_accept"),
        ({"preconditioner": torch.ones(3)}, "preconditioner"),
        ({"preconditioner": torch.zeros(2)}, "preconditioner"),
        ({"z0": torch.full((2, 2), 3.0)}, "not finite at z0"),
    ],
)
@pytest.mark.parametrize("sampler", [langevin, hamiltonian])
def test_chains_reject_bad_inputs(kwargs, match, sampler):
    arguments = {"z0": torch.zeros(2, 2), "draws": 4, **kwargs}
    wall = lambda z: torch.where(z.abs().amax(1) > 2, math.inf, z.pow(2).sum(1))  # noqa: E731
    with pytest.raises(ValueError, match=match):
        sampler(wall, **arguments)
    if sampler is hamiltonian:
        with pytest.raises(ValueError, match="leapfrog_steps"):
            hamiltonian(wall, torch.zeros(2, 2), draws=4, leapfrog_steps=0)


# -- split R-hat ----------------------------------------------------------------------------
def test_split_rhat_on_known_chains():
    generator = torch.Generator().manual_seed(0)
    mixed = torch.randn(4, 2000, 3, generator=generator)
    assert bool((split_rhat(mixed) < 1.01).all()) and split_rhat(mixed).shape == (3,)
    stuck = mixed + torch.tensor([0.0, 0.0, 2.0, 2.0])[:, None, None]
    assert bool((split_rhat(stuck) > 1.3).all())
    # One drifting chain: splitting its halves is what detects it.
    drifting = torch.randn(1, 2000, generator=generator) + torch.linspace(0, 3, 2000)
    assert float(split_rhat(drifting)) > 1.3


def test_split_rhat_matches_the_formula_by_hand():
    chains = torch.tensor([[0.0, 1.0, 2.0, 4.0, 3.0], [1.0, 1.0, 0.0, 2.0, 5.0]])
    halves = torch.tensor([[0.0, 1.0], [1.0, 1.0], [4.0, 3.0], [2.0, 5.0]])  # middle draw dropped
    n = 2
    within = halves.var(1).mean()
    between_over_n = halves.mean(1).var()
    expected = math.sqrt(((n - 1) / n * within + between_over_n) / within)
    assert float(split_rhat(chains)) == pytest.approx(expected, rel=1e-6)


def test_split_rhat_edge_cases_and_errors():
    assert float(split_rhat(torch.ones(3, 10))) == 1.0
    assert float(split_rhat(torch.arange(3.0)[:, None].expand(3, 10))) == math.inf
    with pytest.raises(ValueError, match="4 draws"):
        split_rhat(torch.randn(2, 3))
    with pytest.raises(ValueError, match="chains, draws"):
        split_rhat(torch.randn(5))


# -- the Glow posterior sampler -------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "std_tolerance", "evaluations"),
    [
        ({"method": "mala", "chains": 64, "burn_in": 100, "thinning": 5}, 0.05, 100 + 20 * 5 + 1),
        # HMC's energy moves slowly between successive draws: thinning 2 for a fair R-hat
        ({"method": "hmc", "chains": 32, "burn_in": 20, "thinning": 2}, 0.1, (20 + 40) * 5 + 1),
    ],
    ids=["mala", "hmc"],
)
def test_sampler_matches_the_exact_posterior_of_an_affine_glow(
    affine_glow, settings, std_tolerance, evaluations
):
    physics, y, mean, std = affine_denoising_problem(affine_glow)
    sampler = GlowPosteriorSampler(affine_glow, draws=20, map_iter=50, quantize=False, **settings)
    with torch.no_grad():
        out = sampler.sample(y, physics)
    assert out.evaluations == evaluations
    # The posterior is Gaussian: its MAP is its mean.
    assert torch.allclose(out.map[0], mean, atol=2e-3)
    # the chains' draws are correlated: about 400 independent ones, 5 standard errors
    assert float((out.mean[0] - mean).abs().max()) < 5 * float(std.max()) / math.sqrt(400)
    assert float((out.std[0] / std - 1).abs().mean()) < std_tolerance
    assert float((out.std[0] / std - 1).abs().max()) < 0.3
    assert 0.4 < float(out.acceptance.mean()) < 0.85  # near 0.574 (MALA) or 0.65 (HMC)
    # 20 draws per chain: R-hat is near 1 but noisy.
    assert float(out.rhat) < 1.2 and float(out.rhat_pixels.median()) < 1.15


def test_laplace_map_whitens_the_gauss_newton_precision(glow):
    """z = z_map + T w with T T^T = ((AJ)^T AJ / sigma^2 + I)^{-1}, J computed independently."""
    sigma = 0.05
    physics = dinv.physics.CompressedSensing(
        m=20, img_size=IMG, noise_model=dinv.physics.GaussianNoise(sigma)
    )
    z_map = 0.3 * torch.randn(2, N, generator=torch.Generator().manual_seed(1))
    sampler = GlowPosteriorSampler(glow, chains=3, preconditioner="laplace", jacobian_chunk=7)
    to_latent = sampler._laplace_map(z_map, physics, sigma, 20)
    assert torch.equal(to_latent(torch.zeros(6, N)), z_map.repeat(3, 1))
    for image in range(2):
        measure = lambda v: physics.A(glow.decode(v[None])).flatten()  # noqa: E731
        aj = torch.autograd.functional.jacobian(measure, z_map[image]).double()
        covariance = torch.linalg.inv(aj.T @ aj / sigma**2 + torch.eye(N, dtype=torch.float64))
        # columns of T for this image: w = e_k on its rows (chain 1 of 3), zero elsewhere
        w = torch.zeros(N, 3, 2, N)
        w[torch.arange(N), 1, image, torch.arange(N)] = 1.0
        latents = torch.stack([to_latent(row.view(6, N)) for row in w])  # (N, 6, N)
        transform = (latents[:, 2 + image] - z_map[image]).T.double()  # (N, N): column k = T e_k
        assert torch.allclose(transform @ transform.T, covariance, rtol=1e-3, atol=1e-6)
        untouched = torch.cat([latents[:, :2], latents[:, 4:]], dim=1)
        assert torch.equal(untouched, z_map.repeat(2, 1).expand(N, 4, N))


def test_laplace_preconditioner_samples_the_exact_affine_posterior(affine_glow):
    physics, y, mean, std = affine_denoising_problem(affine_glow)
    sampler = GlowPosteriorSampler(
        affine_glow,
        method="mala",
        chains=16,
        draws=25,
        burn_in=30,
        map_iter=50,
        preconditioner="laplace",
        quantize=False,
    )
    with torch.no_grad():
        out = sampler.sample(y, physics)
    # Whitened, the posterior is N(0, I): a quarter of the steps of the diagonal
    # preconditioner's test above (55 against 200 per chain) match it.
    assert float((out.std[0] / std - 1).abs().mean()) < 0.1
    assert float((out.mean[0] - mean).abs().max()) < 6 * float(std.max()) / math.sqrt(400)
    assert float(out.rhat) < 1.2
    assert 0.4 < float(out.acceptance.mean()) < 0.8


def test_sampler_shapes_and_consistency(glow):
    physics = dinv.physics.CompressedSensing(
        m=32,
        img_size=IMG,
        noise_model=dinv.physics.GaussianNoise(0.05),
        rng=torch.Generator().manual_seed(0),
    )
    x = smooth_images(3, seed=5)
    y = physics(x)
    sampler = GlowPosteriorSampler(glow, chains=2, draws=6, burn_in=10, thinning=1, map_iter=20)
    out = sampler.sample(y, physics)
    assert out.samples.shape == (12, 3, *IMG) and out.z.shape == (12, 3, N)
    assert out.mean.shape == out.std.shape == out.map.shape == out.rhat_pixels.shape == x.shape
    assert out.energy.shape == (3, 2, 6) and out.step_size.shape == (3, 2)
    assert out.acceptance.shape == out.rhat.shape == (3,)
    # the default sampler, HMC: 10 burn-in and 6 kept trajectories of 5 leapfrog steps
    assert out.sigma == pytest.approx(0.05) and out.evaluations == (10 + 6) * 5 + 1
    assert set(out.seconds) == {"map", "chains", "map_cpu", "chains_cpu"}
    assert float(out.samples.min()) >= 0 and float(out.samples.max()) <= 1
    assert bool(((out.acceptance >= 0) & (out.acceptance <= 1)).all())
    with torch.no_grad():  # sample k is the 8-bit image of latent k: k / 255, k its bin
        bins = torch.floor(256 * glow.decode(out.z[7]).clamp(0, 1)).clamp(max=255)
        assert torch.allclose(out.samples[7] * 255, bins, atol=1e-3)
        assert torch.equal(out.samples * 255, (out.samples * 255).round())
    assert torch.allclose(out.mean, out.samples.mean(0)) and bool((out.std > 0).any())
    lower, upper = out.interval(0.9)
    assert bool((lower <= out.mean + 1e-6).all() & (upper >= out.mean - 1e-6).all())
    again = sampler.sample(y, physics)
    assert torch.equal(again.samples, out.samples)
    with torch.no_grad():  # a deepinv Reconstructor: forward gives the posterior mean
        assert torch.equal(sampler(y, physics), out.mean)


def test_inpainting_is_uncertain_inside_the_hole(glow):
    mask = centre_hole_mask(IMG, side_fraction=0.5)
    physics = dinv.physics.Inpainting(
        img_size=IMG, mask=mask, noise_model=dinv.physics.GaussianNoise(0.02)
    )
    y = physics(smooth_images(4, seed=7))
    out = GlowPosteriorSampler(glow, chains=4, draws=10, burn_in=12, map_iter=30).sample(y, physics)
    hole = mask == 0
    inside, outside = out.std[:, hole].mean(1), out.std[:, ~hole].mean(1)
    assert bool((inside > 1.5 * outside).all())


def test_ula_method_and_custom_map_estimator(glow):
    physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    y = physics(smooth_images(2, seed=1))
    estimator = GlowReconstructor(glow, gamma=0.01, max_iter=10)
    out = GlowPosteriorSampler(
        glow, method="ula", chains=2, draws=4, burn_in=4, map_estimator=estimator, probes=0
    ).sample(y, physics)
    assert torch.equal(out.map, glow.quantize(estimator.last_solution.x.clamp(0, 1)) / 255)
    assert bool(torch.isfinite(out.samples).all()) and float(out.acceptance.min()) > 0


@pytest.mark.parametrize(
    ("noise", "match"),
    [
        (dinv.physics.GaussianNoise(0.0), "noise level > 0"),
        (dinv.physics.PoissonNoise(0.1), "Gaussian noise level"),
    ],
)
def test_sampler_needs_a_gaussian_noise_level(glow, noise, match):
    physics = dinv.physics.Denoising(noise)
    y = smooth_images(1)
    with pytest.raises(ValueError, match=f"Posterior sampling needs(.|\n)*{match}"):
        GlowPosteriorSampler(glow).sample(y, physics)


def test_quantize_false_keeps_the_decoded_images(glow):
    physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    y = physics(smooth_images(2, seed=2))
    settings = {"chains": 2, "draws": 4, "burn_in": 4, "map_iter": 5}
    grid = GlowPosteriorSampler(glow, **settings).sample(y, physics)
    plain = GlowPosteriorSampler(glow, quantize=False, **settings).sample(y, physics)
    assert torch.equal(grid.z, plain.z)  # the same chains, only the images differ
    with torch.no_grad():
        assert torch.allclose(plain.samples[5], glow.decode(plain.z[5]).clamp(0, 1), atol=1e-5)
    assert torch.equal(grid.samples, glow.quantize(plain.samples) / 255)


def test_temperature_scales_the_prior_of_the_exact_affine_posterior(affine_glow):
    """With z ~ N(0, T^2 I), the affine posterior has precision W^T W / sigma^2 + I / T^2."""
    physics, y, *_ = affine_denoising_problem(affine_glow, sigma=0.3)
    temperature = 0.5
    weight, bias = affine_parts(affine_glow)
    precision = weight.T @ weight / 0.3**2 + torch.eye(N, dtype=torch.float64) / temperature**2
    covariance = torch.linalg.inv(precision)
    mean_z = covariance @ weight.T @ (y.flatten().double() - bias) / 0.3**2
    std = torch.diagonal(weight @ covariance @ weight.T).sqrt().view(IMG).float()
    mean = (weight @ mean_z + bias).view(IMG).float()
    sampler = GlowPosteriorSampler(
        affine_glow,
        chains=16,
        draws=25,
        burn_in=30,
        map_iter=50,
        preconditioner="laplace",
        quantize=False,
        temperature=temperature,
    )
    with torch.no_grad():
        out = sampler.sample(y, physics)
    assert torch.allclose(out.map[0], mean, atol=2e-3)  # the MAP used gamma = sigma^2 / T^2
    assert float((out.std[0] / std - 1).abs().mean()) < 0.1
    # The untempered posterior is wider: the test tells the two apart.
    _, _, _, std_untempered = affine_denoising_problem(affine_glow, sigma=0.3)
    assert float((std_untempered / std).mean()) > 1.3


def test_sampler_rejects_bad_arguments(glow):
    with pytest.raises(TypeError, match="Glow"):
        GlowPosteriorSampler("glow")
    with pytest.raises(ValueError, match="untrained"):
        GlowPosteriorSampler(Glow(**TINY))
    with pytest.raises(ValueError, match="method"):
        GlowPosteriorSampler(glow, method="nuts")
    with pytest.raises(ValueError, match="leapfrog_steps"):
        GlowPosteriorSampler(glow, method="hmc", leapfrog_steps=0)
    with pytest.raises(ValueError, match="chains"):
        GlowPosteriorSampler(glow, chains=0)
    with pytest.raises(ValueError, match="draws"):
        GlowPosteriorSampler(glow, draws=3)
    with pytest.raises(ValueError, match="step_size"):
        GlowPosteriorSampler(glow, step_size=0.0)
    with pytest.raises(TypeError, match="map_estimator"):
        GlowPosteriorSampler(glow, map_estimator=object())
    with pytest.raises(TypeError, match="quantize"):
        GlowPosteriorSampler(glow, quantize=1)
    with pytest.raises(ValueError, match="temperature"):
        GlowPosteriorSampler(glow, temperature=0.0)
    physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    with pytest.raises(ValueError, match="do not match"):
        GlowPosteriorSampler(glow, map_iter=2).sample(torch.rand(1, 1, 6, 6), physics)
    with pytest.raises(ValueError, match="level"):
        GlowPosteriorSampler(glow, chains=1, draws=4, burn_in=0, map_iter=2).sample(
            smooth_images(1), physics
        ).interval(1.5)


# -- GlowPrior inside deepinv's samplers ----------------------------------------------------
@pytest.mark.parametrize("name", ["ULA", "SKRock"])
def test_glowprior_in_deepinv_samplers_matches_the_exact_posterior(affine_glow, name):
    """deepinv's pixel-space samplers with GlowPrior sample p(x | y) of the affine Glow."""
    sigma = 0.05
    physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(sigma))
    with torch.no_grad():
        latent = 0.3 * torch.randn(1, N, generator=torch.Generator().manual_seed(4))
        y = physics(affine_glow.decode(latent))
    mean, std = exact_denoising_posterior(affine_glow, y, sigma)
    prior, fidelity = GlowPrior(affine_glow), dinv.optim.L2(sigma=sigma)
    common = dict(alpha=1.0, burnin_ratio=0.25, thinning=1, clip=None)
    if name == "ULA":
        sampler = dinv.sampling.ULA(prior, fidelity, step_size=5e-4, max_iter=300, **common)
    else:  # SK-ROCK's s = 5 inner stages allow longer steps than ULA
        sampler = dinv.sampling.SKRock(
            prior, fidelity, step_size=2e-3, inner_iter=5, max_iter=80, **common
        )
    chains = 24
    y_chains = y.expand(chains, *IMG)
    sample_mean, sample_var = sampler.sample(y_chains, physics, x_init=y_chains, seed=0)
    assert not y_chains.requires_grad and not sample_mean.requires_grad
    assert float((sample_mean.mean(0) - mean).abs().max()) < 0.2 * float(std.min())
    ratio = sample_var.mean(0).sqrt() / std
    assert 0.85 < float(ratio.mean()) < 1.1
