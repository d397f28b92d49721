"""Posterior sampling with the shipped ``mnist32`` Glow: the measured goals of issue #10.

For denoising (sigma = 0.1), compressed sensing (m/n = 0.25) and centre-hole inpainting on MNIST
test digits, it prints the MAP and posterior-mean PSNR, the coverage of pixelwise 90% credible
intervals, the Spearman correlation of the std map with the absolute error, std inside/outside
the hole, acceptance, split R-hat and the cost (samples per second)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/posterior.py --images 16

Coverage is given twice. ``raw``: the interval contains the 8-bit ground truth. ``bin``: the
interval meets the truth's quantisation bin [k/256, (k+1)/256), the set of continuous images the
Glow was trained on for that truth (it models dequantised data, so for a pixel at 0 its posterior
lies inside (0, 1/256) and a raw interval can never contain 0 exactly).
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


def figures(out, x: torch.Tensor, task: str) -> dict[str, float]:
    """The goal figures of one task from a :class:`PosteriorSamples` and the ground truth."""
    psnr = dinv.metric.PSNR()
    lower, upper = out.interval(0.9)
    inside = (x >= lower) & (x <= upper)
    bins = torch.floor(x * 256).clamp(0, 255) / 256
    inside_bin = (upper >= bins) & (lower <= bins + 1 / 256)
    foreground = x > 0
    error = (out.mean - x).abs()
    rhos = [
        spearmanr(out.std[i].flatten(), error[i].flatten())[0]
        for i in range(len(x))
        if float(out.std[i].max()) > 0
    ]
    row = {
        "psnr_map": float(psnr(out.map, x).mean()),
        "psnr_mean": float(psnr(out.mean, x).mean()),
        "coverage_raw": float(inside.float().mean()),
        "coverage_bin": float(inside_bin.float().mean()),
        "coverage_raw_fg": float(inside[foreground].float().mean()),
        "coverage_bin_fg": float(inside_bin[foreground].float().mean()),
        "spearman": float(torch.tensor(rhos).nanmean()),
        "acceptance": float(out.acceptance.mean()),
        "rhat_energy_median": float(out.rhat.median()),
        "rhat_pixel_median": float(out.rhat_pixels.nanmedian()),
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
    parser.add_argument("--method", choices=("mala", "ula"), default="mala")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=25)
    parser.add_argument("--burn-in", type=int, default=100)
    parser.add_argument("--thinning", type=int, default=2)
    parser.add_argument("--map-iter", type=int, default=100)
    parser.add_argument("--inpainting-sigma", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preconditioner", choices=("diagonal", "laplace"), default="diagonal")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*torch.lu.*")
    glow = load_pretrained("mnist32")
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
            chains=args.chains,
            draws=args.draws,
            burn_in=args.burn_in,
            thinning=args.thinning,
            map_iter=args.map_iter,
            preconditioner=args.preconditioner,
        )
        started = time.perf_counter()
        out = sampler.sample(y, physics)
        row = figures(out, x, task)
        row["seconds_total"] = time.perf_counter() - started
        results[task] = row
        print(
            f"== {task}: {args.images} images, {out.samples.shape[0]} samples each, "
            f"sigma={out.sigma:.4g}, {args.method}, {args.preconditioner} preconditioner, "
            f"threads={args.threads}"
        )
        for key, value in row.items():
            print(f"  {key:20s} {value:10.4f}")
    return results


if __name__ == "__main__":
    main()
