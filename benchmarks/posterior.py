"""Posterior sampling with the shipped ``mnist32`` Glow: the measured goals of issue #10.

For denoising (sigma = 0.1), compressed sensing (m/n = 0.25) and centre-hole inpainting on MNIST
test digits, it prints the MAP and posterior-mean PSNR, the coverage of pixelwise 90% credible
intervals, the Spearman correlation of the std map with the absolute error, std inside/outside
the hole, acceptance, split R-hat and the cost (samples per second)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/posterior.py --images 16

By default the samples are 8-bit images (``GlowPosteriorSampler(quantize=True)``), on the grid of
the ground truth, and ``coverage`` is the fraction of pixels whose 90% interval contains the truth.
With ``--no-quantize`` the samples are the continuous decoded images; ``coverage_bin`` then counts
an interval that meets the truth's quantisation bin [k/256, (k+1)/256), the set of continuous
images the Glow was trained on for that truth (a raw interval can never contain an exact 0).
The ``_fg`` figures are taken on the digit's strokes only (truth > 0). ``certain_and_exact`` is
the fraction of pixels where every sample equals the truth (std and error exactly 0: mostly
background); these tie at the bottom of both rankings, so the all-pixel Spearman mostly
measures that the background is certain, and ``spearman_fg`` is the harder test.

``--truth glow`` draws the ground truths from the Glow itself (8-bit images of G(z) with
z ~ N(0, I)), so the prior is exactly right: what is left of the miscalibration is then the
sampler's, not the prior's.
"""

from __future__ import annotations

import argparse
import time
import warnings

import deepinv as dinv
import torch
from scipy.stats import spearmanr

from deepinv_glowprior import GlowPosteriorSampler, load_pretrained
from deepinv_glowprior.data import mnist
from deepinv_glowprior.tasks import centre_hole_mask, compressed_sensing, denoising, inpainting

TASKS = ("denoising", "cs", "inpainting")


def make_physics(task: str, img_size: tuple[int, int, int], inpainting_sigma: float):
    if task == "denoising":
        return denoising(0.1)
    if task == "cs":
        return compressed_sensing(img_size, ratio=0.25)
    return inpainting(img_size, sigma=inpainting_sigma)


def _mean_spearman(
    std: torch.Tensor, error: torch.Tensor, mask: torch.Tensor | None = None
) -> float:
    """Spearman correlation of std and error over each image's pixels (in ``mask``), averaged
    over the images where the std is not constant."""
    rhos = []
    for i in range(len(std)):
        keep = slice(None) if mask is None else mask[i]
        if float(std[i][keep].max()) > float(std[i][keep].min()):
            rhos.append(spearmanr(std[i][keep].flatten(), error[i][keep].flatten())[0])
    return float(torch.tensor(rhos).nanmean()) if rhos else float("nan")


