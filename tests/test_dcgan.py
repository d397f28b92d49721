"""Tests of the DCGAN prior and the CSGM baseline (tiny networks, CPU, seconds)."""

from __future__ import annotations

import json

import deepinv as dinv
import pytest
import torch

from deepinv_glowprior.dcgan import (
    REGISTRY,
    CSGMReconstructor,
    DCGANConfig,
    DCGANDiscriminator,
    DCGANGenerator,
    csgm,
    load_pretrained_dcgan,
    train_dcgan,
)
from deepinv_glowprior.glow import CheckpointError, Glow
from deepinv_glowprior.tasks import compressed_sensing, denoising, inpainting

torch.set_num_threads(1)
TINY = DCGANConfig(latent_dim=8, features=4)
IMG = (1, 32, 32)


def _generator(seed: int = 0, config: DCGANConfig = TINY) -> DCGANGenerator:
    """A random tiny generator, its weights widened so that its images vary with z."""
    torch.manual_seed(seed)
    generator = DCGANGenerator(config)
    for module in generator.modules():
        if isinstance(module, torch.nn.ConvTranspose2d):
            torch.nn.init.normal_(module.weight, 0.0, 0.3)
        if isinstance(module, torch.nn.BatchNorm2d):  # as after training: z = 0 is not dead
            torch.nn.init.normal_(module.bias, 0.0, 0.5)
    return generator.eval()


def _data(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *IMG, generator=torch.Generator().manual_seed(seed))


