"""Tests of :mod:`deepinv_glowprior.reconstructor` on a tiny, briefly trained Glow: deepinv physics,
exact recovery without representation error, batch independence, restarts, initialisations,
presets, the discrepancy principle, deepinv.test, input errors and numerical robustness."""

from __future__ import annotations

import copy
import math
import warnings

import deepinv as dinv
import pytest
import torch
from deepinv.models import Reconstructor
from helpers import TINY, train_tiny_glow

from deepinv_glowprior import Glow, GlowReconstructor, GlowSolution
from deepinv_glowprior import reconstructor as reconstructor_module
from deepinv_glowprior.baselines import total_variation
from deepinv_glowprior.reconstructor import noise_sigma

IMG = TINY["img_size"]
N = math.prod(IMG)


pytestmark = pytest.mark.usefixtures("seeded_and_quiet")


@pytest.fixture(scope="module")
def glow() -> Glow:
    return train_tiny_glow()


@pytest.fixture(scope="module")
def glow64(glow) -> Glow:
    """The same model in float64, for exact comparisons."""
    return copy.deepcopy(glow).double()


def in_distribution(glow: Glow, n: int, seed: int) -> torch.Tensor:
    """Images the model likes: samples at temperature 0.5."""
    return glow.sample(n, 0.5, generator=torch.Generator().manual_seed(seed))


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return dinv.metric.PSNR()(x_hat, x)


def gaussian(sigma: float, seed: int = 0) -> dinv.physics.GaussianNoise:
    return dinv.physics.GaussianNoise(sigma, rng=torch.Generator().manual_seed(seed))


def denoising(sigma: float = 0.1, seed: int = 0) -> dinv.physics.Denoising:
    return dinv.physics.Denoising(gaussian(sigma, seed))


def compressed_sensing(m: int, sigma: float | None = None, seed: int = 1):
    physics = dinv.physics.CompressedSensing(
        m=m, img_size=IMG, rng=torch.Generator().manual_seed(seed)
    )
    if sigma is not None:
        physics.noise_model = gaussian(sigma, seed)
    return physics


def all_physics() -> dict[str, dinv.physics.Physics]:
    mask = (torch.rand(1, *IMG, generator=torch.Generator().manual_seed(2)) > 0.4).float()
    return {
        "denoising": denoising(0.05),
        "cs": compressed_sensing(32, sigma=0.01),
        "inpainting": dinv.physics.Inpainting(img_size=IMG, mask=mask, noise_model=gaussian(0.01)),
        "blur": dinv.physics.BlurFFT(
            img_size=IMG,
            filter=dinv.physics.blur.gaussian_blur(sigma=1.0),
            noise_model=gaussian(0.01),
        ),
        "downsampling": dinv.physics.Downsampling(
            img_size=IMG, filter="bicubic", factor=2, noise_model=gaussian(0.01)
        ),
    }


# -- deepinv interface ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(all_physics()))
def test_forward_shape_range_and_no_grad(glow, name):
    physics = all_physics()[name]
    x = in_distribution(glow, 3, seed=1)
    y = physics(x)
    model = GlowReconstructor(glow, gamma=0.01, max_iter=60)
    with torch.no_grad():
        x_hat = model(y, physics)
    assert x_hat.shape == (3, *IMG)
    assert bool(torch.isfinite(x_hat).all())
    assert float(x_hat.min()) >= 0 and float(x_hat.max()) <= 1
    assert not x_hat.requires_grad
    assert not y.requires_grad and y.grad is None
    # The reconstruction fits the data better than the model's mean image G(0) does.
    solution = model.last_solution
    assert isinstance(solution, GlowSolution)
    torch.testing.assert_close(solution.x, x_hat)
    with torch.no_grad():
        start = (physics.A(glow.decode(torch.zeros(3, N))) - y).pow(2).flatten(1).sum(1)
    assert bool((solution.residual < start).all())


def test_caller_tensors_and_glow_parameters_untouched(glow):
    physics = denoising(0.1)
    x = in_distribution(glow, 2, seed=2)
    y = physics(x).requires_grad_(True)  # even a y that requires grad stays out of the graph
    parameters = list(glow.parameters())
    before = [p.requires_grad for p in parameters]
    parameters[0].requires_grad_(False)  # a mixed state must come back exactly
    mixed = [p.requires_grad for p in parameters]
    try:
        x_hat = GlowReconstructor(glow, gamma=0.01, max_iter=30)(y, physics)
        assert [p.requires_grad for p in parameters] == mixed
    finally:
        for p, flag in zip(parameters, before, strict=True):
            p.requires_grad_(flag)
    assert not x_hat.requires_grad and x_hat.grad_fn is None
    assert y.grad is None
    assert all(p.grad is None for p in parameters)


