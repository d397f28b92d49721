"""The model zoo, and the issue's measured goals on the shipped mnist32 (slow tests)."""

import json

import deepinv as dinv
import pytest
import torch

from deepinv_glowprior import Glow, GlowReconstructor, available_models, load_pretrained
from deepinv_glowprior.data import mnist
from deepinv_glowprior.pretrained import REGISTRY_FILE, WEIGHTS_DIR, model_card
from deepinv_glowprior.tasks import make_physics

pytestmark = pytest.mark.skipif(
    "mnist32" not in available_models(), reason="mnist32 weights are not installed"
)


@pytest.fixture(scope="module")
def glow() -> Glow:
    torch.set_num_threads(2)
    return load_pretrained("mnist32")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    test = mnist("test")
    return torch.stack([test[i] for i in range(32)])


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return dinv.metric.PSNR()(x_hat, x)


def test_registry_lists_shipped_files():
    entries = json.loads(REGISTRY_FILE.read_text())
    for name, entry in entries.items():
        for key in ("filename", "log", "samples"):
            assert (WEIGHTS_DIR / entry[key]).is_file(), f"{name}: {entry[key]} missing"
        assert entry["command"].startswith("glowprior train"), name
        assert entry["test_bits_per_dim"] > 0


def test_load_pretrained_is_an_initialised_eval_model(glow):
    card = model_card("mnist32")
    assert glow.img_size == (1, 32, 32)
    assert tuple(card.config["img_size"]) == glow.img_size
    assert glow.is_initialized and not glow.training


def test_unknown_model_name_lists_the_available_ones():
    with pytest.raises(KeyError, match="mnist32"):
        load_pretrained("imagenet1024")


def test_corrupted_weights_are_refused(tmp_path, monkeypatch):
    from deepinv_glowprior import pretrained

    copy = tmp_path / "weights"
    copy.mkdir()
    for path in WEIGHTS_DIR.iterdir():
        copy.joinpath(path.name).write_bytes(path.read_bytes())
    weights = copy / model_card("mnist32").filename
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", copy)
    monkeypatch.setattr(pretrained, "REGISTRY_FILE", copy / "registry.json")
    with pytest.raises(OSError, match="corrupted"):
        load_pretrained("mnist32")


def test_shipped_model_decodes_finitely_at_high_temperature(glow):
    generator = torch.Generator().manual_seed(0)
    for temperature in (1.0, 2.0, 3.0):
        x = glow.sample(16, temperature, generator=generator, clamp=False)
        assert torch.isfinite(x).all(), f"temperature {temperature}: non-finite decode"


@pytest.mark.slow
def test_zero_representation_error_noiseless_cs_m_equals_n(glow, digits):
    physics = make_physics("cs", glow.img_size, ratio=1.0, noise_norm=0.0, seed=1)
    x = digits[:8]
    x_hat = GlowReconstructor(glow, tol=1e-10, max_iter=600)(physics(x), physics)
    assert psnr(x_hat, x).mean() >= 40.0


@pytest.mark.slow
def test_cs_quarter_measurements_with_paper_noise(glow, digits):
    torch.manual_seed(0)
    physics = make_physics("cs", glow.img_size, ratio=0.25, seed=2)
    x_hat = GlowReconstructor(glow)(physics(digits), physics)
    assert psnr(x_hat, digits).mean() >= 25.0


@pytest.mark.slow
def test_denoising_gains_six_db_over_the_noisy_input(glow, digits):
    torch.manual_seed(0)
    physics = make_physics("denoising", glow.img_size, sigma=0.1)
    y = physics(digits)
    x_hat = GlowReconstructor(glow, gamma="auto")(y, physics)
    assert psnr(x_hat, digits).mean() >= psnr(y.clamp(0, 1), digits).mean() + 6.0


@pytest.mark.slow
def test_centre_hole_inpainting_gains_five_db_over_zero_filling(glow, digits):
    physics = make_physics("inpainting", glow.img_size, side_fraction=0.3)
    y = physics(digits)
    x_hat = GlowReconstructor(glow)(y, physics)
    assert psnr(x_hat, digits).mean() >= psnr(y, digits).mean() + 5.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "settings"), [("denoising", {"sigma": 0.1}), ("cs", {"ratio": 0.25})]
)
def test_auto_gamma_within_one_db_of_the_oracle_sweep(glow, digits, task, settings):
    torch.manual_seed(0)
    x = digits[:16]
    physics = make_physics(task, glow.img_size, seed=3, **settings)
    y = physics(x)
    sigma2 = float(physics.noise_model.sigma) ** 2
    sweep = {
        factor: float(psnr(GlowReconstructor(glow, gamma=factor * sigma2)(y, physics), x).mean())
        for factor in (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)
    }
    auto = float(psnr(GlowReconstructor(glow, gamma="auto")(y, physics), x).mean())
    assert auto >= max(sweep.values()) - 1.0, f"auto {auto:.2f} dB, sweep {sweep}"


@pytest.mark.slow
def test_deepinv_test_loop_runs_unchanged(glow, digits):
    loader = torch.utils.data.DataLoader(digits[:8], batch_size=4)
    physics = make_physics("cs", glow.img_size, ratio=0.5, seed=4)
    metrics = dinv.test(
        GlowReconstructor(glow, max_iter=100),
        loader,
        physics,
        metrics=[dinv.metric.PSNR(), dinv.metric.SSIM()],
        online_measurements=True,
        device="cpu",
        verbose=False,
        show_progress_bar=False,
    )
    assert metrics["PSNR"] > 20.0 and 0 < metrics["SSIM"] <= 1


@pytest.mark.parametrize("task, init", [("cs", "zero"), ("cs", "pinv"), ("denoising", "zero")])
def test_a_lone_sample_gets_the_bits_it_gets_in_a_batch(glow, digits, task, init):
    """The shipped model's convolutions are large enough for MKL to split one sample's matrix
    product over both threads, which the small test Glows never show."""
    kwargs = {"ratio": 0.5, "seed": 5} if task == "cs" else {"sigma": 0.1}
    physics = make_physics(task, glow.img_size, **kwargs)
    y = physics(digits[:4])
    model = GlowReconstructor(glow, gamma=0.1, max_iter=4, init=init)
    assert torch.get_num_threads() == 2
    together = model.solve(y, physics)
    alone = model.solve(y[2:3], physics)
    torch.testing.assert_close(alone.z[0], together.z[2], atol=0, rtol=0)
    torch.testing.assert_close(alone.x[0], together.x[2], atol=0, rtol=0)


@pytest.mark.slow
def test_samples_are_independent_of_their_batch(glow, digits):
    """The issue's criterion, on the hardest case: gamma = 0 at m/n = 0.5, where the optimiser's
    path alone decides which of many zero-residual latents it returns."""
    torch.manual_seed(0)
    x = digits[:8]
    physics = make_physics("cs", glow.img_size, ratio=0.5, seed=5)
    y = physics(x)
    model = GlowReconstructor(glow, gamma=0.0, max_iter=150)
    together = model(y, physics)
    for i in (0, 3, 7):
        alone = model(y[i : i + 1], physics)
        assert float((alone[0] - together[i]).abs().max()) <= 1e-3
        gap = float(psnr(alone, x[i : i + 1])[0]) - float(
            psnr(together[i : i + 1], x[i : i + 1])[0]
        )
        assert abs(gap) <= 0.05
