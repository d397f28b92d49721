r"""The main job: reconstruct bundled MNIST test digits with the shipped Glow prior, beside a
wavelet Lasso whose weight is tuned on validation digits."""

from __future__ import annotations

import time
from pathlib import Path

import deepinv as dinv
import torch
from tqdm.auto import tqdm

from deepinv_glowprior import baselines
from deepinv_glowprior.reconstructor import GlowReconstructor
from deepinv_glowprior.tasks import make_physics

__all__ = ["DEMO_LAMBDA_GRID", "DEMO_TASKS", "format_table", "run_demo"]

#: (label, task, physics settings, reconstructor settings)
DEMO_TASKS = (
    ("CS m/n=0.10", "cs", {"ratio": 0.10}, {"gamma": 0.0}),
    ("CS m/n=0.25", "cs", {"ratio": 0.25}, {"gamma": 0.0}),
    ("CS m/n=0.50", "cs", {"ratio": 0.50}, {"gamma": 0.0}),
    ("denoise s=0.1", "denoising", {"sigma": 0.1}, {"gamma": "auto"}),
    ("inpaint hole", "inpainting", {"side_fraction": 0.3}, {"gamma": 0.0}),
)

#: The wavelet Lasso's :math:`\lambda` candidates in the demo (tuned on validation digits): the
#: part of :data:`~deepinv_glowprior.baselines.LAMBDA_GRID` the demo's tasks pick from, kept
#: short because each candidate is a full solve.
DEMO_LAMBDA_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1)


def _load_model(name: str):
    from deepinv_glowprior.pretrained import load_pretrained

    return load_pretrained(name)


def run_demo(
    model: str = "mnist32",
    num_images: int = 8,
    out: str | Path = "outputs/demo.png",
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, float | str]]:
    """Reconstruct ``num_images`` MNIST test digits for each of :data:`DEMO_TASKS`.

    Prints nothing itself; returns one row per task with the mean PSNR/SSIM of the measurement
    (its pseudo-inverse, clamped), of the wavelet Lasso
    (:func:`~deepinv_glowprior.baselines.lasso_wavelet`, its weight picked by
    :func:`~deepinv_glowprior.baselines.tune_lambda` on as many MNIST validation digits, never on
    the test digits) and of the Glow reconstruction, and the seconds the Glow took, and saves a
    figure of originals, measurements and reconstructions to ``out``.

    :param str model: a pretrained model name.
    :param int num_images: test images (the first ones of the MNIST test split).
    :param out: figure path (PNG).
    :param int seed: seed of the measurement noise and matrices.
    :param bool progress: show a progress bar.
    """
    from deepinv_glowprior.data import mnist

    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}.")
    glow = _load_model(model)
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"out={out} is a folder; give a file name such as {out}/demo.png.")
    out.parent.mkdir(parents=True, exist_ok=True)  # fail now, not after the reconstructions
    test = mnist("test")
    if num_images > len(test):
        raise ValueError(f"num_images={num_images} is more than the {len(test)} MNIST test images.")
    x = torch.stack([test[i] for i in range(num_images)])
    validation = mnist("val")
    x_val = torch.stack([validation[i] for i in range(min(num_images, len(validation)))])
    psnr, ssim = dinv.metric.PSNR(), dinv.metric.SSIM()
    rows, panels = [], [("original", x)]
    torch.manual_seed(seed)  # deepinv's noise models draw from the global generator
    for label, task, physics_kwargs, solver_kwargs in tqdm(
        DEMO_TASKS, desc="demo", disable=not progress
    ):
        physics = make_physics(task, glow.img_size, seed=seed, **physics_kwargs)
        y = physics(x)
        baseline = physics.A_dagger(y).clamp(0, 1)
        # tune_lambda measures the validation digits under its own seed: y's noise is unchanged
        lam, _ = baselines.tune_lambda(
            baselines.lasso_wavelet, physics, x_val, DEMO_LAMBDA_GRID, seed=seed
        )
        x_lasso = baselines.lasso_wavelet(lam)(y, physics)
        started = time.perf_counter()
        with torch.no_grad():  # as deepinv's test loop calls models
            x_hat = GlowReconstructor(glow, **solver_kwargs)(y, physics)
        seconds = time.perf_counter() - started
        rows.append(
            {
                "task": label,
                "measurement PSNR": float(psnr(baseline, x).mean()),
                "Lasso PSNR": float(psnr(x_lasso, x).mean()),
                "Glow PSNR": float(psnr(x_hat, x).mean()),
                "measurement SSIM": float(ssim(baseline, x).mean()),
                "Lasso SSIM": float(ssim(x_lasso, x).mean()),
                "Glow SSIM": float(ssim(x_hat, x).mean()),
                "seconds": seconds,
            }
        )
        panels += [
            (f"{label}\nA^+ y", baseline),
            (f"{label}\nLasso", x_lasso),
            (f"{label}\nGlow", x_hat),
        ]
    _save_figure(panels, out)
    return rows


def _save_figure(panels: list[tuple[str, torch.Tensor]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    count = panels[0][1].shape[0]
    figure, axes = plt.subplots(
        len(panels), count, figsize=(1.1 * count + 1.5, 1.15 * len(panels)), squeeze=False
    )
    for row, (title, images) in enumerate(panels):
        for column in range(count):
            axis = axes[row, column]
            axis.imshow(images[column, 0].detach().cpu(), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def format_table(rows: list[dict[str, float | str]]) -> str:
    """The demo's rows as a fixed-width text table."""
    columns = list(rows[0])
    widths = [max(len(c), 8) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    for row in rows:
        cells = [f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("  ".join(cell.rjust(w) for cell, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)
