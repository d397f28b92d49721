r"""Dataset bias: priors trained without some digits, tested on the digits they never saw.

Claim 5 of Asim et al. (ICML 2020): a GAN prior trained on a biased set cannot produce what the
set lacks, so its reconstructions of such images stall at a *representation error*, a PSNR
ceiling that more measurements do not lift, while an invertible prior represents every image
and recovers it. Here the bias is a missing class: a Glow and a DCGAN trained on MNIST without
the digit 7 (``glowprior train --exclude-digits 7``, ``python -m deepinv_glowprior.dcgan train
--exclude-digits 7``), tested on 7s and on seen digits, next to the same architectures trained
on all digits.

The ceiling is measured directly: the projection :math:`\min_z \|G(z) - x\|^2` (identity
physics, no noise), which for a Glow is exact (:math:`z = G^{-1}(x)`) and for a DCGAN is its
representation error. Compressive sensing rows show how much of the left-out digit each prior
recovers from :math:`m` Gaussian measurements.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deepinv as dinv
import torch
from tqdm.auto import tqdm

from deepinv_glowprior.dcgan import CSGMReconstructor, DCGANGenerator
from deepinv_glowprior.experiments import save_figure, save_grid
from deepinv_glowprior.glow import Glow
from deepinv_glowprior.reconstructor import GlowReconstructor
from deepinv_glowprior.tasks import make_physics

__all__ = [
    "BIASED_MODELS",
    "BiasPrior",
    "BiasResult",
    "bias_experiment",
    "bias_images",
    "plot_bias",
    "save_bias_grid",
]

Row = dict[str, float | int | str]

#: Shipped models trained without the digit 7, and their all-digit counterparts.
BIASED_MODELS = {
    "left_out": (7,),
    "glow": "mnist32_no7",
    "dcgan": "dcgan_mnist32_no7",
    "glow_reference": "mnist32",
    "dcgan_reference": "dcgan_mnist32",
}


@dataclass(frozen=True)
class BiasPrior:
    """A generative prior in the comparison: ``method`` (``"Glow"`` or ``"CSGM"``), the
    ``training`` set it saw (e.g. ``"without 7"``), the model itself, and ``settings`` for its
    reconstructor (e.g. ``{"max_iter": 100}``)."""

    method: str
    training: str
    model: Glow | DCGANGenerator
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = {"Glow": Glow, "CSGM": DCGANGenerator}.get(self.method)
        if expected is None:
            raise ValueError(f"method must be 'Glow' or 'CSGM', got {self.method!r}.")
        if not isinstance(self.model, expected):
            raise TypeError(
                f"a {self.method} prior needs a {expected.__name__}, got "
                f"{type(self.model).__name__}."
            )

    def reconstructor(self, restarts: int = 10) -> dinv.models.Reconstructor:
        """The reconstructor of the benchmarks: :class:`GlowReconstructor` defaults, or CSGM with
        ``restarts`` starts (as :func:`~deepinv_glowprior.experiments.csgm_method`), updated
        with ``settings``."""
        if self.method == "Glow":
            return GlowReconstructor(self.model, **self.settings)
        return CSGMReconstructor(self.model, **{"restarts": restarts, **self.settings})


@dataclass
class BiasResult:
    """Rows (mean PSNR/SSIM per prior, digit group and task) and, per digit group, the test
    images and each prior's reconstructions ``{(method, training, task, ratio): x_hat}``."""

    rows: list[Row]
    images: dict[str, torch.Tensor]
    reconstructions: dict[str, dict[tuple[str, str, str, float], torch.Tensor]]


def bias_images(left_out: Sequence[int], count: int) -> dict[str, torch.Tensor]:
    """The first ``count`` MNIST test digits of the ``left_out`` classes and of the others,
    keyed ``"left out"`` and ``"seen"``."""
    from deepinv_glowprior import data

    left_out = tuple(left_out)
    if not left_out or any(not isinstance(d, int) or not 0 <= d <= 9 for d in left_out):
        raise ValueError(f"left_out must name digits in 0..9, got {left_out!r}.")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}.")
    groups = {
        "left out": data.mnist("test", only_classes=left_out),
        "seen": data.mnist("test", exclude_classes=left_out),
    }
    return {name: torch.stack([ds[i] for i in range(count)]) for name, ds in groups.items()}


def _projection() -> dinv.physics.Physics:
    return dinv.physics.Denoising(dinv.physics.GaussianNoise(sigma=0.0))


