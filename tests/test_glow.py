"""Tests of :mod:`deepinv_glowprior.glow`: invertibility, log-determinants, densities, sampling,
numerical safety of the bounded coupling, checkpoints and input validation."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deepinv_glowprior.glow import (
    CheckpointError,
    Glow,
    GlowConfig,
    _BoundedLogScale,
    atomic_torch_save,
    read_checkpoint,
)

TINY = {"img_size": (2, 4, 4), "levels": 2, "steps": 2, "hidden_channels": 8}
SMALL = {"img_size": (1, 8, 8), "levels": 2, "steps": 2, "hidden_channels": 16}


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    """Seed every test and silence torch's deprecation chatter (torch.lu inside normflows)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def perturb(model: Glow, scale: float, seed: int = 1) -> Glow:
    """Add seeded Gaussian noise to every parameter (the couplings' last conv starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.add_(scale * noise.to(p.dtype))
    return model


def make_model(
    kwargs: dict, *, dtype: torch.dtype = torch.float32, noise: float = 0.05, batch: int = 8
) -> tuple[Glow, torch.Tensor]:
    """A Glow with ActNorm initialised on a random batch, then perturbed; returns (model, x)."""
    model = Glow(**kwargs).to(dtype)
    x = torch.rand(batch, *model.img_size, dtype=dtype)
    model.initialize(x)
    perturb(model, noise)
    return model, x


def smooth_images(batch: int, size: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1]: coarse noise upsampled bicubically."""
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = size
    coarse = torch.rand(batch, channels, height // 4, width // 4, generator=generator)
    fine = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return fine.clamp(0, 1)


@pytest.fixture
def small_model() -> tuple[Glow, torch.Tensor]:
    return make_model(SMALL, noise=0.02)


# -- invertibility and log-determinants ------------------------------------------------------------
@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_round_trip_float64(coupling):
    model, x = make_model({**TINY, "coupling": coupling}, dtype=torch.float64)
    z, _ = model.encode(x)
    assert z.shape == (x.shape[0], model.latent_dim)
    torch.testing.assert_close(model.decode(z), x, atol=1e-8, rtol=0)
    latent = torch.randn(5, model.latent_dim, dtype=torch.float64)
    back, _ = model.encode(model.decode(latent), check_range=False)
    torch.testing.assert_close(back, latent, atol=1e-8, rtol=0)
    # non-trivial: the perturbed map is far from the identity (up to the centring)
    assert (z - (x - 0.5).flatten(1)).abs().max() > 1e-2


@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_logdet_matches_autograd_jacobian(coupling):
    model, x = make_model({**TINY, "coupling": coupling}, dtype=torch.float64)
    x = x[:3]
    z, logdet = model.encode(x)
    assert logdet.shape == (3,)
    for i in range(x.shape[0]):

        def encode_flat(v: torch.Tensor) -> torch.Tensor:
            return model.encode(v.reshape(1, *model.img_size))[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(encode_flat, x[i].reshape(-1))
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(logdet[i], logabsdet, atol=1e-8, rtol=1e-8)
    assert logdet.abs().max() > 1e-3  # the Jacobian is not volume preserving here
    if coupling == "affine":  # the perturbed couplings make the volume change depend on x
        assert (logdet - logdet[0]).abs().max() > 1e-3
    x_back, decode_logdet = model.decode(z, return_logdet=True)
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=0)
    torch.testing.assert_close(decode_logdet, -logdet, atol=1e-8, rtol=1e-8)


def test_decode_logdet_matches_autograd_jacobian():
    model, _ = make_model(TINY, dtype=torch.float64)
    z = 0.8 * torch.randn(2, model.latent_dim, dtype=torch.float64)
    _, logdet = model.decode(z, return_logdet=True)
    for i in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda v: model.decode(v.unsqueeze(0)).reshape(-1), z[i]
        )
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=1e-8)


