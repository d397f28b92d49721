"""Input validation shared by the public entry points (private module)."""

from __future__ import annotations

import math
import os

import torch

__all__ = [
    "check_measurement_batch",
    "check_physics_output",
    "check_device",
    "check_dtype_device",
    "check_finite_tensor",
    "check_image_batch",
    "check_nonnegative_number",
    "check_path",
    "check_positive_int",
    "check_same_device",
    "check_tensor_batch",
]


def check_image_batch(
    x: object,
    img_size: tuple[int, int, int],
    *,
    name: str = "x",
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    check_range: bool = True,
    range_tolerance: float = 1e-5,
) -> torch.Tensor:
    """Check that ``x`` is a finite (B, C, H, W) floating image batch matching ``img_size``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x)!r}.")
    channels, height, width = img_size
    if x.dim() != 4:
        hint = " Add a batch dimension with x.unsqueeze(0)." if x.dim() == 3 else ""
        raise ValueError(
            f"{name} must have 4 dimensions (B, C, H, W), got shape {tuple(x.shape)}.{hint}"
        )
    if x.shape[0] == 0:
        raise ValueError(
            f"{name} is an empty batch (shape {tuple(x.shape)}); pass at least one image."
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channels but the model expects {channels} "
            f"(model image size {img_size})."
        )
    if tuple(x.shape[2:]) != (height, width):
        raise ValueError(
            f"{name} has spatial size {tuple(x.shape[2:])} but the model expects "
            f"{(height, width)}; resize or crop the images, or build a model for that size."
        )
    check_dtype_device(x, name=name, dtype=dtype, device=device)
    check_finite_tensor(x, name=name)
    if check_range:
        low, high = float(x.detach().min()), float(x.detach().max())
        if low < -range_tolerance or high > 1 + range_tolerance:
            raise ValueError(
                f"{name} must hold images in [0, 1], got values in [{low:.4g}, {high:.4g}]. "
                "Rescale (e.g. x / 255 for 8-bit images) or clamp with x.clamp(0, 1)."
            )
    return x


def check_dtype_device(
    x: torch.Tensor,
    *,
    name: str,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> None:
    """Check a tensor's dtype (floating, and equal to ``dtype``) and device."""
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{name} has dtype {x.dtype}; a floating dtype is needed. "
            "Convert 8-bit images with x.float() / 255."
        )
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but the model's parameters are {dtype}; "
            f"convert with {name}.to({dtype}) or the model with .to({x.dtype})."
        )
    if device is not None and x.device != device:
        raise ValueError(
            f"{name} is on {x.device} but the model is on {device}; "
            f"move one of them, e.g. {name}.to('{device}')."
        )


def check_finite_tensor(x: torch.Tensor, *, name: str) -> None:
    """Raise if ``x`` holds NaN or infinite values."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} holds {bad} NaN or infinite values; clean the input first.")


def check_same_device(*named: tuple[str, torch.device]) -> None:
    """Raise if the named devices differ."""
    devices = {str(torch.device(device)) for _, device in named}
    if len(devices) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in named)
        raise ValueError(f"Inputs are on different devices ({listing}); move them to one device.")


def check_nonnegative_number(value: object, *, name: str, allow_zero: bool = True) -> float:
    """Check a finite, non-negative (or positive) Python/tensor scalar and return it as float."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}."
            )
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}.")
    return value


def check_positive_int(value: object, *, name: str, minimum: int = 1) -> int:
    """Check an ``int`` (not a ``bool``) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}.")
    return value


def check_device(device: object, *, name: str = "device") -> torch.device:
    """Parse a device name and check that this machine has it (CUDA or MPS)."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"{name} must be a device name such as 'cpu' or 'cuda', got {type(device).__name__}."
        )
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"{name}={device!r} is not a device; use 'cpu' or 'cuda'.") from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={device!r}, but CUDA is not available here; use 'cpu'.")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={device!r}, but MPS is not available here; use 'cpu'.")
    return parsed


def check_path(path: object, *, name: str = "path") -> None:
    """Check that ``path`` is a file-system path (``str`` or ``os.PathLike``)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{name} must be a file path (str or pathlib.Path), got {type(path).__name__}."
        )


def check_tensor_batch(y: object, name: str = "y") -> None:
    """``y`` is a non-empty tensor batch ``(B, ...)``."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}.")
    if y.dim() < 2 or y.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (B, ...), got shape {tuple(y.shape)}.")


def check_measurement_batch(y: object, physics: object) -> None:
    """``y`` is a non-empty tensor batch ``(B, ...)`` and ``physics`` has an ``A`` method."""
    check_tensor_batch(y)
    if not callable(getattr(physics, "A", None)):
        raise TypeError(f"physics must be a deepinv Physics with an A method, got {physics!r}.")


def check_physics_output(
    y: torch.Tensor, physics, img_size: tuple[int, ...], *, model: str
) -> torch.Size:
    """Apply ``physics.A`` to one grey image of ``img_size`` and check its measurement shape
    against ``y``'s; return the shape of ``A(probe)`` (its batch size is 1 unless the physics
    holds per-sample parameters). ``model`` names the image's source in messages."""
    probe = torch.full((1, *img_size), 0.5, device=y.device, dtype=y.dtype)
    try:
        measured = physics.A(probe)
    except Exception as err:
        raise ValueError(
            f"physics.A fails on images of {model}'s size {tuple(img_size)}: {err}. "
            "Build the physics for that image size."
        ) from err
    if tuple(measured.shape[1:]) != tuple(y.shape[1:]):
        expected = ", ".join(str(v) for v in ("B", *measured.shape[1:]))
        raise ValueError(
            f"y has shape {tuple(y.shape)}, but physics.A maps an image of {model}'s size "
            f"{tuple(img_size)} to measurements of shape ({expected}); the measurements "
            f"do not match the physics or {model}'s image size. Build the physics for that "
            "image size and measure with y = physics(x)."
        )
    return measured.shape
