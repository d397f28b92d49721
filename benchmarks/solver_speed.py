"""Solver speed: the paper's protocol, a CSGM-style Adam loop and our default, on one Glow.

For each task and method, one worker process reconstructs the same MNIST test digits from the
same measurements and reports mean PSNR, wall time, batched Glow evaluations, divergences (samples
whose result was NaN) and the memory of the solve. The parent prints the table with the ratios
ours / reference and ours / Adam, and writes it to CSV.

Wall times on a shared machine move with its load; ``image_evaluations`` (Glow forward and
backward passes of one image) is the load-independent measure of work.

Memory: ``solve_peak_mb`` is the peak resident set size (RSS) of the worker during the solve
minus its RSS just before it. The kernel keeps the exact peak (``VmHWM`` in
``/proc/self/status``); it is reset to the current RSS just before the solve (``clear_refs``),
so short-lived buffers (e.g. the native convolutions' unfolded inputs, which are mapped and
unmapped within one operator) count in full. Where the kernel refuses the reset, a thread
samples the RSS every 2 ms instead and can miss such spikes. Before the baseline is read, one
Glow decode and backward pass has run (so that lazily loaded library code is not counted) and
``malloc_trim`` has returned freed heap to the OS (so that reused heap does not hide the
solve's allocations). It is what the solver itself needs on top of the model and the data;
``memory_vs_*`` are its ratios. ``rss_before_mb`` is the baseline (imports, model, data: the
process-wide peak, ``ru_maxrss``, is dominated by it and does not separate the methods).

glibc raises its mmap threshold to the size of each large block freed, so later blocks of that
size come from the heap, whose freed memory stays resident: the peak then also counts heap the
allocator kept, which depends on the order of the allocations. ``--malloc-mmap-threshold 65536``
fixes the threshold (``MALLOC_MMAP_THRESHOLD_`` in the workers), so every block above 64 KiB is
returned to the OS when freed and the peak is the memory the solver holds. It slows the solves
(each large block is mapped afresh), so take times from a run without it.

Methods:

- ``paper``: the reference protocol as the paper's code runs it: ``torch.optim.LBFGS`` (lr 0.1,
  20 iterations per step, 30 steps, no line search, history 100) on the batch's summed loss, one
  coupled problem, z0 = 0; unguarded, so it can diverge.
- ``paper-guarded``: :meth:`GlowReconstructor.from_preset` ``"paper"``: the same step rule,
  per-sample, with steps to exploding objectives rejected.
- ``adam``: CSGM-style Adam, lr 1e-2, up to 2500 steps, stopping at tol.
- ``ours``: :class:`GlowReconstructor` defaults.
- ``ours-fast``: the defaults with ``tol=1e-4`` (a sample stops once an iteration lowers its
  objective by less than 1e-4 times max(|objective|, 1), instead of 1e-6): less final quality
  for less time.

Usage::

    python benchmarks/solver_speed.py --num-images 32 --out benchmarks/results/solver_speed.csv
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import math
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

TASKS = {
    "cs0.1": ("cs", {"ratio": 0.1}),
    "cs0.25": ("cs", {"ratio": 0.25}),
    "cs0.5": ("cs", {"ratio": 0.5}),
    "denoise0.1": ("denoising", {"sigma": 0.1}),
    "hole": ("inpainting", {"side_fraction": 0.3}),
}
PAPER_TASK = {"cs": "cs", "denoising": "denoising", "inpainting": "inpainting"}
METHODS = ("paper", "paper-guarded", "adam", "ours", "ours-fast")
FAST_TOL = 1e-4
# One fixed gamma per task for every method, so only the solver differs (the paper used 0 for
# CS and swept gamma for denoising; sigma^2 is near the best of our sweep).
GAMMA = {"cs": 0.0, "denoising": 0.01, "inpainting": 0.0}


def _status_mb(field: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Set the kernel's RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _release_free_heap() -> None:
    """Return freed heap to the OS (glibc), so that the RSS baseline is what is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakRSS:
    """Context manager measuring ``peak - before``: the memory the enclosed code added at its
    peak, in MB. Exact from the kernel's high-water mark where it can be reset, else sampled
    every ``interval`` seconds by a background thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.before = self.peak = 0.0
        self.exact = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _status_mb("VmRSS"))

    def __enter__(self) -> PeakRSS:
        _release_free_heap()
        self.before = self.peak = _status_mb("VmRSS")
        self.exact = _reset_peak_rss()
        if not self.exact:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.exact:
            self.peak = _status_mb("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _status_mb("VmRSS"))

    @property
    def added_mb(self) -> float:
        return self.peak - self.before


def _torch_lbfgs_coupled(glow, y, physics, gamma):
    """The paper's loop: one torch LBFGS over the whole batch; returns (x, evaluations)."""
    import torch

    z = torch.zeros(y.shape[0], glow.latent_dim, requires_grad=True)
    optimizer = torch.optim.LBFGS([z], lr=0.1, max_iter=20, history_size=100)
    evaluations = 0

    def closure():
        nonlocal evaluations
        evaluations += 1
        optimizer.zero_grad()
        x = glow.decode(z)
        loss = (physics.A(x) - y).pow(2).sum() + gamma * z.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        for _ in range(30):
            optimizer.step(closure)
    with torch.no_grad():
        x = glow.decode(z)
    return x, evaluations