def test_shift_bound_bounds_every_shift_and_keeps_the_flow_exact(tmp_path):
    from deepinv_glowprior.glow import _BoundedLogScale

    model, x = make_model({**TINY, "shift_bound": 0.05}, dtype=torch.float64)
    shifts = []
    for module in model.modules():
        if isinstance(module, _BoundedLogScale):
            module.register_forward_hook(lambda m, i, out: shifts.append(out[:, 0::2]))
    z, logdet = model.encode(10 * x, check_range=False)  # far from the data: large raw shifts
    assert max(float(t.abs().max()) for t in shifts) <= 0.05
    torch.testing.assert_close(model.decode(z), 10 * x, atol=1e-8, rtol=0)
    unbounded, _ = make_model(TINY, dtype=torch.float64)
    unbounded.load_state_dict(model.state_dict())
    assert (unbounded.encode(10 * x, check_range=False)[0] - z).abs().max() > 1e-3
    path = model.save(tmp_path / "bounded.pt")
    assert Glow.load(path).config.shift_bound == 0.05


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"shift_bound": 0.0}, "shift_bound must be"),
        ({"shift_bound": 1.0, "coupling": "additive"}, "applies to affine"),
    ],
)
def test_shift_bound_is_validated(options, match):
    with pytest.raises(ValueError, match=match):
        GlowConfig(**options)


def test_additive_coupling_has_no_coupling_logdet():
    """With additive couplings only ActNorm and the 1x1 convs contribute: logdet is constant."""
    model, x = make_model({**TINY, "coupling": "additive"}, dtype=torch.float64)
    _, logdet = model.encode(x)
    torch.testing.assert_close(logdet, logdet[:1].expand_as(logdet), atol=1e-10, rtol=0)


@pytest.mark.parametrize("img_size", [(1, 32, 32), (3, 32, 32)])
def test_round_trip_float32_multiscale(img_size):
    kwargs = {"img_size": img_size, "levels": 3, "steps": 8, "hidden_channels": 64}
    model, x = make_model(kwargs, noise=0.01, batch=4)
    with torch.no_grad():
        z, logdet = model.encode(x)
        assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
        image_error = (model.decode(z) - x).abs().max().item()
        latent = torch.randn(4, model.latent_dim)
        back, _ = model.encode(model.decode(latent), check_range=False)
        latent_error = (back - latent).abs().max().item()
    assert image_error <= 1e-5, f"decode(encode(x)) error {image_error:.3g}"
    assert latent_error <= 1e-5 * (1 + latent.abs().max().item()), (
        f"encode(decode(z)) error {latent_error:.3g}"
    )


# -- densities ----------------------------------------------------------------------------------
def test_log_prob_is_latent_density_plus_logdet(small_model):
    model, x = small_model
    z, logdet = model.encode(x)
    log_prob = model.log_prob(x)
    assert log_prob.shape == (x.shape[0],)
    torch.testing.assert_close(log_prob, Glow.latent_log_prob(z) + logdet)
    normal = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    torch.testing.assert_close(Glow.latent_log_prob(z), normal.log_prob(z).sum(dim=1))


def test_latent_log_prob_float64():
    z = torch.randn(3, 17, dtype=torch.float64)
    normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), 1.0)
    expected = normal.log_prob(z).sum(dim=1)
    torch.testing.assert_close(Glow.latent_log_prob(z), expected, atol=1e-12, rtol=1e-12)


def test_bits_per_dim_bin_centres(small_model):
    model, x = small_model
    n_bins = 2**model.config.n_bits
    bpd = model.bits_per_dim(x, dequantize=False)
    centres = (torch.floor(x * n_bins).clamp(0, n_bins - 1) + 0.5) / n_bins
    n = model.latent_dim
    expected = (-model.log_prob(centres) + n * math.log(n_bins)) / (n * math.log(2))
    assert bpd.shape == (x.shape[0],)
    torch.testing.assert_close(bpd, expected)


def test_bits_per_dim_n_bits_5():
    model, x = make_model({**SMALL, "n_bits": 5}, noise=0.02)
    centres = (torch.floor(x * 32).clamp(0, 31) + 0.5) / 32
    n = model.latent_dim
    expected = (-model.log_prob(centres) + n * math.log(32)) / (n * math.log(2))
    torch.testing.assert_close(model.bits_per_dim(x, dequantize=False), expected)