def test_zero_representation_error_noiseless_cs(glow):
    """x = G(z) is in the model's range: noiseless CS with m = n recovers it almost exactly."""
    z_true = 0.5 * torch.randn(4, N, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x_true = glow.decode(z_true)
    assert float(x_true.min()) >= 0 and float(x_true.max()) <= 1
    physics = compressed_sensing(N)
    y = physics(x_true)
    model = GlowReconstructor(glow, gamma=0.0, max_iter=300, tol=1e-10)
    solution = model.solve(y, physics)
    values = psnr(solution.x, x_true)
    assert bool((values > 40).all()), values
    assert bool((solution.residual < 1e-3).all()), (values, solution.residual)


@pytest.mark.parametrize("physics_name", ["denoising", "cs"])
def test_batch_independence(glow, physics_name):
    physics = denoising(0.1) if physics_name == "denoising" else compressed_sensing(40, 0.02)
    x = in_distribution(glow, 8, seed=4)
    y = physics(x)
    model = GlowReconstructor(glow, gamma=0.01, max_iter=100)
    together = model.solve(y, physics)
    psnr_together = psnr(together.x, x)
    for i in (0, 3, 7):
        alone = model.solve(y[i : i + 1], physics)
        assert float((alone.x[0] - together.x[i]).abs().max()) <= 1e-3
        assert abs(float(psnr(alone.x, x[i : i + 1])[0]) - float(psnr_together[i])) <= 0.05


def assert_alone_as_in_batch(model, y, physics, rows) -> None:
    """Each of ``rows`` solved alone gives, to the last bit, what it gets in the batch ``y``."""
    together = model.solve(y, physics)
    for i in rows:
        alone = model.solve(y[i : i + 1], physics)
        torch.testing.assert_close(alone.z[0], together.z[i], atol=0, rtol=0)
        torch.testing.assert_close(alone.x[0], together.x[i], atol=0, rtol=0)
        assert int(alone.iterations[0]) == int(together.iterations[i])


@pytest.mark.parametrize("name", list(all_physics()))
def test_batch_invariance_is_exact_on_underdetermined_problems(glow, name):
    """gamma = 0 with m < n has a whole manifold of solutions, so the optimiser's path decides
    which one it returns; float32 batched kernels would steer that path by the batch size."""
    physics = all_physics()[name]
    y = physics(in_distribution(glow, 8, seed=6))
    assert_alone_as_in_batch(GlowReconstructor(glow, gamma=0.0, max_iter=60), y, physics, (0, 5))


def test_batch_invariance_holds_where_nnpack_would_take_over(glow):
    """From 16 samples on, PyTorch hands CPU convolutions to NNPACK, which rounds differently
    from the per-sample native kernels."""
    physics = compressed_sensing(20)
    y = physics(in_distribution(glow, 17, seed=8))
    assert_alone_as_in_batch(GlowReconstructor(glow, gamma=0.0, max_iter=8), y, physics, (0, 16))


def test_batch_invariance_with_per_sample_physics_parameters(glow):
    """A mask per sample (B, C, H, W) cannot be applied one sample at a time: the batched A is
    used, and each sample still gets its own mask."""
    masks = (torch.rand(4, *IMG, generator=torch.Generator().manual_seed(7)) > 0.5).float()
    physics = dinv.physics.Inpainting(img_size=IMG, mask=masks)
    x = in_distribution(glow, 4, seed=7)
    y = physics(x)
    solution = GlowReconstructor(glow, gamma=0.01, max_iter=40).solve(y, physics)
    assert bool(torch.isfinite(solution.x).all())
    with torch.no_grad():
        expected = (physics.A(solution.x) - y).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(solution.residual, expected, atol=1e-4, rtol=1e-3)


def test_callback_sees_every_iteration_of_the_solve(glow):
    physics = compressed_sensing(20)
    y = physics(in_distribution(glow, 2, seed=4))
    trace = []
    model = GlowReconstructor(
        glow, max_iter=15, callback=lambda it, z, work: trace.append((it, z.clone(), work))
    )
    solution = model.solve(y, physics)
    assert [step[0] for step in trace] == list(range(1, int(solution.iterations.max()) + 1))
    torch.testing.assert_close(trace[-1][1], solution.z)
    assert trace[-1][2] == solution.sample_evaluations


def test_batch_invariant_must_be_a_bool(glow):
    with pytest.raises(TypeError, match="batch_invariant"):
        GlowReconstructor(glow, batch_invariant="yes")


def test_kernels_flags_restored_after_solve(glow):
    physics = denoising(0.1)
    before = torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()
    GlowReconstructor(glow, gamma=0.01, max_iter=5)(physics(in_distribution(glow, 2, 8)), physics)
    assert (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()) == before


def test_batch_independence_of_random_restarts(glow64):
    """Random starts do not depend on the sample's position in the batch (float64: exact)."""
    physics = compressed_sensing(24, 0.02)
    physics.to(torch.float64)
    x = in_distribution(glow64, 4, seed=5)
    y = physics(x)
    model = GlowReconstructor(
        glow64, gamma=0.01, init="random", init_std=0.5, restarts=2, max_iter=40
    )
    together = model.solve(y, physics)
    for i in (1, 3):
        alone = model.solve(y[i : i + 1], physics)
        torch.testing.assert_close(alone.x[0], together.x[i], atol=1e-9, rtol=0)
        torch.testing.assert_close(alone.z[0], together.z[i], atol=1e-9, rtol=0)


def test_restarts_never_worse_than_first_start(glow):
    physics = compressed_sensing(20, 0.02)
    x = in_distribution(glow, 4, seed=6)
    y = physics(x)
    first = GlowReconstructor(glow, gamma=0.01, max_iter=80).solve(y, physics)
    several = GlowReconstructor(glow, gamma=0.01, max_iter=80, restarts=3, init_std=0.7)
    best = several.solve(y, physics)
    assert bool((best.objective <= first.objective + 1e-6).all())
    assert bool((best.iterations > first.iterations).all())
    assert bool(torch.isfinite(best.x).all())
    # x, z, objective and residual belong to the same restart.
    with torch.no_grad():
        x_from_z = glow.decode(best.z).clamp(0, 1)
    torch.testing.assert_close(best.x, x_from_z, atol=1e-5, rtol=0)


# -- retry of misfit samples -------------------------------------------------------------------


def misfit_case(glow):
    """CS with noise, solved briefly (10 iterations, no retry), so residuals stay far above the
    noise level; returns physics, y, that solution and m * sigma^2."""
    physics = compressed_sensing(40, 0.01)
    y = physics(in_distribution(glow, 6, seed=21))
    first = GlowReconstructor(glow, max_iter=10, retry_misfit=None).solve(y, physics)
    return physics, y, first, y[0].numel() * 0.01**2


def test_retry_misfit_solves_again_only_the_misfit_samples(glow):
    physics, y, first, noise_energy = misfit_case(glow)
    # A threshold between the residuals: the samples above it are retried, the others kept.
    threshold = float(first.residual.median())
    misfit = first.residual > threshold
    assert 0 < int(misfit.sum()) < len(y)
    model = GlowReconstructor(glow, max_iter=10, retry_misfit=threshold / noise_energy)
    retried = model.solve(y, physics)
    torch.testing.assert_close(retried.z[~misfit], first.z[~misfit], atol=0, rtol=0)
    assert torch.equal(retried.iterations[~misfit], first.iterations[~misfit])
    assert bool((retried.iterations[misfit] > first.iterations[misfit]).all())
    assert bool((retried.objective <= first.objective).all())
    assert retried.sample_evaluations > first.sample_evaluations
    assert retried.evaluations > first.evaluations
    # x, z, objective and residual belong to the same solve.
    with torch.no_grad():
        torch.testing.assert_close(retried.x, glow.decode(retried.z).clamp(0, 1), atol=1e-5, rtol=0)
        expected = (physics.A(glow.decode(retried.z)) - y).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(retried.residual, expected, atol=1e-4, rtol=1e-3)


def test_samples_still_misfit_after_the_retry_are_named_in_a_warning(glow):
    # Three iterations (and three more in the retry) leave some residuals above 100 m sigma^2.
    physics = compressed_sensing(40, 0.01)
    y = physics(in_distribution(glow, 6, seed=21))
    model = GlowReconstructor(glow, max_iter=3)
    with pytest.warns(UserWarning, match="after the retry") as record:
        solution = model.solve(y, physics)
    left = (solution.residual > 100 * y[0].numel() * 0.01**2).nonzero().squeeze(1).tolist()
    assert 0 < len(left) < len(y)
    (message,) = [str(w.message) for w in record if "after the retry" in str(w.message)]
    assert message.startswith(
        f"{len(left)} of {len(y)} sample(s) (index {', '.join(map(str, left))}) still leave"
    )
    fitted = [i for i in range(len(y)) if i not in left]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(torch.lu|lu_unpack).*")
        model.solve(y[fitted], physics)


@pytest.mark.parametrize("sigma", [0.01, None], ids=["noise-level-known", "no-noise-level"])
def test_samples_fitted_only_outside_the_pixel_range_are_named_in_a_warning(glow, sigma):
    # Sample 1 is brighter than any image in [0, 1]: G(z) fits it, clamp(G(z)) cannot.
    x = in_distribution(glow, 3, seed=23)
    x[1] = x[1] + 1.2
    physics = compressed_sensing(N, sigma)
    y = physics(x)
    with pytest.warns(UserWarning, match="outside \\[0, 1\\]") as record:
        solution = GlowReconstructor(glow).solve(y, physics)
    (message,) = [str(w.message) for w in record if "outside [0, 1]" in str(w.message)]
    assert message.startswith("1 of 3 sample(s) (index 1) fit y only through pixels of G(z)")
    with torch.no_grad():
        clamped = (physics.A(solution.x) - y).pow(2).flatten(1).sum(1)
    assert float(clamped[1]) > 10 * float(solution.residual[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(torch.lu|lu_unpack).*")
        GlowReconstructor(glow).solve(y[[0, 2]], physics)


def test_retry_misfit_keeps_batch_invariance(glow64):
    physics = compressed_sensing(40, 0.01)
    physics.to(torch.float64)
    y = physics(in_distribution(glow64, 5, seed=22))
    model = GlowReconstructor(glow64, max_iter=10, retry_misfit=1.0)
    assert_alone_as_in_batch(model, y, physics, (0, 4))


@pytest.mark.parametrize(
    "physics",
    [
        compressed_sensing(40),  # no noise level to compare the residual with
        dinv.physics.CompressedSensing(
            m=40,
            img_size=IMG,
            noise_model=dinv.physics.PoissonNoise(gain=0.1, clip_positive=True),
        ),
    ],
    ids=["noiseless", "poisson"],
)
def test_no_retry_without_a_gaussian_noise_level(glow, physics):
    x = in_distribution(glow, 3, seed=23)
    y = physics(x).clamp_min(0)
    plain = GlowReconstructor(glow, max_iter=10, retry_misfit=None).solve(y, physics)
    default = GlowReconstructor(glow, max_iter=10).solve(y, physics)
    assert default.sample_evaluations == plain.sample_evaluations
    torch.testing.assert_close(default.z, plain.z, atol=0, rtol=0)


def test_no_retry_with_adam_gamma_auto_or_positive_or_the_paper_preset(glow):
    physics, y, first, _ = misfit_case(glow)
    assert GlowReconstructor.from_preset(glow, "paper").retry_misfit is None
    for options in (
        {"optimizer": "adam", "max_iter": 10},
        {"gamma": "auto", "max_iter": 5},
        {"gamma": 1e-3, "max_iter": 10},
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with_retry = GlowReconstructor(glow, retry_misfit=1e-6, **options).solve(y, physics)
            without = GlowReconstructor(glow, retry_misfit=None, **options).solve(y, physics)
        assert with_retry.sample_evaluations == without.sample_evaluations


def test_callback_counts_on_through_the_retry(glow):
    physics, y, first, _ = misfit_case(glow)
    trace = []
    model = GlowReconstructor(
        glow,
        max_iter=10,
        retry_misfit=1.0,
        callback=lambda it, z, work: trace.append((it, z.shape, work)),
    )
    solution = model.solve(y, physics)
    iterations = [step[0] for step in trace]
    assert iterations == list(range(1, len(iterations) + 1))
    assert len(iterations) > int(first.iterations.max())
    assert all(step[1] == (len(y), N) for step in trace)
    works = [step[2] for step in trace]
    assert works == sorted(works) and works[-1] == solution.sample_evaluations


def _count_solves(monkeypatch) -> list:
    solves = []
    original = GlowReconstructor._solve_fixed_gamma

    def counted(self, *args, **kwargs):
        solves.append(args[0].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GlowReconstructor, "_solve_fixed_gamma", counted)
    return solves


def test_stuck_samples_are_retried_early_and_only_once(glow, monkeypatch):
    """Samples found stuck after a fifth of the iterations restart within the solve and are not
    retried again at the end; here every sample counts as stuck."""
    physics, y, _, _ = misfit_case(glow)
    monkeypatch.setattr(reconstructor_module, "_STUCK_RESIDUAL", 0.0)
    monkeypatch.setattr(reconstructor_module, "_STUCK_RATIO", 0.0)
    solves = _count_solves(monkeypatch)
    solution = GlowReconstructor(glow, max_iter=50, retry_misfit=1e-6).solve(y, physics)
    assert solves == [len(y)]
    assert bool(solution.retried.all())
    assert bool((solution.iterations > 10).all())
    # Too few iterations for the early test: the misfits are retried at the end instead.
    solves.clear()
    short = GlowReconstructor(glow, max_iter=10, retry_misfit=1e-6).solve(y, physics)
    assert solves == [len(y), len(y)]
    assert bool(short.retried.all())


def test_early_retries_keep_batch_invariance(glow, monkeypatch):
    """A second attempt runs as an extra row of the batched calls; each sample's result is
    still what it gets alone. Half the samples count as stuck here (those whose residual after
    10 iterations is above the median)."""
    physics = compressed_sensing(40, 0.01)
    y = physics(in_distribution(glow, 6, seed=21))
    at_check = GlowReconstructor(glow, max_iter=10, retry_misfit=None).solve(y, physics).residual
    threshold = float(at_check.median())
    noise_energy = y[0].numel() * 0.01**2
    monkeypatch.setattr(reconstructor_module, "_STUCK_RESIDUAL", threshold / noise_energy)
    monkeypatch.setattr(reconstructor_module, "_STUCK_RATIO", 0.0)
    model = GlowReconstructor(glow, max_iter=50, retry_misfit=1e6)
    together = model.solve(y, physics)
    assert together.retried.tolist() == (at_check > threshold).tolist()
    assert_alone_as_in_batch(model, y, physics, (int(at_check.argmax()), int(at_check.argmin())))


def test_nothing_retried_without_the_retry(glow, monkeypatch):
    physics, y, _, _ = misfit_case(glow)
    monkeypatch.setattr(reconstructor_module, "_STUCK_RESIDUAL", 0.0)
    monkeypatch.setattr(reconstructor_module, "_STUCK_RATIO", 0.0)
    solution = GlowReconstructor(glow, max_iter=50, retry_misfit=None).solve(y, physics)
    assert not bool(solution.retried.any())


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, "3"])
def test_bad_retry_misfit(glow, value):
    with pytest.raises((TypeError, ValueError), match="retry_misfit"):
        GlowReconstructor(glow, retry_misfit=value)


# -- initialisations ---------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["zero", "random", "pinv"])
def test_string_inits(glow, init):
    physics = compressed_sensing(32, 0.01)
    x = in_distribution(glow, 3, seed=7)
    y = physics(x)
    solution = GlowReconstructor(glow, gamma=0.01, init=init, max_iter=80).solve(y, physics)
    assert solution.x.shape == (3, *IMG)
    assert bool(torch.isfinite(solution.x).all())
    assert bool((solution.objective < solution.history[0]).all())


class _NaNPinvDenoising(dinv.physics.Denoising):
    """A denoising physics whose pseudo-inverse is broken (returns NaN)."""

    def A_dagger(self, y, **kwargs):
        return torch.full_like(y, math.nan)


def test_pinv_fallback_on_non_finite_latent(glow):
    physics = _NaNPinvDenoising(gaussian(0.1))
    y = physics(in_distribution(glow, 2, seed=8))
    model = GlowReconstructor(glow, gamma=0.01, init="pinv", max_iter=40)
    with pytest.warns(UserWarning, match="init='pinv' gave non-finite or huge latents"):
        x_hat = model(y, physics)
    assert bool(torch.isfinite(x_hat).all())
    assert x_hat.shape == (2, *IMG)


def test_pinv_fallback_on_huge_latent(glow, monkeypatch):
    physics = denoising(0.1)
    y = physics(in_distribution(glow, 3, seed=9))
    original = glow._encode

    def huge_second_latent(x):
        z, logdet = original(x)
        z = z.clone()
        z[1] = 1e4
        return z, logdet

    monkeypatch.setattr(glow, "_encode", huge_second_latent)
    model = GlowReconstructor(glow, gamma=0.01, init="pinv", max_iter=1)
    with pytest.warns(UserWarning, match="for 1 of 3 samples"):
        start = model._pinv_latent(y, physics)
    assert float(start[1].abs().max()) == 0.0
    assert float(start[0].abs().max()) > 0.0
    with pytest.warns(UserWarning, match="init='pinv'"):
        x_hat = model(y, physics)
    assert bool(torch.isfinite(x_hat).all())


def test_tensor_and_callable_inits(glow):
    z_true = 0.4 * torch.randn(2, N, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        x_true = glow.decode(z_true)
    physics = compressed_sensing(N)
    y = physics(x_true)
    # Starting at the answer: the solver stops at once and returns it.
    at_truth = GlowReconstructor(glow, init=z_true, max_iter=50).solve(y, physics)
    assert bool((at_truth.iterations <= 2).all())
    torch.testing.assert_close(at_truth.x, x_true.clamp(0, 1), atol=1e-4, rtol=0)
    # A shared (n,) latent of zeros is the same as init="zero".
    zero = GlowReconstructor(glow, init="zero", max_iter=30).solve(y, physics)
    flat = GlowReconstructor(glow, init=torch.zeros(N), max_iter=30).solve(y, physics)
    torch.testing.assert_close(flat.x, zero.x)
    # A callable gets (y, physics).
    calls = []

    def init(y_seen, physics_seen):
        calls.append((y_seen.shape, physics_seen))
        return z_true

    from_callable = GlowReconstructor(glow, init=init, max_iter=50).solve(y, physics)
    assert calls == [(y.shape, physics)]
    torch.testing.assert_close(from_callable.x, at_truth.x)


@pytest.mark.parametrize(
    "init",
    [torch.zeros(N + 1), torch.zeros(3, N), torch.zeros(2, 2, N), lambda y, p: torch.zeros(2, 5)],
    ids=["n+1", "wrong-batch", "rank-3", "callable"],
)
def test_wrong_init_shape(glow, init):
    physics = denoising(0.1)
    y = physics(in_distribution(glow, 2, seed=11))
    with pytest.raises(ValueError, match="init must give latents of shape"):
        GlowReconstructor(glow, init=init, max_iter=5)(y, physics)


def test_non_finite_init(glow):
    physics = denoising(0.1)
    y = physics(in_distribution(glow, 2, seed=11))
    with pytest.raises(ValueError, match="init holds"):
        GlowReconstructor(glow, init=torch.full((N,), math.nan), max_iter=5)(y, physics)


class _GivenImages(Reconstructor):
    """A reconstructor that returns fixed images: ``images[i]`` for the measurement ``y[i]``
    (``images`` as they are without ``y``). Records the batch sizes it is called with."""

    def __init__(self, images, y: torch.Tensor | None = None) -> None:
        super().__init__()
        self.images, self.y = images, y
        self.calls: list = []

    def forward(self, y, physics, **kwargs):
        self.calls.append((len(y), physics))
        if self.y is None:
            return self.images
        rows = [next(i for i, seen in enumerate(self.y) if torch.equal(seen, row)) for row in y]
        return self.images[rows]


def test_a_reconstructor_as_init_starts_from_the_latents_of_its_images(glow):
    z_true = 0.4 * torch.randn(2, N, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        x_true = glow.decode(z_true).clamp(0, 1)
    physics = compressed_sensing(N)
    y = physics(x_true)
    warm = _GivenImages(x_true, y)
    solution = GlowReconstructor(glow, init=warm, max_iter=50).solve(y, physics)
    assert [size for size, _ in warm.calls] == [2]
    # Started at the answer: the solver stops at once and returns it.
    assert bool((solution.iterations <= 2).all())
    torch.testing.assert_close(solution.x, x_true, atol=1e-4, rtol=0)
    from_zero = GlowReconstructor(glow, max_iter=50).solve(y, physics)
    assert bool((from_zero.iterations > 2).all())


def test_a_warm_start_falls_back_to_zero_for_atypical_latents_and_broken_images(glow):
    images = torch.cat(
        [in_distribution(glow, 1, seed=12), torch.rand(2, *IMG, generator=torch.Generator())]
    )
    images[2, 0, 0, 0] = math.nan
    with torch.no_grad():
        norms = glow.encode(images[:2])[0].norm(dim=1)
    assert float(norms[0]) < math.sqrt(N) < float(norms[1])  # noise is atypical for the Glow
    physics = denoising(0.1)
    y = physics(images.nan_to_num(0.5))
    model = GlowReconstructor(glow, init=_GivenImages(images, y), max_iter=2)
    start = model.solve(y, physics).start
    with torch.no_grad():
        torch.testing.assert_close(start[0], glow.encode(images[:1])[0][0], atol=1e-5, rtol=0)
    assert not bool(start[1:].any())


@pytest.mark.parametrize("images", [torch.rand(2, 1, 4, 4), torch.rand(3, *IMG), "an image"])
def test_a_warm_start_must_return_one_image_per_sample_of_the_glows_size(glow, images):
    physics = denoising(0.1)
    y = physics(in_distribution(glow, 2, seed=13))
    model = GlowReconstructor(glow, init=_GivenImages(images), max_iter=5)
    with pytest.raises(ValueError, match=r"init \(_GivenImages\) must return one image of the"):
        model(y, physics)


def test_a_warm_start_from_tv_keeps_batch_invariance(glow):
    physics = compressed_sensing(40, 0.01)
    y = physics(in_distribution(glow, 5, seed=23))
    tv = total_variation(1e-3, max_iter=5)  # short: some images too rough to encode
    model = GlowReconstructor(glow, init=tv, max_iter=10)
    warm = model._initial_latent(y, physics, 0).any(dim=1)
    assert bool(warm[0]) and not bool(warm[1])  # one row of each kind
    assert_alone_as_in_batch(model, y, physics, (0, 1))


def test_misfits_of_a_warm_start_are_retried_from_zero(glow, monkeypatch):
    physics, y, _, _ = misfit_case(glow)
    starts = []
    solve_fixed_gamma = GlowReconstructor._solve_fixed_gamma

    def record_start(self, y, physics, gamma, z0, **kwargs):
        starts.append(z0.clone())
        return solve_fixed_gamma(self, y, physics, gamma, z0, **kwargs)

    monkeypatch.setattr(GlowReconstructor, "_solve_fixed_gamma", record_start)
    warm = _GivenImages(in_distribution(glow, len(y), seed=22), y)  # other images: misfits
    model = GlowReconstructor(glow, init=warm, max_iter=10, retry_misfit=1e-6)
    model.solve(y, physics)
    first, retry = starts
    assert bool(first.any(dim=1).all())
    assert retry.shape == first.shape and not bool(retry.any())
    assert torch.equal(model.last_solution.start, first)  # where init put them, not the retry's


@pytest.mark.parametrize("settings", [{"restarts": 2}, {"gamma": "auto", "gamma_grid": (1, 0.1)}])
def test_the_solution_keeps_where_init_started_each_sample(glow, settings):
    physics = denoising(0.1)
    y = physics(in_distribution(glow, 2, seed=24))
    z0 = 0.3 * torch.randn(2, N, generator=torch.Generator().manual_seed(25))
    solution = GlowReconstructor(glow, init=z0, max_iter=3, **settings).solve(y, physics)
    assert torch.equal(solution.start, z0)  # not a restart's random start, not a grid warm start
    assert not torch.equal(solution.z, z0)


# -- optimisers and presets ----------------------------------------------------------------------


def test_adam_optimizer(glow):
    physics = denoising(0.1)
    x = in_distribution(glow, 3, seed=12)
    y = physics(x)
    model = GlowReconstructor(glow, gamma=0.01, optimizer="adam", lr=0.05, max_iter=150)
    assert model.optimizer == "adam"
    solution = model.solve(y, physics)
    assert bool(torch.isfinite(solution.x).all())
    assert bool((solution.objective < solution.history[0]).all())
    # Adam gets close to what L-BFGS finds.
    lbfgs = GlowReconstructor(glow, gamma=0.01, max_iter=150).solve(y, physics)
    assert bool((solution.objective <= 1.05 * lbfgs.objective).all()), (solution, lbfgs)
    assert bool((psnr(solution.x, x) > psnr(y.clamp(0, 1), x)).all())
    assert GlowReconstructor(glow, optimizer="adam").lr == 1e-2


@pytest.mark.parametrize(
    ("task", "lr", "max_iter"),
    [("cs", 0.1, 600), ("denoising", 1.0, 400), ("inpainting", 1.0, 400)],
)
def test_paper_preset(glow, task, lr, max_iter):
    model = GlowReconstructor.from_preset(glow, "paper", task=task)
    assert (model.lr, model.max_iter, model.gamma) == (lr, max_iter, 0.0)
    assert model.line_search == "guard"
    assert model.optimizer == "lbfgs" and model.init == "zero" and model.regularizer == "l2sq"
    assert model.max_step is None
    tuned = GlowReconstructor.from_preset(glow, task=task, gamma=0.05, max_iter=40)
    assert (tuned.gamma, tuned.max_iter, tuned.lr) == (0.05, 40, lr)
    physics = {
        "cs": compressed_sensing(32, 0.01),
        "denoising": denoising(0.1),
        "inpainting": dinv.physics.Inpainting(
            img_size=IMG, mask=0.6, rng=torch.Generator().manual_seed(3)
        ),
    }[task]
    x = in_distribution(glow, 2, seed=13)
    y = physics(x)
    x_hat = tuned(y, physics)
    assert x_hat.shape == (2, *IMG) and bool(torch.isfinite(x_hat).all())


def test_paper_preset_cs_runs_in_full(glow):
    z_true = 0.5 * torch.randn(2, N, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        x_true = glow.decode(z_true)
    physics = compressed_sensing(N)
    model = GlowReconstructor.from_preset(glow, "paper", task="cs")
    x_hat = model(physics(x_true), physics)
    assert bool(torch.isfinite(x_hat).all())
    assert bool((psnr(x_hat, x_true) > 30).all())


@pytest.mark.parametrize(("preset", "task"), [("fast", "cs"), ("paper", "deblurring")])
def test_bad_preset_or_task(glow, preset, task):
    with pytest.raises(ValueError, match="preset|task"):
        GlowReconstructor.from_preset(glow, preset, task=task)


# -- gamma="auto" --------------------------------------------------------------------------------


def test_noise_sigma():
    assert noise_sigma(denoising(0.07)) == pytest.approx(0.07)
    for noise in (
        dinv.physics.PoissonNoise(gain=0.1),
        dinv.physics.ZeroNoise(),
        dinv.physics.PoissonGaussianNoise(gain=0.1, sigma=0.05),
        dinv.physics.UniformGaussianNoise(),
    ):
        with pytest.raises(ValueError, match="Gaussian noise level"):
            noise_sigma(dinv.physics.Denoising(noise))
    with pytest.raises(ValueError, match="Gaussian noise level"):
        noise_sigma(compressed_sensing(8))  # ZeroNoise by default
    with pytest.raises(ValueError, match="noise level > 0"):
        noise_sigma(denoising(0.0))
    with pytest.raises(ValueError, match="one noise level"):
        noise_sigma(dinv.physics.Denoising(dinv.physics.GaussianNoise(torch.tensor([0.1, 0.2]))))


def _auto_solve(model, y, physics):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        solution = model.solve(y, physics)
    fell_through = any("down to the smallest gamma" in str(w.message) for w in caught)
    return solution, fell_through


def test_gamma_auto_discrepancy_principle(glow):
    sigma = 0.1
    physics = denoising(sigma, seed=15)
    x = in_distribution(glow, 8, seed=15)
    y = physics(x)
    model = GlowReconstructor(glow, gamma="auto", max_iter=100)
    solution, fell_through = _auto_solve(model, y, physics)
    target = model.tau * N * sigma**2
    grid = torch.tensor(model.gamma_grid) * sigma**2
    smallest = float(grid.min())
    for i in range(8):
        gamma_i = float(solution.gamma[i])
        assert torch.isclose(grid, torch.tensor(gamma_i), rtol=1e-5).any(), gamma_i
        satisfied = float(solution.residual[i]) <= target
        assert satisfied or (gamma_i == pytest.approx(smallest) and fell_through)
    assert bool(torch.isfinite(solution.x).all())

    # The oracle: the best PSNR over the grid, each gamma solved from z = 0.
    oracle = torch.full((8,), -math.inf)
    for value in grid.tolist():
        fixed = GlowReconstructor(glow, gamma=value, max_iter=100).solve(y, physics)
        oracle = torch.maximum(oracle, psnr(fixed.x, x))
    auto_psnr = psnr(solution.x, x)
    noisy_psnr = psnr(y.clamp(0, 1), x)
    assert float(auto_psnr.mean()) >= float(oracle.mean()) - 3.0, (auto_psnr, oracle)
    assert bool((auto_psnr > noisy_psnr).all()), (auto_psnr, noisy_psnr)


def test_gamma_auto_keeps_largest_admissible_gamma(glow):
    """A generous noise level: the first (largest) grid value already fits; a tiny one cannot."""
    x = in_distribution(glow, 3, seed=16)
    y = x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(16))
    loose = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.5))
    model = GlowReconstructor(glow, gamma="auto", gamma_grid=(10.0, 0.01), max_iter=60)
    solution, fell_through = _auto_solve(model, y, loose)
    torch.testing.assert_close(solution.gamma, torch.full((3,), 10.0 * 0.25))
    assert not fell_through
    # With sigma = 0.02 the huge gamma (10 sigma^2 * 1e4) cannot fit; the small one is taken.
    tight = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.02))
    model = GlowReconstructor(glow, gamma="auto", gamma_grid=(1e5, 1.0), max_iter=100)
    solution, _ = _auto_solve(model, y, tight)
    torch.testing.assert_close(solution.gamma, torch.full((3,), 1.0 * 0.02**2))


