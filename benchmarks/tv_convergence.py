"""How close the TV baseline gets to its minimiser: Chambolle-Pock (the current
:func:`~deepinv_glowprior.baselines.total_variation`) against the earlier solver, FISTA with an
inner TV prox (200 outer x 50 inner iterations, deepinv's ``TVPrior``).

For each setting, lambda is tuned with the current solver on the first ``--images`` validation
images (:func:`~deepinv_glowprior.baselines.tune_lambda`, :data:`LAMBDA_GRID`); then, at that
lambda and at a tenth of it, the same measurements are solved by both solvers at their default
iteration counts and at ten times as many. It prints mean PSNR, the TV objective
:math:`\\tfrac12\\|A\\hat x - y\\|^2 + \\lambda \\mathrm{TV}(\\hat x)` of the clamped output and the
seconds of each solve, so the ratios compare runs of the same process.

Run (one thread, about 3 minutes)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tv_convergence.py
"""

from __future__ import annotations

import argparse
import time

import deepinv as dinv
import torch

from deepinv_glowprior import baselines
from deepinv_glowprior.experiments import evaluation_images
from deepinv_glowprior.tasks import make_physics

SETTINGS = {
    "mnist cs 0.1": ("mnist", "cs", {"ratio": 0.1}),
    "mnist cs 0.2": ("mnist", "cs", {"ratio": 0.2}),
    "mnist cs 0.5": ("mnist", "cs", {"ratio": 0.5}),
    "mnist denoising 0.1": ("mnist", "denoising", {"sigma": 0.1}),
    "mnist hole": ("mnist", "inpainting", {}),
    "natural cs 0.2": ("natural", "cs", {"ratio": 0.2}),
}


def earlier_solver(lam: float, max_iter: int = 200) -> baselines.VariationalReconstructor:
    """The TV baseline before the primal-dual solver: FISTA, inner prox of 50 iterations."""
    prior = dinv.optim.prior.TVPrior(def_crit=0.0, n_it_max=50)
    return baselines.VariationalReconstructor(prior, lam, max_iter=max_iter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4, help="validation images per setting")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset")
    args = parser.parse_args()
    torch.set_num_threads(1)
    psnr, tv = dinv.metric.PSNR(max_pixel=1.0), dinv.optim.prior.TVPrior()
    print("setting | lambda | solver | iterations | PSNR | objective | seconds")
    for name in args.settings.split(","):
        dataset, task, options = SETTINGS[name]
        x = evaluation_images(dataset, args.images, "val", 3 if dataset == "natural" else 1)
        physics = make_physics(task, tuple(x.shape[1:]), **options)
        best, _ = baselines.tune_lambda(baselines.total_variation, physics, x)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            y = physics(x)
        for lam in (best, best / 10):
            for solver, factory, default in (
                ("primal-dual", baselines.total_variation, 300),
                ("FISTA+inner", earlier_solver, 200),
            ):
                for iterations in (default, 10 * default):
                    start = time.perf_counter()
                    x_hat = factory(lam, max_iter=iterations)(y, physics)
                    seconds = time.perf_counter() - start
                    misfit = 0.5 * (physics.A(x_hat) - y).pow(2).flatten(1).sum(1)
                    objective = float((misfit + lam * tv.fn(x_hat)).mean())
                    print(
                        f"{name} | {lam:g} | {solver} | {iterations} | "
                        f"{float(psnr(x_hat, x).mean()):.2f} | {objective:.4f} | {seconds:.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