def test_bits_per_dim_dequantized_is_seeded(small_model):
    model, x = small_model
    first = model.bits_per_dim(x, generator=torch.Generator().manual_seed(3))
    again = model.bits_per_dim(x, generator=torch.Generator().manual_seed(3))
    other = model.bits_per_dim(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.isfinite(first).all()


def test_dequantize_stays_in_the_pixel_bin(small_model):
    model, x = small_model
    noisy = model.dequantize(x, torch.Generator().manual_seed(0))
    assert torch.equal(model.quantize(noisy), model.quantize(x))
    assert noisy.min() >= 0 and noisy.max() < 1


def test_discretize_undoes_dequantize_on_8_bit_images(small_model):
    model, _ = small_model
    x = torch.arange(256.0).div(255).view(4, 1, 8, 8)  # every 8-bit value once
    noisy = model.dequantize(x, torch.Generator().manual_seed(1))
    assert not torch.equal(noisy, x)
    assert torch.equal(model.discretize(noisy), x)
    assert torch.equal(model.discretize(torch.tensor([-0.5, 1.5])), torch.tensor([0.0, 1.0]))


# -- gradients and modes ------------------------------------------------------------------------
def test_every_parameter_gets_a_gradient():
    model = Glow(**SMALL)
    x = torch.rand(4, *model.img_size)
    model.initialize(x)
    model.log_prob(x).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"

    perturb(model, 0.02)
    model.zero_grad(set_to_none=True)
    model.log_prob(x).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} has no gradient after perturbation"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().max() > 0, f"{name} has an all-zero gradient"


def test_train_and_eval_modes_agree(small_model):
    model, x = small_model
    model.train()
    z_train, logdet_train = model.encode(x)
    model.eval()
    z_eval, logdet_eval = model.encode(x)
    assert torch.equal(z_train, z_eval)
    assert torch.equal(logdet_train, logdet_eval)


def test_initialize_sets_actnorm_from_data():
    model = Glow(**SMALL)
    x = torch.rand(8, *model.img_size)
    assert not model.is_initialized
    assert model.initialize(x) is model
    assert model.is_initialized
    # ActNorm is data dependent once: a second batch with other statistics does not re-init it.
    z_before, _ = model.encode(x)
    model.initialize(0.5 * x)
    z_after, _ = model.encode(x)
    assert torch.equal(z_before, z_after)


def test_decode_uninitialised_warns():
    model = Glow(**SMALL)
    with pytest.warns(UserWarning, match="uninitialised"):
        x = model.decode(torch.zeros(1, model.latent_dim))
    assert torch.isfinite(x).all()


# -- sampling -------------------------------------------------------------------------------------
def test_sample(small_model):
    model, _ = small_model
    samples = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, *model.img_size)
    assert torch.isfinite(samples).all()
    assert samples.min() >= 0 and samples.max() <= 1
    again = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)
    other = model.sample(6, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(samples, other)


def test_sample_temperature_zero_is_decode_of_zero(small_model):
    model, _ = small_model
    samples = model.sample(3, temperature=0.0, clamp=False)
    expected = model.decode(torch.zeros(3, model.latent_dim)).detach()
    torch.testing.assert_close(samples, expected, atol=0, rtol=0)


def test_sample_unclamped_is_decode_of_scaled_gaussian(small_model):
    model, _ = small_model
    samples = model.sample(2, 0.7, generator=torch.Generator().manual_seed(5), clamp=False)
    z = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(samples, model.decode(0.7 * z).detach())


@pytest.mark.parametrize("num_samples", [0, -1, 2.0, True, "3"])
def test_sample_rejects_bad_num_samples(small_model, num_samples):
    model, _ = small_model
    with pytest.raises(ValueError, match="num_samples"):
        model.sample(num_samples)


@pytest.mark.parametrize("temperature", [-0.1, math.inf, math.nan, "1"])
def test_sample_rejects_bad_temperature(small_model, temperature):
    model, _ = small_model
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature)


# -- numerical safety of the bounded affine coupling -----------------------------------------------
def test_bounded_coupling_keeps_decode_finite_after_training():
    model = Glow(img_size=(1, 16, 16), levels=2, steps=4, hidden_channels=32)
    data = smooth_images(16, model.img_size)
    model.initialize(data)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model.bits_per_dim(data, generator=generator).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"training did not reduce bits/dim: {losses[0]} -> {losses[-1]}"

    ranges = {}
    for temperature in (1.0, 2.0, 3.0):
        z = temperature * torch.randn(8, model.latent_dim, generator=generator)
        z.requires_grad_(True)
        x = model.decode(z)
        ranges[temperature] = (x.min().item(), x.max().item())
        assert torch.isfinite(x).all(), f"non-finite decode at T={temperature}; ranges {ranges}"
        (grad,) = torch.autograd.grad(x.pow(2).sum(), z)
        assert torch.isfinite(grad).all(), f"non-finite gradient at T={temperature}; {ranges}"
    spread = max(abs(v) for pair in ranges.values() for v in pair)
    assert spread < 1e6, f"decoded values explode: ranges per temperature {ranges}"