def test_gamma_auto_needs_gaussian_noise(glow):
    x = in_distribution(glow, 2, seed=17)
    model = GlowReconstructor(glow, gamma="auto", max_iter=10)
    poisson = dinv.physics.Denoising(dinv.physics.PoissonNoise(gain=0.1))
    with pytest.raises(ValueError, match="gamma='auto' needs a Gaussian noise level"):
        model(x, poisson)
    noiseless = compressed_sensing(16)
    with pytest.raises(ValueError, match="ZeroNoise"):
        model(noiseless.A(x), noiseless)


# -- deepinv.test --------------------------------------------------------------------------------


class _ImageDataset(torch.utils.data.Dataset):
    """Ground-truth images only, as deepinv.test expects with online measurements."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def test_deepinv_test_runs_unchanged(glow):
    images = in_distribution(glow, 4, seed=18)
    dataset = _ImageDataset(images)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=False)
    physics = denoising(0.1, seed=18)
    model = GlowReconstructor(glow, gamma=0.01, max_iter=40)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="non_blocking_transfers")
        results = dinv.test(
            model,
            loader,
            physics,
            metrics=[dinv.metric.PSNR()],
            online_measurements=True,
            device="cpu",
            plot_images=False,
            verbose=False,
            show_progress_bar=False,
        )
    values = {key: float(value) for key, value in results.items() if "PSNR" in key}
    assert "PSNR" in values and all(math.isfinite(v) for v in values.values()), results
    assert values["PSNR"] > values["PSNR no learning"], results
    assert not images.requires_grad and images.grad is None
    assert not any(dataset[i].requires_grad for i in range(len(dataset)))


# -- input errors ----------------------------------------------------------------------------------


def test_error_y_shape_does_not_match_physics(glow):
    physics = compressed_sensing(32)
    y = compressed_sensing(16)(in_distribution(glow, 2, seed=19))
    with pytest.raises(ValueError, match="do not match the physics"):
        GlowReconstructor(glow, max_iter=5)(y, physics)
    with pytest.raises(ValueError, match="non-empty batch"):
        GlowReconstructor(glow, max_iter=5)(torch.zeros(32), physics)
    with pytest.raises(TypeError, match="torch.Tensor"):
        GlowReconstructor(glow, max_iter=5)(y.numpy(), physics)
    with pytest.raises(TypeError, match="Physics"):
        GlowReconstructor(glow, max_iter=5)(y, object())


@pytest.mark.parametrize("kind", ["cs", "inpainting"])
def test_error_physics_for_another_image_size(glow, kind):
    big = (1, 16, 16)
    if kind == "cs":
        physics = dinv.physics.CompressedSensing(m=32, img_size=big, rng=torch.Generator())
    else:
        physics = dinv.physics.Inpainting(img_size=big, mask=0.5, rng=torch.Generator())
    y = physics(torch.rand(2, *big))
    with pytest.raises(ValueError, match=r"Glow's image size|Build the physics"):
        GlowReconstructor(glow, max_iter=5)(y, physics)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_error_non_finite_y(glow, bad):
    physics = denoising(0.1)
    y = physics(in_distribution(glow, 2, seed=20))
    y[1, 0, 3, 3] = bad
    with pytest.raises(ValueError, match="y holds 1 NaN or infinite"):
        GlowReconstructor(glow, max_iter=5)(y, physics)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"gamma": -0.1}, ValueError, "gamma must be >= 0"),
        ({"gamma": math.nan}, ValueError, "gamma must be finite"),
        ({"gamma": "large"}, TypeError, "gamma must be a number"),
        ({"regularizer": "l1"}, ValueError, "regularizer must be one of"),
        ({"optimizer": "sgd"}, ValueError, "optimizer must be one of"),
        ({"init": "ones"}, ValueError, "init must be one of"),
        ({"line_search": "wolfe"}, ValueError, "line_search"),
        ({"restarts": 0}, ValueError, "restarts must be a positive int"),
        ({"max_iter": 0}, ValueError, "max_iter must be a positive int"),
        ({"lr": 0.0}, ValueError, "lr must be > 0"),
        ({"gamma_grid": (1.0, -1.0)}, ValueError, "gamma_grid"),
        ({"tau": math.inf}, ValueError, "tau must be finite"),
        ({"callback": "print"}, TypeError, "callback must be callable"),
    ],
)
def test_error_bad_settings(glow, kwargs, error, match):
    with pytest.raises(error, match=match):
        GlowReconstructor(glow, **kwargs)


def test_error_untrained_or_foreign_model(glow):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        untrained = Glow(**TINY)
    with pytest.raises(ValueError, match="untrained"):
        GlowReconstructor(untrained)
    with pytest.raises(TypeError, match="deepinv_glowprior.Glow"):
        GlowReconstructor(torch.nn.Linear(N, N))
    with pytest.raises(TypeError, match="deepinv_glowprior.Glow"):
        GlowReconstructor.from_preset(torch.nn.Identity())


class _DenoisingWithStrayBuffer(dinv.physics.Denoising):
    """A physics holding one tensor on another device ('meta' stands in for a GPU)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("stray", torch.empty(3, device="meta"))