def load_glow_and_digits(num_images: int, first_image: int = 0):
    """The shipped ``mnist32`` Glow (frozen) and ``num_images`` MNIST test digits from index
    ``first_image`` on (the first ones by default)."""
    import torch

    from deepinv_glowprior import load_pretrained
    from deepinv_glowprior.data import mnist

    test = mnist("test")
    if num_images < 1 or first_image < 0 or first_image + num_images > len(test):
        raise ValueError(
            f"Digits {first_image} to {first_image + num_images - 1} are not all in the "
            f"{len(test)} MNIST test digits; choose num_images >= 1 and first_image >= 0 that fit."
        )
    glow = load_pretrained("mnist32").requires_grad_(False)
    return glow, torch.stack([test[i] for i in range(first_image, first_image + num_images)])


def measure(task: str, glow, x):
    """``(kind, physics, y)``: the physics of ``task`` (seeded) and its measurement of ``x``."""
    import torch

    from deepinv_glowprior.tasks import make_physics

    kind, settings = TASKS[task]
    physics = make_physics(kind, glow.img_size, seed=0, **settings)
    torch.manual_seed(0)
    return kind, physics, physics(x)


def run_worker(task: str, method: str, num_images: int, threads: int) -> dict:
    import deepinv as dinv
    import torch

    from deepinv_glowprior import GlowReconstructor

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    glow, x = load_glow_and_digits(num_images)
    kind, physics, y = measure(task, glow, x)
    gamma = GAMMA[kind]
    with torch.enable_grad():  # warm-up: load the code paths of a decode and its backward
        z = torch.zeros(1, glow.latent_dim, requires_grad=True)
        glow.decode(z).sum().backward()
    del z
    with PeakRSS() as memory:
        start = time.perf_counter()
        if method == "paper":
            try:
                x_hat, evaluations = _torch_lbfgs_coupled(glow, y, physics, gamma)
            except (RuntimeError, ValueError):  # NaN latents: the whole coupled batch is lost
                x_hat, evaluations = torch.full_like(x, math.nan), -1
            sample_evaluations = evaluations * num_images
        else:
            if method == "paper-guarded":
                model = GlowReconstructor.from_preset(
                    glow, "paper", task=PAPER_TASK[kind], gamma=gamma
                )
            elif method == "adam":
                model = GlowReconstructor(
                    glow, gamma=gamma, optimizer="adam", lr=1e-2, max_iter=2500
                )
            elif method == "ours-fast":
                model = GlowReconstructor(glow, gamma=gamma, tol=FAST_TOL)
            else:
                model = GlowReconstructor(glow, gamma=gamma)
            solution = model.solve(y, physics)
            x_hat, evaluations = solution.x, solution.evaluations
            sample_evaluations = solution.sample_evaluations
        seconds = time.perf_counter() - start
    diverged = ~torch.isfinite(x_hat.flatten(1)).all(dim=1)
    x_hat = torch.nan_to_num(x_hat, nan=0.0).clamp(0, 1)
    psnr = dinv.metric.PSNR()(x_hat, x)
    return {
        "task": task,
        "method": method,
        "images": num_images,
        "psnr": float(psnr[~diverged].mean()) if bool((~diverged).any()) else math.nan,
        "diverged": int(diverged.sum()),
        "seconds": seconds,
        "evaluations": evaluations,
        "image_evaluations": sample_evaluations,
        "solve_peak_mb": memory.added_mb,
        "rss_before_mb": memory.before,
        "peak_exact": memory.exact,
    }