def test_bounded_log_scale_is_within_bound_even_for_large_weights():
    model, _ = make_model({**SMALL, "scale_bound": 1.5}, noise=0.02)
    wrapped = [m for m in model.modules() if isinstance(m, _BoundedLogScale)]
    assert len(wrapped) == model.config.levels * model.config.steps
    with torch.no_grad():
        for module in wrapped:
            for p in module.net.parameters():
                p.mul_(100.0)
        largest = 0.0
        for module in wrapped:
            in_channels = module.net.net[0].in_channels
            h = 3 * torch.randn(4, in_channels, 4, 4)
            raw = module.net(h)
            out = module(h)
            assert out.shape == raw.shape
            torch.testing.assert_close(out[:, 0::2], raw[:, 0::2], atol=0, rtol=0)
            log_scale = out[:, 1::2]
            assert log_scale.abs().max() <= 1.5, f"log-scale {log_scale.abs().max()} > 1.5"
            largest = max(largest, log_scale.abs().max().item())
            assert raw[:, 1::2].abs().max() > 1.5  # the bound is actually exercised
    assert largest > 1.4
    # and the whole model stays finite with these huge coupling weights
    z = torch.randn(2, model.latent_dim)
    assert torch.isfinite(model.decode(z)).all()


def test_additive_model_has_no_log_scale_wrapper():
    model = Glow(**{**SMALL, "coupling": "additive"})
    assert not any(isinstance(m, _BoundedLogScale) for m in model.modules())


# -- checkpoints ----------------------------------------------------------------------------------
def test_save_load_round_trip(small_model, tmp_path):
    model, x = small_model
    model.train()
    path = model.save(tmp_path / "sub" / "glow.pt", meta={"epoch": 3})
    loaded = Glow.load(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.is_initialized
    z, logdet = model.encode(x)
    z_loaded, logdet_loaded = loaded.encode(x)
    assert torch.equal(z, z_loaded) and torch.equal(logdet, logdet_loaded)
    assert torch.equal(model.decode(z), loaded.decode(z))
    assert read_checkpoint(path)["meta"] == {"epoch": 3}


def test_load_weights_into_same_config(small_model, tmp_path):
    model, x = small_model
    path = model.save(tmp_path / "glow.pt")
    fresh = Glow(**SMALL)
    assert fresh.load_weights(path) is fresh
    assert torch.equal(fresh.encode(x)[0], model.encode(x)[0])


def test_read_checkpoint_accepts_training_checkpoints(small_model, tmp_path):
    model, x = small_model
    path = tmp_path / "train.pt"
    torch.save({"glow": model.checkpoint_payload(), "step": 10}, path)
    loaded = Glow.load(path)
    assert torch.equal(loaded.encode(x)[0], model.encode(x)[0])


@pytest.mark.parametrize(
    ("field", "value"), [("steps", 3), ("hidden_channels", 8), ("coupling", "additive")]
)
def test_load_weights_mismatch_names_the_field(small_model, tmp_path, field, value):
    model, _ = small_model
    path = model.save(tmp_path / "glow.pt")
    other = Glow(**{**SMALL, field: value})
    with pytest.raises(CheckpointError, match=field):
        other.load_weights(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        Glow.load(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError):
        Glow(**SMALL).load_weights(tmp_path / "nope.pt")


def test_truncated_checkpoint(small_model, tmp_path):
    model, _ = small_model
    path = model.save(tmp_path / "glow.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        Glow.load(path)
    with pytest.raises(CheckpointError):
        Glow(**SMALL).load_weights(path)


_RANDOM_BYTES = bytes(
    torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()
)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(_RANDOM_BYTES, id="random-bytes"),
        pytest.param(b"not a checkpoint\n", id="text"),
        pytest.param(b"PK\x03\x04" + b"\x00" * 64, id="fake-zip"),
        pytest.param(b"hello world", id="text-KeyError"),
        pytest.param(b"", id="empty-file"),
    ],
)
def test_garbage_checkpoint(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_checkpoint_without_format_tag(small_model, tmp_path):
    model, _ = small_model
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="not a deepinv-glowprior"):
        Glow.load(path)
    payload = model.checkpoint_payload()
    del payload["format"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="not a deepinv-glowprior"):
        Glow(**SMALL).load_weights(path)


def test_tagged_checkpoint_without_config(small_model, tmp_path):
    model, _ = small_model
    payload = model.checkpoint_payload()
    del payload["config"]
    path = tmp_path / "noconfig.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError):
        Glow.load(path)


def test_atomic_save_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"version": 1}, path)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"version": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"], "temporary file left behind"