def test_error_physics_on_another_device(glow):
    physics = _DenoisingWithStrayBuffer(gaussian(0.1))
    y = in_distribution(glow, 2, seed=21)
    with pytest.raises(ValueError, match="physics holds tensors on meta"):
        GlowReconstructor(glow, max_iter=5)(y, physics)
    with pytest.raises(ValueError, match="y is on meta"):
        GlowReconstructor(glow, max_iter=5)(torch.empty(2, *IMG, device="meta"), denoising())


# -- numerical robustness and regularisers ---------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["y-times-1e3", "cs-m-1", "gamma-1e6", "lr-1e3", "lr-1e3-guard-no-cap"]
)
def test_numerical_robustness(glow, case):
    x = in_distribution(glow, 2, seed=22)
    physics = denoising(0.1)
    options = {"gamma": 0.01, "max_iter": 40}
    y = physics(x)
    if case == "y-times-1e3":
        y = 1e3 * y
    elif case == "cs-m-1":
        physics = compressed_sensing(1, 0.01)
        y = physics(x)
    elif case == "gamma-1e6":
        options["gamma"] = 1e6
    elif case == "lr-1e3":
        options["lr"] = 1e3
    else:
        options.update(lr=1e3, line_search="guard", max_step=math.inf)
    solution = GlowReconstructor(glow, **options).solve(y, physics)
    assert solution.x.shape == (2, *IMG)
    for tensor in (solution.x, solution.z, solution.objective, solution.residual):
        assert bool(torch.isfinite(tensor).all())
    assert float(solution.x.min()) >= 0 and float(solution.x.max()) <= 1
    if case == "gamma-1e6":
        assert float(solution.z.norm(dim=1).max()) < 1e-2  # all prior, no data


