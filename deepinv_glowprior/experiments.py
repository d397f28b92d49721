r"""The paper's experiments as functions returning tables (rows of dicts), with CSV and plots."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import deepinv as dinv
import torch
from tqdm.auto import tqdm

from deepinv_glowprior import baselines
from deepinv_glowprior.glow import Glow
from deepinv_glowprior.reconstructor import GlowReconstructor
from deepinv_glowprior.tasks import make_physics

__all__ = [
    "EXPERIMENTS",
    "compare_methods",
    "cs_experiment",
    "denoise_experiment",
    "evaluation_images",
    "inpaint_experiment",
    "plot_rows",
    "write_csv",
]

Row = dict[str, float | int | str]
MethodFactory = Callable[[dinv.physics.Physics, torch.Tensor], dinv.models.Reconstructor]


def evaluation_images(dataset: str, count: int, split: str = "test") -> torch.Tensor:
    """The first ``count`` images of a bundled dataset split, as one tensor ``(count, C, H, W)``.

    ``dataset``: ``"mnist"``, ``"fashion_mnist"``, ``"natural"`` (grey 32x32 patches of held-out
    photographs) or ``"faces"`` (skimage's LFW subset, grey, 32x32).
    """
    from deepinv_glowprior import data

    if dataset == "mnist":
        source = data.mnist(split)
    elif dataset == "fashion_mnist":
        source = data.fashion_mnist(split)
    elif dataset == "natural":
        source = data.natural_patches(32, split, color=False)
    elif dataset == "faces":
        source = data.lfw_faces(32, color=False)
        offset = 0 if split == "test" else 50  # first 50 faces for testing, the rest for tuning
        return torch.stack([source[offset + i] for i in range(min(count, 50))])
    else:
        raise ValueError(
            f"dataset must be 'mnist', 'fashion_mnist', 'natural' or 'faces', got {dataset!r}."
        )
    if count > len(source):
        raise ValueError(f"{dataset} {split} has {len(source)} images, fewer than {count}.")
    return torch.stack([source[i] for i in range(count)])


def _glow_method(glow: Glow, **settings) -> MethodFactory:
    return lambda physics, validation: GlowReconstructor(glow, **settings)


def _tuned(factory: Callable[[float], dinv.models.Reconstructor], grid) -> MethodFactory:
    def build(physics, validation):
        lam, _ = baselines.tune_lambda(factory, physics, validation, grid)
        return factory(lam)

    return build


def default_methods(glow: Glow, task: str, glow_settings: dict | None = None) -> dict:
    """Glow and the sparsity baselines (lambda tuned on validation images) for ``task``."""
    grid = baselines.LAMBDA_GRID
    methods = {
        "Glow": _glow_method(glow, **(glow_settings or {})),
        "Lasso-wavelet": _tuned(baselines.lasso_wavelet, grid),
        "Lasso-DCT": _tuned(baselines.lasso_dct, grid),
        "TV": _tuned(baselines.total_variation, grid),
    }
    if task == "denoising":
        try:
            baselines.bm3d_denoiser()
        except ImportError:
            pass
        else:
            methods["BM3D"] = lambda physics, validation: baselines.bm3d_denoiser()
    return methods


def compare_methods(
    methods: dict[str, MethodFactory],
    physics: dinv.physics.Physics,
    test_images: torch.Tensor,
    validation_images: torch.Tensor,
    seed: int = 0,
    setting: Row | None = None,
) -> list[Row]:
    """Mean PSNR/SSIM and seconds of each method on ``test_images`` measured by ``physics``.

    Baselines tune their parameters on ``validation_images`` only. The measurement row is the
    clamped pseudo-inverse :math:`A^\\dagger y`.
    """
    psnr, ssim = dinv.metric.PSNR(), dinv.metric.SSIM()
    torch.manual_seed(seed)
    y = physics(test_images)
    rows = []
    candidates = {"A^+ y": None, **methods}
    for name, factory in candidates.items():
        started = time.perf_counter()
        if factory is None:
            x_hat = physics.A_dagger(y).clamp(0, 1)
        else:
            model = factory(physics, validation_images)
            with torch.no_grad():
                x_hat = model(y, physics)
        seconds = time.perf_counter() - started
        rows.append(
            {
                **(setting or {}),
                "method": name,
                "psnr": round(float(psnr(x_hat, test_images).mean()), 3),
                "ssim": round(float(ssim(x_hat, test_images).mean()), 4),
                "seconds": round(seconds, 2),
                "images": len(test_images),
            }
        )
    return rows


def cs_experiment(
    glow: Glow,
    datasets: Sequence[str] = ("mnist",),
    ratios: Sequence[float] = (0.05, 0.1, 0.2, 0.5),
    num_images: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> list[Row]:
    """Compressive sensing PSNR against :math:`m/n` for Glow and the baselines, per dataset."""
    rows = []
    settings = [(d, r) for d in datasets for r in ratios]
    for dataset, ratio in tqdm(settings, desc="cs", disable=not progress):
        physics = make_physics("cs", glow.img_size, seed=seed, ratio=ratio)
        rows += compare_methods(
            default_methods(glow, "cs"),
            physics,
            evaluation_images(dataset, num_images),
            evaluation_images(dataset, num_images, "val"),
            seed=seed,
            setting={"experiment": "cs", "dataset": dataset, "ratio": ratio},
        )
    return rows


def denoise_experiment(
    glow: Glow,
    sigmas: Sequence[float] = (0.05, 0.1, 0.2),
    num_images: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> list[Row]:
    """Denoising PSNR at each noise level: Glow with ``gamma="auto"``, baselines, BM3D."""
    rows = []
    for sigma in tqdm(sigmas, desc="denoise", disable=not progress):
        physics = make_physics("denoising", glow.img_size, sigma=sigma)
        methods = default_methods(glow, "denoising", {"gamma": "auto"})
        rows += compare_methods(
            methods,
            physics,
            evaluation_images("mnist", num_images),
            evaluation_images("mnist", num_images, "val"),
            seed=seed,
            setting={"experiment": "denoise", "dataset": "mnist", "sigma": sigma},
        )
    return rows


def inpaint_experiment(
    glow: Glow,
    gammas: Sequence[float] = (0.0, 0.01, 0.1),
    num_images: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> list[Row]:
    """Centre-hole inpainting (30% of the side): Glow at each gamma, and the baselines."""
    physics = make_physics("inpainting", glow.img_size, side_fraction=0.3)
    test, validation = (
        evaluation_images("mnist", num_images),
        evaluation_images("mnist", num_images, "val"),
    )
    methods = default_methods(glow, "inpainting")
    del methods["Glow"]
    for gamma in tqdm(gammas, desc="inpaint", disable=not progress):
        methods[f"Glow gamma={gamma:g}"] = _glow_method(glow, gamma=gamma)
    return compare_methods(
        methods,
        physics,
        test,
        validation,
        seed=seed,
        setting={"experiment": "inpaint", "dataset": "mnist"},
    )


EXPERIMENTS = {"cs": cs_experiment, "denoise": denoise_experiment, "inpaint": inpaint_experiment}


def write_csv(rows: list[Row], path: str | Path) -> Path:
    """Write rows (dicts, possibly with different keys) to a CSV file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_rows(rows: list[Row], x_key: str, path: str | Path, title: str = "") -> Path:
    """PSNR against ``x_key``, one line per method (and dataset, when there are several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({str(row.get("dataset", "")) for row in rows})
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        selected = [row for row in rows if str(row.get("dataset", "")) == dataset]
        for method in dict.fromkeys(row["method"] for row in selected):
            points = sorted(
                (row[x_key], row["psnr"]) for row in selected if row["method"] == method
            )
            axis.plot(*zip(*points, strict=True), marker="o", label=method)
        axis.set_xlabel(x_key)
        axis.set_ylabel("PSNR (dB)")
        axis.set_title(f"{title} {dataset}".strip())
        axis.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