def _measure(physics, x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return physics(x)


def _residual(physics, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (physics.A(x) - y).pow(2).flatten(1).sum(1)


# -- networks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_and_discriminator_shapes_and_range(channels):
    config = DCGANConfig(img_size=(channels, 32, 32), latent_dim=8, features=4)
    generator = _generator(config=config)
    with torch.no_grad():
        x = generator(3 * torch.randn(5, 8))
    assert x.shape == (5, channels, 32, 32)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert DCGANDiscriminator(config)(x).shape == (5,)


def test_config_and_latent_errors():
    with pytest.raises(ValueError, match="32x32 images only"):
        DCGANConfig(img_size=(1, 64, 64))
    with pytest.raises(ValueError, match="latent_dim must be a positive int"):
        DCGANConfig(latent_dim=0)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 8\)"):
        _generator()(torch.zeros(2, 9))


def test_eval_mode_treats_samples_independently():
    generator = _generator()
    z = torch.randn(4, 8)
    alone = torch.cat([generator(z[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(generator(z), alone, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    generator = _generator(seed=3)
    generator.save(tmp_path / "g.pt", meta={"note": "x"})
    loaded = DCGANGenerator.load(tmp_path / "g.pt")
    assert loaded.config == generator.config and not loaded.training
    z = torch.randn(3, 8)
    assert torch.equal(loaded(z), generator(z))


def test_load_rejects_foreign_and_damaged_files(tmp_path):
    Glow(img_size=(1, 8, 8), levels=1, steps=1, hidden_channels=4).save(tmp_path / "glow.pt")
    with pytest.raises(CheckpointError, match="not a DCGANGenerator checkpoint"):
        DCGANGenerator.load(tmp_path / "glow.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated, corrupted"):
        DCGANGenerator.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        DCGANGenerator.load(tmp_path / "missing.pt")


# -- training ---------------------------------------------------------------------------------
def _train(out, iterations: int, **kwargs) -> DCGANGenerator:
    settings = {"latent_dim": 8, "features": 4, "batch_size": 8, "checkpoint_every": 2}
    settings.update(sample_every=0, progress=False, **kwargs)
    return train_dcgan(_data(), out, iterations=iterations, **settings)


def test_training_changes_weights_and_writes_run_files(tmp_path):
    untrained = _train(tmp_path / "untrained", 1, lr=1e-12)
    trained = _train(tmp_path / "run", 4)
    pairs = zip(untrained.parameters(), trained.parameters(), strict=True)  # weights, not stats
    assert max(float((a - b).detach().abs().max()) for a, b in pairs) > 1e-4
    for name in ("generator.pt", "checkpoint.pt", "log.jsonl", "samples_final.png"):
        assert (tmp_path / "run" / name).is_file()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [2, 4]


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    straight = _train(tmp_path / "straight", 7)
    _train(tmp_path / "resumed", 4)  # the "killed" run: its last checkpoint is step 4
    resumed = _train(tmp_path / "resumed", 7)
    pairs = zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True)
    for (name, a), b in pairs:
        assert torch.equal(a, b), name
    states = [
        torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)
        for run in ("straight", "resumed")
    ]
    for (name, a), b in zip(
        states[0]["discriminator"].items(), states[1]["discriminator"].values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_resume_with_other_settings_is_an_error(tmp_path):
    _train(tmp_path / "run", 2)
    with pytest.raises(ValueError, match="trained with lr=0.0002, now lr=0.001"):
        _train(tmp_path / "run", 4, lr=1e-3)


def test_training_rejects_bad_data(tmp_path):
    with pytest.raises(ValueError, match="32x32 images only"):
        train_dcgan(torch.rand(8, 1, 28, 28), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"must hold images in \[0, 1\]"):
        train_dcgan(255 * torch.rand(8, 1, 32, 32), tmp_path, progress=False)


# -- CSGM ---------------------------------------------------------------------------------------
def test_csgm_fits_measurements_of_an_image_in_the_range():
    generator = _generator(seed=1)
    with torch.no_grad():
        x_true = generator(torch.randn(3, 8, generator=torch.Generator().manual_seed(5)))
    physics = compressed_sensing(IMG, ratio=0.1, noise_norm=0.0, seed=0)
    y = physics(x_true)
    model = CSGMReconstructor(generator, restarts=3, max_iter=200)
    x_hat = model(y, physics)
    start = _residual(physics, generator(torch.zeros(3, 8)), y)
    assert bool((_residual(physics, x_hat, y) < 1e-2 * start).all())
    assert float(dinv.metric.PSNR()(x_hat, x_true).min()) > 30


def test_csgm_samples_are_independent_of_the_batch():
    """float64, where batched and single evaluations of the tiny generator agree exactly."""
    generator = _generator(seed=2).double()
    physics = compressed_sensing(IMG, ratio=0.25, seed=0).to(torch.float64)
    y = _measure(physics, _data(3, seed=1).double())
    model = CSGMReconstructor(generator, restarts=2, max_iter=40)
    together = model(y, physics)
    alone = torch.cat([model(y[i : i + 1], physics) for i in range(3)])
    reversed_order = model(y.flip(0), physics).flip(0)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-9)
    torch.testing.assert_close(together, reversed_order, rtol=0, atol=1e-9)


def test_restarts_never_worsen_the_objective():
    generator = _generator(seed=4)
    physics = inpainting(IMG)
    y = _measure(physics, _data(4, seed=2))
    one = CSGMReconstructor(generator, restarts=1, max_iter=30)
    one(y, physics)
    many = CSGMReconstructor(generator, restarts=4, max_iter=30)
    many(y, physics)
    assert bool((many.last_objective <= one.last_objective).all())
    assert bool((many.last_objective < one.last_objective).any())


def test_csgm_under_no_grad_restores_the_generator():
    generator = _generator(seed=0).train()
    physics = denoising(0.1)
    y = _measure(physics, _data(2))
    model = CSGMReconstructor.from_preset(generator, task="denoising", restarts=2, max_iter=30)
    with torch.no_grad():
        x_hat = model(y, physics)
    assert x_hat.shape == (2, *IMG) and not x_hat.requires_grad
    assert generator.training and all(p.requires_grad for p in generator.parameters())
    assert all(p.grad is None for p in generator.parameters())
    with torch.no_grad():
        start = _residual(physics, generator.eval()(torch.zeros(2, 8)), y)
    assert bool((_residual(physics, x_hat, y) < start).all())


def test_gamma_shrinks_the_latent():
    generator = _generator(seed=1)
    physics = compressed_sensing(IMG, ratio=0.25, seed=0)
    y = _measure(physics, _data(2, seed=3))
    norms = []
    for gamma in (0.0, 10.0):
        model = CSGMReconstructor(generator, gamma=gamma, restarts=1, max_iter=50)
        model(y, physics)
        norms.append(model.last_z.norm(dim=1))
    assert bool((norms[1] < norms[0]).all())


def test_csgm_bad_inputs_have_clear_errors():
    generator = _generator()
    model = CSGMReconstructor(generator, restarts=1, max_iter=5)
    physics = compressed_sensing(IMG, ratio=0.1, seed=0)
    y = _measure(physics, _data(2))
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        model(y.numpy(), physics)
    with pytest.raises(ValueError, match="non-empty batch"):
        model(y[:0], physics)
    with pytest.raises(TypeError, match="deepinv Physics with an A method"):
        model(y, object())
    with pytest.raises(ValueError, match="measure with y = physics"):
        model(y[:, :50], physics)
    with pytest.raises(ValueError, match="physics.A fails on images of the generator's size"):
        model(y, compressed_sensing((1, 8, 8), ratio=0.5))
    with pytest.raises(ValueError, match="NaN or infinite"):
        model(torch.full_like(y, float("nan")), physics)
    with pytest.raises(TypeError, match="convert y"):
        model(y.double(), physics)
    with pytest.raises(TypeError, match="must be a DCGANGenerator"):
        CSGMReconstructor(Glow(img_size=(1, 8, 8), levels=1, steps=1, hidden_channels=4))
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        CSGMReconstructor(generator, gamma=-1.0)
    with pytest.raises(ValueError, match="restarts must be a positive int"):
        CSGMReconstructor(generator, restarts=0)
    with pytest.raises(ValueError, match="task must be"):
        CSGMReconstructor.from_preset(generator, task="deblur")


# -- the shipped DCGAN ------------------------------------------------------------------------
def test_shipped_dcgan_loads_and_makes_digits_sized_images():
    if not REGISTRY.is_file():
        pytest.skip("no DCGAN shipped")
    generator = load_pretrained_dcgan("dcgan_mnist32")
    card = json.loads(REGISTRY.read_text())["dcgan_mnist32"]
    assert card["seed"] == 0 and "--seed 0" in card["command"]
    x = generator.sample(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, *IMG) and float(x.min()) >= 0 and float(x.max()) <= 1
    # MNIST digits: dark background, a bright stroke, zero padding at the border.
    assert float(x[:, :, :2].mean()) < 0.05 and float(x.amax(dim=(1, 2, 3)).min()) > 0.5
    assert isinstance(csgm("dcgan_mnist32", task="inpainting"), CSGMReconstructor)
    with pytest.raises(KeyError, match="Unknown DCGAN 'nope'; available: dcgan_mnist32"):
        load_pretrained_dcgan("nope")


def test_corrupted_shipped_dcgan_is_refused(tmp_path, monkeypatch):
    if not REGISTRY.is_file():
        pytest.skip("no DCGAN shipped")
    from deepinv_glowprior import dcgan

    card = json.loads(REGISTRY.read_text())["dcgan_mnist32"]
    data = bytearray((REGISTRY.parent / card["filename"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / card["filename"]).write_bytes(bytes(data))
    (tmp_path / REGISTRY.name).write_text(REGISTRY.read_text())
    monkeypatch.setattr(dcgan, "REGISTRY", tmp_path / REGISTRY.name)
    with pytest.raises(OSError, match="corrupted"):
        load_pretrained_dcgan("dcgan_mnist32")
