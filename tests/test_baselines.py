"""Tests of the comparison methods (Lasso wavelet/DCT, TV, BM3D, Deep Decoder, lambda tuning)."""

from __future__ import annotations

import functools
import math

import deepinv as dinv
import pytest
import torch
from deepinv.models import Reconstructor

from deepinv_glowprior import baselines as bl
from deepinv_glowprior.data import mnist
from deepinv_glowprior.tasks import compressed_sensing, make_physics

torch.set_num_threads(1)
IMG = (1, 32, 32)
PSNR = dinv.metric.PSNR(max_pixel=1.0)


def _images(split: str, count: int) -> torch.Tensor:
    dataset = mnist(split)
    return torch.stack([dataset[i] for i in range(count)])


def _measure(physics, x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return physics(x)


def _physics(task: str):
    kwargs = {"cs": {"ratio": 0.25}, "denoising": {"sigma": 0.1}, "inpainting": {}}[task]
    return make_physics(task, IMG, **kwargs)


# -- the orthonormal DCT and its prox ---------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 32])
def test_dct_matrix_is_orthonormal(n):
    d = bl.dct_matrix(n, dtype=torch.float64)
    assert torch.allclose(d.T @ d, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


def test_dct2_matches_scipy_and_inverts():
    scipy_fft = pytest.importorskip("scipy.fft")
    x = torch.rand(2, 1, 6, 9, dtype=torch.float64)
    expected = torch.from_numpy(scipy_fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho"))
    assert torch.allclose(bl.dct2(x), expected, atol=1e-12)
    assert torch.allclose(bl.idct2(bl.dct2(x)), x, atol=1e-12)


def test_dct_prox_is_the_exact_prox():
    """Check prox_{t||W.||_1}(v) by its optimality condition and against random perturbations."""
    torch.manual_seed(0)
    v, t = torch.randn(1, 1, 4, 5, dtype=torch.float64), 0.3
    prior = bl.DCTPrior()
    x = prior.prox(v, 1.0, gamma=t)
    # Full 2-D DCT matrix on row-major vec: vec(D_H X D_W^T) = (D_H kron D_W) vec(X).
    w = torch.kron(bl.dct_matrix(4, torch.float64), bl.dct_matrix(5, torch.float64))
    assert torch.allclose(w.T @ w, torch.eye(20, dtype=torch.float64), atol=1e-12)
    coefficients, g = w @ x.flatten(), w @ (v - x).flatten() / t  # g in the l1 subdifferential
    active = coefficients.abs() > 1e-12
    assert torch.allclose(g[active], coefficients[active].sign(), atol=1e-9)
    assert bool((g[~active].abs() <= 1 + 1e-9).all()) and bool(active.any() & (~active).any())

    def objective(z):
        return 0.5 * (z - v).pow(2).sum() + t * prior.fn(z).sum()

    best = objective(x)
    for _ in range(200):
        assert objective(x + 0.05 * torch.randn_like(x)) >= best
    assert torch.allclose(prior.fn(v), (w @ v.flatten()).abs().sum()[None])


def test_dct_lasso_recovers_a_dct_sparse_image_from_few_measurements():
    generator, coefficients = torch.Generator().manual_seed(0), torch.zeros(2, 1, 32, 32)
    for sample in coefficients:  # 15 random low frequencies, plus a mean of 0.5
        block = torch.zeros(64)
        block[torch.randperm(64, generator=generator)[:15]] = torch.randn(15, generator=generator)
        sample[0, :8, :8] = block.view(8, 8)
    coefficients[:, 0, 0, 0] = 16.0
    x = bl.idct2(coefficients)
    physics = make_physics("cs", IMG, ratio=0.25, noise_norm=0.0)
    y = physics(x)
    assert float(PSNR(bl.lasso_dct(0.01)(y, physics), x).min()) > 35.0
    assert float(PSNR(physics.A_dagger(y).clamp(0, 1), x).max()) < 15.0


def _soft(c: torch.Tensor, t: float) -> torch.Tensor:
    return c.sign() * (c.abs() - t).clamp(min=0)


def _haar_shrinkage(y: torch.Tensor, lam: float) -> torch.Tensor:
    pywt = pytest.importorskip("pywt")
    out = []
    for image in y[:, 0].double().numpy():
        bands = pywt.wavedec2(image, "haar", mode="periodization", level=3)
        bands = bands[:1] + [tuple(pywt.threshold(d, lam, "soft") for d in b) for b in bands[1:]]
        out.append(torch.from_numpy(pywt.waverec2(bands, "haar", mode="periodization")))
    return torch.stack(out)[:, None].float()


@pytest.mark.parametrize(
    ("method", "reference"),
    [("dct", lambda y, lam: bl.idct2(_soft(bl.dct2(y), lam))), ("wavelet", _haar_shrinkage)],
)
def test_lasso_denoising_is_the_closed_form_shrinkage(method, reference):
    """With A = I and an orthonormal basis the Lasso solution is soft-thresholding at lam."""
    physics, lam = _physics("denoising"), 0.1
    y = _measure(physics, _images("test", 2))
    factory = {"dct": bl.lasso_dct, "wavelet": bl.lasso_wavelet}[method]
    x_hat = factory(lam, max_iter=100)(y, physics)
    assert torch.allclose(x_hat, reference(y, lam).clamp(0, 1), atol=1e-4)


# -- every baseline on every task ---------------------------------------------------------------
FAST = {
    "wavelet": lambda: bl.lasso_wavelet(0.01, max_iter=15),
    "dct": lambda: bl.lasso_dct(0.01, max_iter=15),
    "tv": lambda: bl.total_variation(0.01, max_iter=5),
    "deep_decoder": lambda: bl.deep_decoder(iterations=3, channels=8, layers=3),
}


@pytest.mark.parametrize("task", ["cs", "denoising", "inpainting"])
@pytest.mark.parametrize("method", sorted(FAST))
def test_baselines_return_finite_images_in_unit_range(method, task):
    physics, x = _physics(task), _images("test", 2)
    x_hat = FAST[method]()(_measure(physics, x), physics)
    assert isinstance(FAST[method](), Reconstructor)
    assert x_hat.shape == x.shape
    assert bool(torch.isfinite(x_hat).all())
    assert float(x_hat.min()) >= 0 and float(x_hat.max()) <= 1


@pytest.mark.parametrize(
    "model",
    [bl.lasso_dct(0.01, max_iter=30), bl.total_variation(0.01, max_iter=30)],
    ids=["lasso_dct", "tv"],
)
def test_samples_are_solved_independently(model):
    # float64: float32 matrix products round differently for batches of 1 and 3 on some CPUs,
    # and 30 thresholded steps grow that to ~1e-5; coupling between samples would be far larger.
    x = _images("test", 3).double()
    physics = dinv.physics.CompressedSensing(
        m=256, img_size=IMG, rng=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    y = _measure(physics, x)
    alone = model(y[1:2], physics)
    assert torch.allclose(model(y, physics)[1:2], alone, atol=1e-10)
    y[0] *= 3
    assert torch.allclose(model(y, physics)[1:2], alone, atol=1e-10)


def test_total_variation_denoising_is_the_tv_prox():
    """With A = I the solution is prox_{lam TV}(y): deepinv's own TV prox, run to convergence."""
    physics, lam = _physics("denoising"), 0.05
    y = _measure(physics, _images("test", 2))
    x_hat = bl.total_variation(lam, max_iter=500)(y, physics)
    reference = dinv.optim.prior.TVPrior(def_crit=1e-9, n_it_max=5000).prox(y, gamma=lam)
    assert torch.allclose(x_hat, reference.clamp(0, 1), atol=2e-3)


def test_total_variation_with_zero_weight_fits_the_data():
    physics = _physics("denoising")
    y = _measure(physics, _images("test", 2))
    x_hat = bl.total_variation(0.0, max_iter=50)(y, physics)
    assert torch.allclose(x_hat, y.clamp(0, 1), atol=1e-5)


def _tv_objective(x, y, physics, lam):
    misfit = 0.5 * (physics.A(x) - y).pow(2).flatten(1).sum(1)
    return misfit + lam * dinv.optim.prior.TVPrior().fn(x)


@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_total_variation_converges_in_its_default_iterations_at_a_small_weight(ratio):
    """A small weight in CS: what A does not see is filled in by the TV term alone; a solver that
    linearises the data term (proximal gradient) needed thousands of iterations there."""
    physics, lam = compressed_sensing(IMG, ratio=ratio), 3e-3
    y = _measure(physics, _images("val", 2))
    default = _tv_objective(bl.total_variation(lam)(y, physics), y, physics, lam)
    converged = _tv_objective(bl.total_variation(lam, max_iter=3000)(y, physics), y, physics, lam)
    assert bool((default <= 1.01 * converged).all()), (default, converged)


def test_exact_cs_prox_satisfies_its_optimality_condition():
    physics = compressed_sensing(IMG, ratio=0.25, dtype=torch.float64)
    torch.manual_seed(0)
    z, x_true = torch.randn(2, 3, *IMG, dtype=torch.float64)
    y, gamma = physics.A(x_true), 3.0
    x = bl._ExactL2(physics).prox(z, y, physics, gamma=gamma)
    gradient = gamma * physics.A_adjoint(physics.A(x) - y) + x - z
    assert float(gradient.abs().max()) < 1e-9


@pytest.mark.parametrize(
    "physics",
    [
        dinv.physics.Blur(dinv.physics.blur.gaussian_blur(1.0), padding="circular"),
        dinv.physics.CompressedSensing(m=300, img_size=IMG, channelwise=True),
    ],
    ids=["blur", "channelwise-cs"],
)
def test_total_variation_on_physics_without_a_closed_form_prox(physics):
    """deepinv's conjugate-gradient prox is used there; the result still beats A^T y."""
    physics.noise_model = dinv.physics.GaussianNoise(0.02)
    x = _images("test", 2)
    y = _measure(physics, x)
    x_hat = bl.total_variation(0.01, max_iter=100)(y, physics)
    assert x_hat.shape == x.shape
    start = physics.A_adjoint(y).clamp(0, 1)
    assert float(PSNR(x_hat, x).mean()) > float(PSNR(start, x).mean()) + 1.0


@pytest.mark.parametrize(
    ("factory", "grid"),
    [
        (functools.partial(bl.lasso_wavelet, max_iter=100), (1e-2, 3e-2)),
        (functools.partial(bl.lasso_dct, max_iter=100), (1e-3, 1e-2)),
        (functools.partial(bl.total_variation, max_iter=60), (1e-2, 3e-2)),
    ],
    ids=["wavelet", "dct", "tv"],
)
def test_tuned_sparse_priors_beat_the_pseudo_inverse_in_cs(factory, grid):
    physics = make_physics("cs", IMG, ratio=0.5, noise_norm=0.1)
    lam, table = bl.tune_lambda(factory, physics, _images("val", 2), grid=grid)
    x = _images("test", 3)
    y = _measure(physics, x)
    baseline = float(PSNR(physics.A_dagger(y).clamp(0, 1), x).mean())
    assert float(PSNR(factory(lam)(y, physics), x).mean()) > baseline + 2.0


def test_bm3d_improves_a_noisy_image():
    try:
        model = bl.bm3d_denoiser()
    except ImportError as err:
        pytest.skip(str(err))
    physics, x = _physics("denoising"), _images("test", 1)
    y = _measure(physics, x)
    x_hat = model(y, physics)
    assert x_hat.shape == x.shape and float(x_hat.min()) >= 0 and float(x_hat.max()) <= 1
    assert float(PSNR(x_hat, x).mean()) > float(PSNR(y.clamp(0, 1), x).mean()) + 2.0
    with pytest.raises(ValueError, match="Denoising"):
        model(_measure(_physics("cs"), x), _physics("cs"))


# -- lambda tuning ------------------------------------------------------------------------------
class _Scale(Reconstructor):
    def __init__(self, lam: float) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, y, physics, **kwargs):
        return (self.lam * y).clamp(0, 1)


def test_tune_lambda_returns_the_argmax_of_its_table():
    physics, x = _physics("denoising"), _images("val", 2)
    grid = (0.5, 0.9, 1.0, 1.5)
    lam, table = bl.tune_lambda(_Scale, physics, x, grid=grid)
    assert [row[0] for row in table] == list(grid)
    assert all(math.isfinite(row[1]) for row in table)
    assert lam == max(table, key=lambda row: row[1])[0]
    assert lam in (0.9, 1.0)
    assert bl.tune_lambda(_Scale, physics, x, grid=grid) == (lam, table)  # seeded noise


def test_tune_lambda_default_grid():
    physics, x = _physics("denoising"), _images("val", 1)
    lam, table = bl.tune_lambda(functools.partial(bl.lasso_dct, max_iter=5), physics, x)
    assert [row[0] for row in table] == list(bl.LAMBDA_GRID) and lam in bl.LAMBDA_GRID


# -- input validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("factory", [bl.lasso_wavelet, bl.lasso_dct, bl.total_variation])
@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf")])
def test_bad_lambda_is_rejected(factory, lam):
    with pytest.raises(ValueError, match="lam"):
        factory(lam)


def test_total_variation_solves_float64_cs_built_in_float64():
    x = _images("test", 2).double()
    physics = compressed_sensing(IMG, ratio=0.25, dtype=torch.float64)
    y = _measure(physics, x)
    x_hat = bl.total_variation(0.01, max_iter=20)(y, physics)
    assert x_hat.dtype == torch.float64 and bool(torch.isfinite(x_hat).all())
    # deepinv's CompressedSensing keeps casting y to the dtype it was built with
    moved = compressed_sensing(IMG, ratio=0.25).to(torch.float64)
    with pytest.raises(ValueError, match=r"scalar type.*dtype=y.dtype"):
        bl.total_variation(0.01, max_iter=2)(y, moved)


def test_bad_inputs_are_rejected():
    physics, x = _physics("cs"), _images("test", 1)
    model = bl.lasso_dct(0.01, max_iter=2)
    with pytest.raises(ValueError, match="does not match"):
        model(torch.zeros(1, 7), physics)  # wrong number of measurements
    with pytest.raises(ValueError, match="non-empty"):
        model(torch.zeros(5), physics)
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full_like(physics.A(x), float("nan")), physics)
    with pytest.raises(ValueError, match="iteration"):
        bl.VariationalReconstructor(bl.DCTPrior(), 0.01, iteration="ADAM")
    with pytest.raises(ValueError, match="max_iter"):
        bl.lasso_dct(0.01, max_iter=0)
    with pytest.raises(ValueError, match="iterations"):
        bl.deep_decoder(iterations=0)
    with pytest.raises(ValueError, match="grid"):
        bl.tune_lambda(bl.lasso_dct, physics, x, grid=[])
    with pytest.raises(ValueError, match="grid"):
        bl.tune_lambda(bl.lasso_dct, physics, x, grid=[-1.0])
    with pytest.raises(ValueError, match="images"):
        bl.tune_lambda(bl.lasso_dct, physics, x[0], grid=[0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bl.tune_lambda(bl.lasso_dct, physics, 2 * x + 1, grid=[0.1])