def _ratio_rows(rows: list[dict]) -> list[dict]:
    by_key = {(row["task"], row["method"]): row for row in rows}
    for row in rows:
        if not row["method"].startswith("ours"):
            continue
        for reference in ("paper-guarded", "adam"):
            other = by_key.get((row["task"], reference))
            if other:
                row[f"time_vs_{reference}"] = row["seconds"] / other["seconds"]
                row[f"work_vs_{reference}"] = row["image_evaluations"] / other["image_evaluations"]
                row[f"psnr_minus_{reference}"] = row["psnr"] - other["psnr"]
                row[f"memory_vs_{reference}"] = row["solve_peak_mb"] / other["solve_peak_mb"]
    return rows


def _rounded(value):
    return float(f"{value:.4g}") if isinstance(value, float) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"subset of {list(TASKS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {METHODS}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=None,
        metavar="BYTES",
        help="fix glibc's mmap threshold in the workers (memory runs; slower); default: dynamic",
    )
    parser.add_argument("--out", default="benchmarks/results/solver_speed.csv")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(*args.worker, args.num_images, args.threads)))
        return 0
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    unknown = sorted(set(tasks) - set(TASKS)) + sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown task or method {unknown}; tasks {list(TASKS)}, methods {METHODS}")
    if args.malloc_mmap_threshold is not None and args.malloc_mmap_threshold <= 0:
        parser.error("--malloc-mmap-threshold must be a positive number of bytes")
    environment = dict(os.environ)
    if args.malloc_mmap_threshold is not None:
        environment["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    rows = []
    for task in tasks:
        for method in methods:
            command = [sys.executable, __file__, "--worker", task, method]
            command += ["--num-images", str(args.num_images), "--threads", str(args.threads)]
            result = subprocess.run(command, capture_output=True, text=True, env=environment)
            if result.returncode != 0:
                print(f"{task} {method} failed:\n{result.stderr[-2000:]}", flush=True)
                continue
            row = json.loads(result.stdout.strip().splitlines()[-1])
            row["malloc_mmap_threshold"] = args.malloc_mmap_threshold or "dynamic"
            rows.append(row)
            print(
                f"{task:>10} {method:>13}: PSNR {row['psnr']:6.2f} dB  {row['seconds']:7.1f} s  "
                f"{row['evaluations']:5d} evals ({row['image_evaluations']:6d} image passes)  "
                f"diverged {row['diverged']}  "
                f"solve +{row['solve_peak_mb']:.1f} MB over {row['rss_before_mb']:.0f} MB",
                flush=True,
            )
    rows = _ratio_rows(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) + sorted({key for row in rows for key in row} - set(rows[0]))
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: _rounded(v) for k, v in row.items()} for row in rows])
    for row in rows:
        if row["method"].startswith("ours"):
            ratios = {k: f"{v:.3g}" for k, v in row.items() if "_vs_" in k or "_minus_" in k}
            print(f"{row['task']:>10} {row['method']} vs reference/Adam: {ratios}")
    print(f"table: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