@pytest.mark.parametrize("regularizer", ["l2sq", "l2", "nll", None])
def test_regularizers_run(glow, regularizer):
    physics = compressed_sensing(32, 0.02)
    x = in_distribution(glow, 2, seed=23)
    y = physics(x)
    model = GlowReconstructor(glow, gamma=0.05, regularizer=regularizer, max_iter=60)
    solution = model.solve(y, physics)
    assert bool(torch.isfinite(solution.x).all())
    assert bool(torch.isfinite(solution.objective).all())
    # The reported objective is residual + gamma * R(z) for that regulariser.
    with torch.no_grad():
        _, logdet = glow.decode(solution.z, return_logdet=True)
    squared_norm = solution.z.pow(2).sum(dim=1)
    penalty = {
        "l2sq": squared_norm,
        "l2": squared_norm.sqrt(),
        "nll": 0.5 * squared_norm + logdet,
        None: torch.zeros_like(squared_norm),
    }[regularizer]
    expected = solution.residual + 0.05 * penalty
    torch.testing.assert_close(solution.objective, expected, rtol=1e-4, atol=1e-5)


def test_larger_gamma_shrinks_latent(glow):
    physics = denoising(0.1, seed=24)
    y = physics(in_distribution(glow, 3, seed=24))
    norms = []
    for gamma in (0.0, 0.003, 0.03, 0.3, 3.0):
        solution = GlowReconstructor(glow, gamma=gamma, max_iter=150).solve(y, physics)
        norms.append(solution.z.norm(dim=1))
    norms = torch.stack(norms)
    assert bool((norms[1:] <= norms[:-1] * (1 + 1e-3)).all()), norms
    assert bool((norms[-1] < 0.5 * norms[0]).all()), norms


