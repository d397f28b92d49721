"""Try GlowReconstructor settings on the tasks of ``solver_speed.py``: PSNR against work.

Each setting is a JSON object of keyword arguments for :class:`GlowReconstructor` (on top of the
task's fixed ``gamma``); each is run on the same MNIST test digits and measurements, in one
process, and the mean PSNR, the Glow passes per image and the wall time are printed. For
example, the stopping tolerances compared in the docs::

    OMP_NUM_THREADS=1 python benchmarks/solver_settings.py --num-images 8 \\
        --settings '{"default": {}, "tol1e-5": {"tol": 1e-5}, "tol1e-4": {"tol": 1e-4}}'

``--first-image`` starts the digits past the first ones (held-out runs). ``--misfits`` also
lists the digits whose residual ends above :math:`3 m\\sigma^2`, the samples that
``retry_misfit`` solves again; for example, with and without the retry::

    OMP_NUM_THREADS=1 python benchmarks/solver_settings.py --num-images 32 --tasks cs0.25,cs0.5 \\
        --misfits --settings '{"no-retry": {"retry_misfit": null}, "default": {}}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from solver_speed import GAMMA, TASKS, load_glow_and_digits, measure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument(
        "--first-image", type=int, default=0, help="index of the first test digit (held-out runs)"
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"subset of {list(TASKS)}")
    parser.add_argument(
        "--settings", default='{"default": {}}', help="JSON: name -> GlowReconstructor kwargs"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--misfits",
        action="store_true",
        help="list the digits whose residual ends above 3 m sigma^2 (retry_misfit's default)",
    )
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    if unknown := sorted(set(tasks) - set(TASKS)):
        parser.error(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as err:
        parser.error(f"--settings is not valid JSON: {err}")
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        parser.error('--settings must map names to keyword dicts, e.g. \'{"a": {"tol": 1e-4}}\'')

    import deepinv as dinv
    import torch

    from deepinv_glowprior import GlowReconstructor
    from deepinv_glowprior.reconstructor import noise_sigma

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    glow, x = load_glow_and_digits(args.num_images, args.first_image)
    psnr = dinv.metric.PSNR()
    for task in tasks:
        kind, physics, y = measure(task, glow, x)
        for name, options in settings.items():
            model = GlowReconstructor(glow, gamma=GAMMA[kind], **options)
            started = time.perf_counter()
            solution = model.solve(y, physics)
            seconds = time.perf_counter() - started
            values = psnr(solution.x, x)
            print(
                f"{task:>10} {name:>12}: PSNR {float(values.mean()):7.3f} dB  "
                f"{solution.sample_evaluations / len(x):6.1f} passes/image  {seconds:6.1f} s",
                flush=True,
            )
            if args.misfits:
                print_misfits(
                    solution.residual / (y[0].numel() * noise_sigma(physics) ** 2),
                    values,
                    args.first_image,
                )
    return 0


def print_misfits(misfit, psnr_values, first_image: int = 0) -> None:
    """Each digit whose residual is above 3 m sigma^2 (the default ``retry_misfit``), with its
    PSNR, and the largest ratio among the others; digits by test-set index (the batch's rows
    from ``first_image`` on)."""
    above = (misfit > 3).nonzero().squeeze(1).tolist()
    for digit in above:
        print(
            f"{'':>24}digit {first_image + digit}: residual {float(misfit[digit]):.3g} "
            f"x m sigma^2, PSNR {float(psnr_values[digit]):.2f} dB"
        )
    rest = [float(value) for i, value in enumerate(misfit) if i not in above]
    if rest:
        print(f"{'':>24}other digits: residual at most {max(rest):.3g} x m sigma^2", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
