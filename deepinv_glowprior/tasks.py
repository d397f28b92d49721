r"""The paper's measurement settings as deepinv physics: CS, denoising, centre-hole inpainting."""

from __future__ import annotations

import math

import deepinv as dinv
import torch

from deepinv_glowprior._checks import check_device, check_nonnegative_number

__all__ = ["centre_hole_mask", "compressed_sensing", "denoising", "inpainting", "make_physics"]


_PARAMETERS = {
    "cs": ("ratio", "noise_norm"),
    "denoising": ("sigma",),
    "inpainting": ("side_fraction", "sigma"),
}
_REQUIRED = {"cs": ("ratio",), "denoising": ("sigma",), "inpainting": ()}


def _check_img_size(img_size: object) -> tuple[int, int, int]:
    size = tuple(img_size) if isinstance(img_size, (tuple, list, torch.Size)) else ()
    if len(size) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size
    ):
        raise ValueError(f"img_size must be three positive ints (C, H, W), got {img_size!r}.")
    return size


def compressed_sensing(
    img_size: tuple[int, int, int],
    ratio: float,
    noise_norm: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dinv.physics.CompressedSensing:
    r"""Gaussian CS :math:`y = Ax + \eta`, :math:`A_{ij}\sim\mathcal{N}(0, 1/m)`, as in the paper.

    The noise is :math:`\eta \sim \mathcal{N}(0, (\text{noise\_norm}^2/m) I_m)`, so
    :math:`\|\eta\| \approx` ``noise_norm`` (0.1 in the paper).

    :param tuple img_size: ``(C, H, W)``.
    :param float ratio: :math:`m/n` in (0, 1].
    :param float noise_norm: expected noise norm.
    :param int seed: seed of the matrix (deepinv draws the same matrix for every ``rng=None``).
    :param torch.dtype dtype: floating dtype of the matrix and of :math:`A^\top y`. Build a
        float64 physics here rather than with ``.to(torch.float64)``: deepinv's
        ``CompressedSensing`` casts ``y`` to the dtype it was built with, so after ``.to`` its
        ``A_adjoint`` fails on float64 measurements.

    :Example:

    >>> import torch
    >>> physics = compressed_sensing((1, 8, 8), ratio=0.5, dtype=torch.float64)
    >>> physics.A_adjoint(physics(torch.rand(2, 1, 8, 8, dtype=torch.float64))).dtype
    torch.float64
    """
    img_size = _check_img_size(img_size)
    ratio = check_nonnegative_number(ratio, name="ratio m/n")
    if not (0 < ratio <= 1):
        raise ValueError(f"ratio m/n must be in (0, 1], got {ratio}.")
    noise_norm = check_nonnegative_number(noise_norm, name="noise_norm")
    check_device(device)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(
            f"dtype must be a floating torch.dtype such as torch.float32 or torch.float64, "
            f"got {dtype!r}."
        )
    m = max(1, round(ratio * math.prod(img_size)))
    return dinv.physics.CompressedSensing(
        m=m,
        img_size=tuple(img_size),
        noise_model=dinv.physics.GaussianNoise(sigma=noise_norm / math.sqrt(m)),
        rng=torch.Generator(device).manual_seed(seed),
        device=device,
        dtype=dtype,
    )


def denoising(sigma: float, device: str | torch.device = "cpu") -> dinv.physics.Denoising:
    r""":math:`y = x + \sigma\varepsilon`."""
    sigma = check_nonnegative_number(sigma, name="sigma")
    check_device(device)
    return dinv.physics.Denoising(dinv.physics.GaussianNoise(sigma=sigma), device=device)


def centre_hole_mask(img_size: tuple[int, int, int], side_fraction: float = 0.3) -> torch.Tensor:
    """Mask ``(C, H, W)`` of ones with a centred square of zeros, ``side_fraction`` of the side."""
    side_fraction = check_nonnegative_number(side_fraction, name="side_fraction")
    if not (0 < side_fraction < 1):
        raise ValueError(f"side_fraction must be in (0, 1), got {side_fraction}.")
    channels, height, width = _check_img_size(img_size)
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
    img_size = _check_img_size(img_size)
    sigma = check_nonnegative_number(sigma, name="sigma")
    check_device(device)
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
    if task not in _PARAMETERS:
        raise ValueError(f"task must be 'cs', 'denoising' or 'inpainting', got {task!r}.")
    unknown = sorted(set(kwargs) - set(_PARAMETERS[task]))
    missing = [name for name in _REQUIRED[task] if name not in kwargs]
    if unknown or missing:
        problem = f"got unknown {unknown}" if unknown else f"needs {missing}"
        raise TypeError(
            f"make_physics({task!r}, ...) takes {', '.join(_PARAMETERS[task])} and {problem}."
        )
    if task == "cs":
        return compressed_sensing(img_size, seed=seed, device=device, **kwargs)
    if task == "denoising":
        return denoising(device=device, **kwargs)
    if task == "inpainting":
        return inpainting(img_size, device=device, **kwargs)
    raise ValueError(f"task must be 'cs', 'denoising' or 'inpainting', got {task!r}.")