# -- input validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make_input", "error", "pattern"),
    [
        (lambda: torch.rand(1, 8, 8), ValueError, "4 dimensions"),
        (lambda: torch.rand(2, 3, 8, 8), ValueError, "3 channels but the model expects 1"),
        (lambda: torch.rand(2, 1, 8, 16), ValueError, "spatial size"),
        (lambda: torch.full((2, 1, 8, 8), math.nan), ValueError, "NaN or infinite"),
        (lambda: torch.full((2, 1, 8, 8), math.inf), ValueError, "NaN or infinite"),
        (lambda: 1.5 * torch.ones(2, 1, 8, 8), ValueError, r"in \[0, 1\]"),
        (lambda: -0.2 * torch.ones(2, 1, 8, 8), ValueError, r"in \[0, 1\]"),
        (lambda: torch.zeros(2, 1, 8, 8, dtype=torch.uint8), TypeError, "floating dtype"),
        (lambda: torch.rand(2, 1, 8, 8, dtype=torch.float64), TypeError, "model's parameters"),
        (lambda: torch.rand(0, 1, 8, 8), ValueError, "empty batch"),
        (lambda: torch.rand(2, 1, 8, 8).numpy(), TypeError, "torch.Tensor"),
    ],
)
def test_image_input_errors(small_model, make_input, error, pattern):
    model, _ = small_model
    x = make_input()
    with pytest.raises(error, match=pattern):
        model.encode(x)
    with pytest.raises(error, match=pattern):
        model.log_prob(x)
    with pytest.raises(error, match=pattern):
        model.bits_per_dim(x)


def test_nan_inside_valid_batch_is_rejected(small_model):
    model, x = small_model
    x = x.clone()
    x[1, 0, 3, 3] = math.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        model.encode(x)


def test_off_range_allowed_when_check_range_disabled(small_model):
    model, x = small_model
    z, _ = model.encode(x + 0.5, check_range=False)
    assert torch.isfinite(z).all()


@pytest.mark.parametrize(
    ("make_latent", "error", "pattern"),
    [
        (lambda n: torch.randn(2, n + 1), ValueError, "must have shape"),
        (lambda n: torch.randn(n), ValueError, "must have shape"),
        (lambda n: torch.randn(2, 1, n), ValueError, "must have shape"),
        (lambda n: torch.randn(0, n), ValueError, "empty batch"),
        (lambda n: torch.full((1, n), math.nan), ValueError, "NaN or infinite"),
        (lambda n: torch.randn(2, n, dtype=torch.float64), TypeError, "model's parameters"),
        (lambda n: [0.0] * n, TypeError, "torch.Tensor"),
    ],
)
def test_decode_input_errors(small_model, make_latent, error, pattern):
    model, _ = small_model
    with pytest.raises(error, match=pattern):
        model.decode(make_latent(model.latent_dim))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"img_size": (1, 12, 12), "levels": 3}, r"divisible by 2\*\*levels"),
        ({"img_size": (1, 16, 20), "levels": 3}, r"divisible by 2\*\*levels"),
        ({"coupling": "sigmoid"}, "coupling must be one of"),
        ({"levels": 0}, "levels must be a positive int"),
        ({"levels": -1}, "levels must be a positive int"),
        ({"levels": True}, "levels must be a positive int"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"hidden_channels": 2.0}, "hidden_channels must be a positive int"),
        ({"img_size": (16, 16)}, "img_size must be three positive ints"),
        ({"img_size": (0, 16, 16)}, "img_size must be three positive ints"),
        ({"scale_bound": 0.0}, "scale_bound"),
        ({"scale_bound": math.inf}, "scale_bound"),
        ({"n_bits": 9}, "n_bits"),
    ],
)
def test_config_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        GlowConfig(**kwargs)
    with pytest.raises(ValueError, match=pattern):
        Glow(**kwargs)


def test_config_normalises_img_size_and_latent_dim():
    config = GlowConfig(img_size=[3, 16, 16], levels=2)
    assert config.img_size == (3, 16, 16)
    model = Glow.from_config(config)
    assert model.latent_dim == 3 * 16 * 16
    assert model.img_size == (3, 16, 16)


