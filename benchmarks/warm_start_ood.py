"""What a warm start from total variation gives, on the Glow's own images and on others.

At compressed sensing with :math:`\\gamma = 0` and :math:`m < n`, every latent whose image fits
:math:`y` minimises the objective. A warm start from a reconstruction that already fits
:math:`y` is then nearly a minimiser itself, and the solve ends close to it: the result is that
reconstruction refined by the Glow, not the Glow's own answer from :math:`z = 0`. This script
measures how much that matters, per setting of the CS experiments (same seeds, same test and
validation images as ``glowprior benchmark cs``): TV (lambda chosen on the validation images by
``solver_curves.warm_start_lambda``: the best PSNR among the lambdas that start at least half of
them warm),
our default from :math:`z = 0`, and our default started from TV (``init=total_variation(lam)``),
with how many images start warm, TV's residual :math:`\\|A\\hat x - y\\|^2` over the noise energy
:math:`m\\sigma^2`, Glow passes per image and seconds, all in one process.

Run (one thread; about 15 minutes for the default settings)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/warm_start_ood.py \\
        --out docs/results/warm_start_ood.csv
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import deepinv as dinv
import torch
from solver_curves import warm_start_lambda

from deepinv_glowprior import GlowReconstructor, baselines, load_pretrained
from deepinv_glowprior.experiments import evaluation_images
from deepinv_glowprior.reconstructor import noise_sigma
from deepinv_glowprior.tasks import make_physics

#: (model, test set, m/n): the Glow's own kind of images, then faces it never saw.
SETTINGS = (
    ("mnist32", "mnist", 0.5),
    ("mnist32", "faces", 0.5),
    ("natural32", "natural", 0.1),
    ("natural32", "natural", 0.2),
    ("natural32", "natural", 0.5),
    ("natural32", "faces", 0.1),
    ("natural32", "faces", 0.2),
    ("natural32", "faces", 0.5),
)


def measure(glow, dataset: str, ratio: float, num_images: int, seed: int) -> dict:
    """TV, our default and our default started from TV on one CS setting."""
    channels = glow.img_size[0]
    test = evaluation_images(dataset, num_images, channels=channels)
    validation = evaluation_images(dataset, num_images, "val", channels=channels)
    physics = make_physics("cs", glow.img_size, seed=seed, ratio=ratio)
    torch.manual_seed(seed)  # as compare_methods draws the experiments' noise
    y = physics(test)
    psnr = dinv.metric.PSNR()
    lam, table = warm_start_lambda(physics, glow, validation, seed=seed)
    started = time.perf_counter()
    x_tv = baselines.total_variation(lam)(y, physics)
    tv_seconds = time.perf_counter() - started
    noise_energy = y[0].numel() * noise_sigma(physics) ** 2
    tv_residual = (physics.A(x_tv) - y).flatten(1).pow(2).sum(dim=1) / noise_energy
    row = {
        "dataset": dataset,
        "ratio": ratio,
        "images": num_images,
        "tv_lambda": lam,
        "tv_lambda_psnr_best": max(table, key=lambda entry: entry[1])[0],
        "validation_warm": next(warm for value, _, warm in table if value == lam),
        "tv_psnr": float(psnr(x_tv, test).mean()),
        "tv_seconds": tv_seconds,
        "tv_residual_over_noise_median": float(tv_residual.median()),
    }
    for name, init in (("zero", "zero"), ("warm", baselines.total_variation(lam))):
        model = GlowReconstructor(glow, init=init)
        started = time.perf_counter()
        solution = model.solve(y, physics)
        row[f"{name}_seconds"] = time.perf_counter() - started
        row[f"{name}_psnr"] = float(psnr(solution.x, test).mean())
        row[f"{name}_passes_per_image"] = solution.sample_evaluations / num_images
        if name == "warm":
            row["warm_images"] = int(solution.start.any(dim=1).sum())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=16, help="test images per setting")
    parser.add_argument("--seed", type=int, default=0, help="seed of matrices and noise")
    parser.add_argument("--out", default="warm_start_ood.csv", help="CSV of the table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, models = [], {}
    for model_name, dataset, ratio in SETTINGS:
        if model_name not in models:
            models[model_name] = load_pretrained(model_name)
        row = {
            "model": model_name,
            **measure(models[model_name], dataset, ratio, args.num_images, args.seed),
        }
        rows.append({k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in row.items()})
        print(
            f"{model_name} {dataset} m/n={ratio}: TV {row['tv_psnr']:.2f} dB (lambda "
            f"{row['tv_lambda']:g}, {row['validation_warm']} validation images warm, residual "
            f"{row['tv_residual_over_noise_median']:.2f} m sigma^2)"
            f" | ours {row['zero_psnr']:.2f} dB, {row['zero_seconds']:.0f} s | ours from TV "
            f"{row['warm_psnr']:.2f} dB, {row['warm_seconds']:.0f} s, "
            f"{row['warm_images']}/{args.num_images} warm",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
