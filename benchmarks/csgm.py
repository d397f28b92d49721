"""CSGM (a DCGAN prior, Bora et al. 2017) on MNIST test digits: the GAN baseline of the paper.

Same digits, tasks and solver protocol as the Glow figures: the first ``--images`` test digits,
``deepinv_glowprior.tasks`` physics (matrix seed 0, noise drawn after ``torch.manual_seed(0)``),
:meth:`CSGMReconstructor.from_preset` ("paper": guarded L-BFGS from z = 0, plus random restarts).
The "projection" row fits G(z) to the clean image itself (y = x): an estimate (a lower bound, the
fit being non-convex) of the best PSNR the generator's range allows, i.e. its representation
error.

Run (one thread; about 20-30 minutes for the default settings on a shared 2-core CPU)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/csgm.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/csgm.py --restarts 1 10 --gamma 0 0.1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/csgm.py --split val --gamma 0 0.01 0.1 \\
        --only denoising inpainting  # tune gamma on validation digits
"""

from __future__ import annotations

import argparse
import time

import deepinv as dinv
import torch

from deepinv_glowprior.data import mnist
from deepinv_glowprior.dcgan import CSGMReconstructor, DCGANGenerator, load_pretrained_dcgan
from deepinv_glowprior.tasks import compressed_sensing, denoising, inpainting

IMG = (1, 32, 32)
TASKS = ("projection", "cs", "denoising", "inpainting")


def tasks(ratios: list[float], only: list[str]) -> list[tuple[str, str, dinv.physics.Physics]]:
    """(preset task, label, physics) of every setting measured."""
    settings = [("denoising", "projection (y = x)", denoising(0.0))] * ("projection" in only)
    if "cs" in only:
        settings += [("cs", f"CS m/n={r:g}", compressed_sensing(IMG, r, seed=0)) for r in ratios]
    if "denoising" in only:
        settings.append(("denoising", "denoising sigma=0.1", denoising(0.1)))
    if "inpainting" in only:
        settings.append(("inpainting", "inpainting centre hole 30%", inpainting(IMG)))
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dcgan_mnist32", help="shipped name or generator.pt")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--restarts", type=int, nargs="+", default=[10])
    parser.add_argument("--gamma", type=float, nargs="+", default=[0.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--split", default="test", choices=("test", "val"), help="val: tuning")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.model.endswith(".pt"):
        generator = DCGANGenerator.load(args.model)
    else:
        generator = load_pretrained_dcgan(args.model)
    digits = mnist(args.split)
    x = torch.stack([digits[i] for i in range(args.images)])
    psnr = dinv.metric.PSNR(max_pixel=1.0)
    print(f"CSGM, {args.model}, MNIST {args.split} digits 0..{args.images - 1}")
    print("PSNR dB: mean min max over the digits")
    for task, label, physics in tasks(args.ratios, args.only):
        torch.manual_seed(args.seed)
        y = physics(x)
        for restarts in args.restarts:
            for gamma in args.gamma:
                model = CSGMReconstructor.from_preset(
                    generator, task=task, restarts=restarts, gamma=gamma, seed=args.seed
                )
                started = time.perf_counter()
                with torch.no_grad():
                    values = psnr(model(y, physics), x)
                print(
                    f"{label:28s} restarts={restarts:<3d} gamma={gamma:<6g} "
                    f"{float(values.mean()):6.2f} {float(values.min()):6.2f} "
                    f"{float(values.max()):6.2f}   ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
