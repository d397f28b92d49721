"""Test data and a tiny trained Glow shared by several test modules."""

import warnings

import torch

from deepinv_glowprior import Glow

TINY = {"img_size": (1, 8, 8), "levels": 2, "steps": 2, "hidden_channels": 16}


def smooth_images(n: int, seed: int = 0, noise: float = 0.03) -> torch.Tensor:
    """Two Gaussian blobs per 8x8 image, plus a little pixel noise, in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    centre_y = 1.5 + 5 * torch.rand(n, 2, 1, 1, generator=generator)
    centre_x = 1.5 + 5 * torch.rand(n, 2, 1, 1, generator=generator)
    width = 1.0 + torch.rand(n, 2, 1, 1, generator=generator)
    height = 0.4 + 0.5 * torch.rand(n, 2, 1, 1, generator=generator)
    blobs = height * torch.exp(-((yy - centre_y) ** 2 + (xx - centre_x) ** 2) / (2 * width**2))
    images = 0.1 + 0.8 * blobs.sum(dim=1, keepdim=True)
    return (images + noise * torch.randn(n, 1, 8, 8, generator=generator)).clamp(0, 1)


def train_tiny_glow() -> Glow:
    """A tiny Glow trained for 150 Adam steps on blob images (about a second), in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(0)
        data = smooth_images(512)
        model = Glow(**TINY)
        model.initialize(data[:64])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(1)
        for _ in range(150):
            batch = data[torch.randint(0, len(data), (32,), generator=generator)]
            loss = model.bits_per_dim(batch, generator=generator).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert float(loss.detach()) < 6.5, "the tiny Glow did not train"
    return model.eval()