def figures(out, x: torch.Tensor, task: str, quantized: bool = True) -> dict[str, float]:
    """The goal figures of one task from a :class:`PosteriorSamples` and the ground truth."""
    psnr = dinv.metric.PSNR()
    lower, upper = out.interval(0.9)
    slack = 1e-6  # float rounding of k / 255
    inside = (x >= lower - slack) & (x <= upper + slack)
    foreground = x > 0
    error = (out.mean - x).abs()
    row = {
        "psnr_map": float(psnr(out.map, x).mean()),
        "psnr_mean": float(psnr(out.mean, x).mean()),
        "coverage": float(inside.float().mean()),
        "coverage_fg": float(inside[foreground].float().mean()),
    }
    if not quantized:
        bins = torch.floor(x * 256).clamp(0, 255) / 256
        inside_bin = (upper >= bins) & (lower <= bins + 1 / 256)
        row["coverage_bin"] = float(inside_bin.float().mean())
        row["coverage_bin_fg"] = float(inside_bin[foreground].float().mean())
    row |= {
        "spearman": _mean_spearman(out.std, error),
        "spearman_fg": _mean_spearman(out.std, error, foreground),
        "certain_and_exact": float(((out.std == 0) & (error == 0)).float().mean()),
        "acceptance": float(out.acceptance.mean()),
        "evaluations_per_chain": out.evaluations,
        "rhat_energy_median": float(out.rhat.median()),
        # background pixels that never leave 0 have R-hat 1 by definition: strokes only
        "rhat_pixel_median_fg": float(out.rhat_pixels[foreground].nanmedian()),
        "seconds_map": out.seconds["map"],
        "seconds_chains": out.seconds["chains"],
        "seconds_map_cpu": out.seconds["map_cpu"],
        "seconds_chains_cpu": out.seconds["chains_cpu"],
        "samples_per_s": out.samples.shape[0] * len(x) / out.seconds["chains"],
        "samples_per_cpu_s": out.samples.shape[0] * len(x) / out.seconds["chains_cpu"],
    }
    if task == "inpainting":
        hole = centre_hole_mask(tuple(x.shape[1:])) == 0
        std_in = out.std[:, hole].mean(dim=1)
        std_out = out.std[:, ~hole].mean(dim=1)
        row["std_hole"] = float(std_in.mean())
        row["std_outside"] = float(std_out.mean())
        row["hole_gt_outside"] = float((std_in > std_out).float().mean())
    return row


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--method", choices=("mala", "ula", "hmc"), default="hmc")
    parser.add_argument("--leapfrog-steps", type=int, default=5, help="HMC only")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=25)
    parser.add_argument("--burn-in", type=int, help="default: the sampler's for the method")
    parser.add_argument("--thinning", type=int, help="default: the sampler's for the method")
    parser.add_argument("--map-iter", type=int, default=100)
    parser.add_argument("--inpainting-sigma", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preconditioner", choices=("diagonal", "laplace"), default="diagonal")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--no-jitter", dest="jitter", action="store_false")
    parser.add_argument("--no-quantize", dest="quantize", action="store_false")
    parser.add_argument(
        "--truth",
        choices=("mnist", "glow"),
        default="mnist",
        help="ground truths: MNIST test digits, or 8-bit images drawn from the Glow itself",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*torch.lu.*")
    glow = load_pretrained("mnist32")
    if args.truth == "glow":  # the prior is then exactly right: a check of the sampler alone
        x = glow.discretize(glow.sample(args.images, generator=torch.Generator().manual_seed(0)))
    else:
        test_set = mnist("test")
        x = torch.stack([test_set[i] for i in range(args.images)])
    results = {}
    for task in args.tasks:
        physics = make_physics(task, glow.img_size, args.inpainting_sigma)
        torch.manual_seed(0)
        y = physics(x)
        sampler = GlowPosteriorSampler(
            glow,
            method=args.method,
            leapfrog_steps=args.leapfrog_steps,
            chains=args.chains,
            draws=args.draws,
            burn_in=args.burn_in,
            thinning=args.thinning,
            map_iter=args.map_iter,
            preconditioner=args.preconditioner,
            temperature=args.temperature,
            jitter=args.jitter,
            quantize=args.quantize,
        )
        started = time.perf_counter()
        out = sampler.sample(y, physics)
        row = figures(out, x, task, quantized=args.quantize)
        row["seconds_total"] = time.perf_counter() - started
        results[task] = row
        method = args.method
        if method == "hmc":
            method += f" ({args.leapfrog_steps} leapfrog)"
        print(
            f"== {task}: {args.images} images, {out.samples.shape[0]} samples each, "
            f"sigma={out.sigma:.4g}, {method}, {args.preconditioner} preconditioner, "
            f"T={args.temperature}, quantize={args.quantize}, truth={args.truth}, "
            f"threads={args.threads}"
        )
        for key, value in row.items():
            print(f"  {key:20s} {value:10.4f}")
    return results


if __name__ == "__main__":
    main()
