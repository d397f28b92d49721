r"""The paper's measurement settings as deepinv physics: CS, denoising, centre-hole inpainting."""

from __future__ import annotations

import math

import deepinv as dinv
import torch

__all__ = ["centre_hole_mask", "compressed_sensing", "denoising", "inpainting", "make_physics"]


def compressed_sensing(
    img_size: tuple[int, int, int],
    ratio: float,
    noise_norm: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dinv.physics.CompressedSensing:
    r"""Gaussian CS :math:`y = Ax + \eta`, :math:`A_{ij}\sim\mathcal{N}(0, 1/m)`, as in the paper.

    The noise is :math:`\eta \sim \mathcal{N}(0, (\text{noise\_norm}^2/m) I_m)`, so
    :math:`\|\eta\| \approx` ``noise_norm`` (0.1 in the paper).

    :param tuple img_size: ``(C, H, W)``.
    :param float ratio: :math:`m/n` in (0, 1].
    :param float noise_norm: expected noise norm.
    :param int seed: seed of the matrix (deepinv draws the same matrix for every ``rng=None``).
    """
    if not (0 < ratio <= 1):
        raise ValueError(f"ratio m/n must be in (0, 1], got {ratio}.")
    if not (math.isfinite(noise_norm) and noise_norm >= 0):
        raise ValueError(f"noise_norm must be finite and >= 0, got {noise_norm}.")
    m = max(1, round(ratio * math.prod(img_size)))
    return dinv.physics.CompressedSensing(
        m=m,
        img_size=tuple(img_size),
        noise_model=dinv.physics.GaussianNoise(sigma=noise_norm / math.sqrt(m)),
        rng=torch.Generator(device).manual_seed(seed),
        device=device,
    )


def denoising(sigma: float, device: str | torch.device = "cpu") -> dinv.physics.Denoising:
    r""":math:`y = x + \sigma\varepsilon`."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}.")
    return dinv.physics.Denoising(dinv.physics.GaussianNoise(sigma=sigma), device=device)


def centre_hole_mask(img_size: tuple[int, int, int], side_fraction: float = 0.3) -> torch.Tensor:
    """Mask ``(C, H, W)`` of ones with a centred square of zeros, ``side_fraction`` of the side."""
    if not (0 < side_fraction < 1):
        raise ValueError(f"side_fraction must be in (0, 1), got {side_fraction}.")
    channels, height, width = img_size
    mask = torch.ones(channels, height, width)
    hole_h, hole_w = round(side_fraction * height), round(side_fraction * width)
    top, left = (height - hole_h) // 2, (width - hole_w) // 2
    mask[:, top : top + hole_h, left : left + hole_w] = 0
    return mask


def inpainting(
    img_size: tuple[int, int, int],
    side_fraction: float = 0.3,
    sigma: float = 0.0,
    device: str | torch.device = "cpu",
) -> dinv.physics.Inpainting:
    """Centre-hole inpainting (a square of ``side_fraction`` of the side is missing)."""
    return dinv.physics.Inpainting(
        img_size=tuple(img_size),
        mask=centre_hole_mask(img_size, side_fraction).to(device),
        noise_model=dinv.physics.GaussianNoise(sigma=sigma),
        device=device,
    )


def make_physics(
    task: str, img_size: tuple[int, int, int], seed: int = 0, device="cpu", **kwargs
) -> dinv.physics.Physics:
    """``task`` in ``"cs"`` (``ratio``, ``noise_norm``), ``"denoising"`` (``sigma``),
    ``"inpainting"`` (``side_fraction``, ``sigma``)."""
    if task == "cs":
        return compressed_sensing(img_size, seed=seed, device=device, **kwargs)
    if task == "denoising":
        return denoising(device=device, **kwargs)
    if task == "inpainting":
        return inpainting(img_size, device=device, **kwargs)
    raise ValueError(f"task must be 'cs', 'denoising' or 'inpainting', got {task!r}.")