def test_gamma_auto_is_batch_independent(glow64):
    """Samples that meet the discrepancy early keep their solution while others go on down the
    grid (float64, where the tiny model's batched and single evaluations agree exactly)."""
    x = in_distribution(glow64, 4, seed=25)
    level = torch.tensor([0.02, 0.05, 0.2, 0.3], dtype=torch.float64).view(4, 1, 1, 1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(25), dtype=torch.float64)
    y = x + level * noise
    physics = denoising(0.1)
    # Few iterations per grid point, so re-solving a decided sample would still move it.
    model = GlowReconstructor(glow64, gamma="auto", max_iter=10)
    together, _ = _auto_solve(model, y, physics)
    assert len(set(together.gamma.tolist())) >= 3, together.gamma
    for i in range(4):
        alone, _ = _auto_solve(model, y[i : i + 1], physics)
        assert float(alone.gamma[0]) == float(together.gamma[i])
        torch.testing.assert_close(alone.x[0], together.x[i], atol=1e-9, rtol=0)
        torch.testing.assert_close(alone.residual[0], together.residual[i], atol=1e-9, rtol=0)


def test_solve_computes_each_1x1_inverse_once_and_returns_the_same_bits(
    glow, monkeypatch, decoding_weights_built
):
    import contextlib

    x = in_distribution(glow, 3, seed=8)
    physics = compressed_sensing(m=IMG[0] * IMG[1] * IMG[2] // 2, sigma=0.01)
    y = physics(x)
    model = GlowReconstructor(glow, max_iter=8)
    cached = model.solve(y, physics)
    one_by_ones = [m for m in glow.modules() if type(m).__name__ == "Invertible1x1Conv"]
    assert len(decoding_weights_built) == len(one_by_ones)  # once each, for the whole solve
    monkeypatch.setattr(Glow, "cached_1x1_inverses", lambda self: contextlib.nullcontext(self))
    plain = model.solve(y, physics)
    assert torch.equal(cached.z, plain.z) and torch.equal(cached.x, plain.x)