# -- batch of one ---------------------------------------------------------------------------------
def test_batch_of_one(small_model):
    model, x = small_model
    z_all, logdet_all = model.encode(x)
    z, logdet = model.encode(x[:1])
    assert z.shape == (1, model.latent_dim) and logdet.shape == (1,)
    torch.testing.assert_close(z, z_all[:1])
    torch.testing.assert_close(logdet, logdet_all[:1])
    decoded = model.decode(z)
    assert decoded.shape == (1, *model.img_size)
    torch.testing.assert_close(decoded, x[:1], atol=1e-5, rtol=0)
    log_prob = model.log_prob(x[:1])
    assert log_prob.shape == (1,)
    torch.testing.assert_close(log_prob, model.log_prob(x)[:1])


def test_first_encode_with_one_image_on_1x1_deepest_level():
    model = Glow(**TINY)  # deepest level is 16 channels at 1x1
    x = torch.rand(1, *model.img_size)
    try:
        z, logdet = model.encode(x)
    except ValueError:
        pass  # refusing to initialise from one image is acceptable
    else:
        assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    z, logdet = model.encode(torch.rand(4, *model.img_size))
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()


def test_building_a_glow_prints_no_torch_lu_deprecation():
    # A fresh process: torch warns about torch.lu once per process, so in this one it may
    # already have been said and silenced.
    import subprocess
    import sys

    code = "from deepinv_glowprior import Glow; Glow(img_size=(1, 8, 8), levels=2, steps=2)"
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "torch.lu" not in result.stderr


# -- cached 1x1 inverses ------------------------------------------------------------------------
def _one_by_ones(model: Glow) -> list:
    import normflows as nf

    return [m for m in model.modules() if isinstance(m, nf.flows.Invertible1x1Conv)]


@pytest.mark.parametrize("use_lu", [True, False])
def test_cached_1x1_inverses_decode_bit_for_bit_as_without(use_lu):
    model, x = make_model({**SMALL, "use_lu": use_lu}, noise=0.02)
    z = model.encode(x)[0].detach()
    with torch.no_grad():
        plain = model._decode(z)
        with model.cached_1x1_inverses():
            assert all("forward" in vars(m) for m in _one_by_ones(model))
            first, again = model._decode(z), model._decode(z)
    for cached in (first, again):
        assert torch.equal(cached[0], plain[0]) and torch.equal(cached[1], plain[1])
    assert not any("forward" in vars(m) for m in _one_by_ones(model))


def test_cached_1x1_inverse_follows_a_change_of_the_weights(small_model):
    model, x = small_model
    z = model.encode(x)[0].detach()
    with torch.no_grad(), model.cached_1x1_inverses():
        before = model.decode(z)
        for convolution in _one_by_ones(model):
            convolution.log_S.add_(0.1)  # in place, as an optimiser step
        after = model.decode(z)
    with torch.no_grad():
        expected = model.decode(z)
    assert not torch.equal(after, before)
    assert torch.equal(after, expected)


def test_gradients_reach_the_weights_inside_the_cache(small_model):
    model, x = small_model
    z = model.encode(x)[0].detach()

    def weight_gradients() -> list[torch.Tensor]:
        model.zero_grad()
        model.decode(z).pow(2).sum().backward()
        return [m.log_S.grad.clone() for m in _one_by_ones(model)]

    plain = weight_gradients()
    with model.cached_1x1_inverses():
        cached = weight_gradients()
    assert all(torch.equal(a, b) for a, b in zip(plain, cached, strict=True))


def test_cache_restores_the_modules_after_an_error_and_nests(small_model):
    model, x = small_model
    z = model.encode(x)[0].detach()
    with model.cached_1x1_inverses(), model.cached_1x1_inverses():
        pass
    assert not any("forward" in vars(m) for m in _one_by_ones(model))
    with model.cached_1x1_inverses():
        with model.cached_1x1_inverses():
            pass
        # the inner context leaves the outer's cache in place
        assert all("forward" in vars(m) for m in _one_by_ones(model))
    with pytest.raises(RuntimeError, match="inside"), model.cached_1x1_inverses():
        raise RuntimeError("inside")
    assert not any("forward" in vars(m) for m in _one_by_ones(model))
    assert torch.isfinite(model.decode(z)).all()


def test_frozen_holds_the_weights_off_autograd_with_cached_inverses_and_restores(small_model):
    model, _ = small_model
    first = next(model.parameters())
    first.requires_grad_(False)  # a mixed set of flags comes back as it was
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="inside"), model.frozen():
        assert not any(p.requires_grad for p in model.parameters())
        assert all("forward" in vars(m) for m in _one_by_ones(model))
        raise RuntimeError("inside")
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not any("forward" in vars(m) for m in _one_by_ones(model))