def bias_experiment(
    priors: Sequence[BiasPrior],
    left_out: Sequence[int] = (7,),
    ratios: Sequence[float] = (0.1, 0.25, 0.5),
    num_images: int = 4,
    seed: int = 0,
    restarts: int = 10,
    progress: bool = True,
) -> BiasResult:
    r"""PSNR of each prior on left-out and seen MNIST test digits: the projection
    :math:`\min_z\|G(z) - x\|` (``task="projection"``, the representation ceiling) and
    compressive sensing at each :math:`m/n` in ``ratios`` (``task="cs"``, the measurement
    noise of :func:`~deepinv_glowprior.tasks.compressed_sensing`).

    :param priors: the priors to compare (e.g. a Glow and a DCGAN trained without ``left_out``,
        and both trained on all digits).
    :param left_out: the digits the biased priors never saw.
    :param ratios: CS sampling ratios.
    :param int num_images: test digits per group.
    :param int restarts: CSGM starts per image.
    :return: :class:`BiasResult`; rows have the keys ``experiment, training, digits, task,
        ratio, method, psnr, ssim, seconds, images``.

    :Example:

    >>> from deepinv_glowprior import load_pretrained
    >>> prior = BiasPrior("Glow", "all digits", load_pretrained("mnist32"), {"max_iter": 5})
    >>> result = bias_experiment([prior], ratios=(0.5,), num_images=1, progress=False)
    >>> [(row["digits"], row["task"]) for row in result.rows]
    [('left out 7', 'projection'), ('left out 7', 'cs'), ('seen', 'projection'), ('seen', 'cs')]
    """
    priors = list(priors)
    if not priors or not all(isinstance(p, BiasPrior) for p in priors):
        raise TypeError("priors must be a non-empty sequence of BiasPrior.")
    psnr, ssim = dinv.metric.PSNR(), dinv.metric.SSIM()
    images = bias_images(left_out, num_images)
    label = "left out " + ",".join(str(d) for d in left_out)
    tasks = [("projection", 1.0)] + [("cs", float(r)) for r in ratios]
    rows: list[Row] = []
    reconstructions: dict[str, dict] = {group: {} for group in images}
    bar = tqdm(total=len(images) * len(tasks) * len(priors), desc="bias", disable=not progress)
    for group, x in images.items():
        for task, ratio in tasks:  # one physics and measurement, shared by every prior
            if task == "projection":
                physics = _projection()
            else:
                physics = make_physics("cs", tuple(x.shape[1:]), seed=seed, ratio=ratio)
            torch.manual_seed(seed)
            y = physics(x)
            for prior in priors:
                started = time.perf_counter()
                with torch.no_grad():
                    x_hat = prior.reconstructor(restarts)(y, physics)
                seconds = time.perf_counter() - started
                reconstructions[group][(prior.method, prior.training, task, ratio)] = x_hat
                rows.append(
                    {
                        "experiment": "bias",
                        "training": prior.training,
                        "digits": label if group == "left out" else "seen",
                        "task": task,
                        "ratio": ratio,
                        "method": prior.method,
                        "psnr": round(float(psnr(x_hat, x).mean()), 3),
                        "ssim": round(float(ssim(x_hat, x).mean()), 4),
                        "seconds": round(seconds, 2),
                        "images": len(x),
                    }
                )
                bar.update()
    bar.close()
    return BiasResult(rows, images, reconstructions)


def plot_bias(rows: Sequence[Row], path: str | Path) -> Path:
    """PSNR against :math:`m/n` for each prior, one panel per digit group; the projection
    ceilings as dotted horizontal lines in the colour of their prior."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(str(r["digits"]) for r in rows))
    priors = list(dict.fromkeys((str(r["method"]), str(r["training"])) for r in rows))
    colours = dict(zip(priors, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    figure, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), 3.6), sharey=True)
    axes = [axes] if len(groups) == 1 else list(axes)
    for axis, group in zip(axes, groups, strict=True):
        for method, training in priors:
            mine = [
                r
                for r in rows
                if (r["method"], r["training"], r["digits"]) == (method, training, group)
            ]
            cs = sorted((float(r["ratio"]), float(r["psnr"])) for r in mine if r["task"] == "cs")
            name = f"{method} ({training})"
            if cs:
                axis.plot(
                    *zip(*cs, strict=True),
                    marker="o",
                    color=colours[(method, training)],
                    label=name,
                )
            for r in mine:
                if r["task"] == "projection":
                    axis.axhline(float(r["psnr"]), ls=":", color=colours[(method, training)])
        axis.set_title(f"MNIST test digits: {group}")
        axis.set_xlabel("m/n (dotted: projection ceiling)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR (dB)")
    axes[-1].legend(fontsize=7)
    return save_figure(figure, path)


def save_bias_grid(result: BiasResult, path: str | Path, ratio: float | None = None) -> Path:
    """Figure of the left-out digits (one row each, at most 4): ground truth, then each prior's
    projection and its CS reconstruction at ``ratio`` (default: the largest run), titled."""
    recon = result.reconstructions["left out"]
    ratios = sorted({key[3] for key in recon if key[2] == "cs"})
    ratio = ratios[-1] if ratio is None and ratios else ratio
    panels = {"truth": result.images["left out"]}
    for (method, training, task, r), x_hat in recon.items():
        if task == "projection":
            panels[f"{method} ({training})\nprojection"] = x_hat
        elif ratio is not None and abs(r - ratio) < 1e-9:
            panels[f"{method} ({training})\nCS m/n={r:g}"] = x_hat
    return save_grid(panels, path)
