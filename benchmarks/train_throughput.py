"""Training throughput: our Glow against a plain normflows MultiscaleFlow of the same shape.

Three variants train side by side in one process, on the same batches and the same
dequantisation noise, with Adam (lr 1e-3) on the bits/dim loss:

- ``ours``: :class:`~deepinv_glowprior.glow.Glow`, step = ``bits_per_dim(x, noise).mean()``,
  backward, ``Adam.step``.
- ``normflows``: ``nf.MultiscaleFlow`` built as in normflows' Glow example (per level ``K``
  ``GlowBlock`` s then a ``Squeeze``, ``Merge`` between levels, one ``DiagGaussian`` per level,
  ``Shift(-0.5)`` as the input transform) with our ``GlowBlock`` arguments (exp scale map,
  channel split, zero-initialised coupling output, LU 1x1 convolutions); unconditional, fixed
  N(0, I) latents (``trainable=False``), no soft clamp of the coupling log-scale; the same
  uniform dequantisation and bits/dim.
- ``ours-train-loop``: the body of :func:`deepinv_glowprior.train.fit`, with the functions it
  uses (``batch_indices``, ``_stack``, ``_BitsPerDim``, ``_make_optimizer``: index the dataset,
  stack, seeded noise, loss, backward, gradient clipping, finiteness check, Adam, LR schedule),
  with the convolution weights in the layout ``fit`` trains in (``TrainConfig.memory_format``:
  channels-last on CPU); checkpoints, logging and evaluation are left out (they run every few
  hundred steps).
- ``normflows-channels-last``: the normflows model with its weights in channels-last layout, to
  show how much of the difference is the layout alone.

After warm-up steps, each round times one full step of every variant, in alternating order
(A B C, C B A, ...), so that machine load hits all equally. Reported: median images/s per
variant, by wall time and by CPU time of the process (less sensitive to the load of a shared
machine), and the ratio to normflows as the median over rounds of the paired ratio.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --out docs/results/train_throughput.csv
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import normflows as nf
import torch
from torch import nn

from deepinv_glowprior import Glow
from deepinv_glowprior.glow import GlowConfig
from deepinv_glowprior.train import (
    TrainConfig,
    _BitsPerDim,
    _make_optimizer,
    _stack,
    batch_indices,
)

VARIANTS = ("ours", "normflows", "ours-train-loop", "normflows-channels-last")


def build_normflows(config: GlowConfig) -> nf.MultiscaleFlow:
    """A normflows ``MultiscaleFlow`` with the squeeze/split structure and blocks of our Glow.

    Index 0 is the coarsest level, as in normflows' example: level ``i`` has ``C * 2**(L + 1 - i)``
    channels at side ``H / 2**(L - i)``; each finer level splits half of them into its latent.
    """
    channels, height, width = config.img_size
    levels = config.levels
    q0, merges, flows = [], [], []
    for i in range(levels):
        scale = 2 ** (levels - i)
        level_channels = channels * 2 ** (levels + 1 - i)
        blocks: list[nn.Module] = [
            nf.flows.GlowBlock(
                level_channels,
                config.hidden_channels,
                scale=config.coupling == "affine",
                scale_map="exp",
                split_mode="channel",
                init_zeros=True,
                use_lu=config.use_lu,
            )
            for _ in range(config.steps)
        ]
        flows.append([*blocks, nf.flows.Squeeze()])
        latent_channels = level_channels // 2 if i > 0 else level_channels
        if i > 0:
            merges.append(nf.flows.Merge())
        q0.append(
            nf.distributions.DiagGaussian(
                (latent_channels, height // scale, width // scale), trainable=False
            )
        )
    return nf.MultiscaleFlow(q0, flows, merges, transform=nf.transforms.Shift(), class_cond=False)


def _dequantize(x: torch.Tensor, noise: torch.Tensor, n_bits: int) -> torch.Tensor:
    n_bins = 2**n_bits
    return (torch.floor(x * n_bins).clamp_(0, n_bins - 1) + noise) / n_bins


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="flow steps per level")
    parser.add_argument("--hidden-channels", type=int, default=128)
    parser.add_argument("--data", choices=("mnist", "random"), default="mnist")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results/train_throughput.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*torch.lu is deprecated")  # normflows' LU conv
    load_before = os.getloadavg()[0]

    config = GlowConfig(
        img_size=(1, 32, 32),
        levels=args.levels,
        steps=args.steps,
        hidden_channels=args.hidden_channels,
    )
    if args.data == "mnist":
        from deepinv_glowprior.data import mnist

        dataset = mnist("train")
    else:
        generator = torch.Generator().manual_seed(args.seed)
        dataset = torch.rand((64 * args.batch_size, *config.img_size), generator=generator)
    train_config = TrainConfig(
        batch_size=args.batch_size, lr=1e-3, seed=args.seed, device="cpu", progress=False
    )
    n = math.prod(config.img_size)

    torch.manual_seed(args.seed)
    ours = Glow(config=config).train()
    loop_glow = copy.deepcopy(ours)
    torch.manual_seed(args.seed)
    flow = build_normflows(config).train()
    flow_channels_last = copy.deepcopy(flow).to(memory_format=torch.channels_last)
    parameters = {"ours": _count(ours), "normflows": _count(flow)}
    parameters["ours-train-loop"] = parameters["ours"]
    parameters["normflows-channels-last"] = parameters["normflows"]

    ours_optimizer = torch.optim.Adam(ours.parameters(), lr=train_config.lr)
    loop_glow.to(memory_format=train_config.memory_format(torch.device("cpu")))
    loop_optimizer, loop_scheduler = _make_optimizer(loop_glow, train_config)
    loop_loss = _BitsPerDim(loop_glow)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and dequantisation noise fit() uses at ``step``."""
        indices = batch_indices(step, len(dataset), args.batch_size, args.seed)
        x = _stack(dataset, indices, torch.device("cpu"))
        generator = torch.Generator().manual_seed((args.seed * 1_000_003 + step) * 1009)
        return x, torch.rand(x.shape, generator=generator)

    def step_ours(step: int, x: torch.Tensor, noise: torch.Tensor) -> float:
        loss = ours.bits_per_dim(x, noise=noise).mean()
        ours_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ours_optimizer.step()
        return float(loss.detach())

    def normflows_step(
        model: nf.MultiscaleFlow,
    ) -> Callable[[int, torch.Tensor, torch.Tensor], float]:
        optimizer = torch.optim.Adam(model.parameters(), lr=train_config.lr)

        def step_normflows(step: int, x: torch.Tensor, noise: torch.Tensor) -> float:
            x_continuous = _dequantize(x, noise, config.n_bits)
            loss = model.forward_kld(x_continuous) / (n * math.log(2)) + config.n_bits
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        return step_normflows

    def step_loop(step: int, x: torch.Tensor, noise: torch.Tensor) -> float:
        # fit()'s loop body; x and noise are recomputed here as fit() does.
        indices = batch_indices(step, len(dataset), args.batch_size, args.seed)
        x = _stack(dataset, indices, torch.device("cpu"))
        generator = torch.Generator().manual_seed((args.seed * 1_000_003 + step) * 1009)
        noise = torch.rand((args.batch_size, *config.img_size), generator=generator)
        loss = loop_loss(x, noise)
        loop_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(loop_glow.parameters(), train_config.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            loop_optimizer.step()
        loop_scheduler.step()
        return float(loss.detach())

    steps: dict[str, Callable[[int, torch.Tensor, torch.Tensor], float]] = {
        "ours": step_ours,
        "normflows": normflows_step(flow),
        "ours-train-loop": step_loop,
        "normflows-channels-last": normflows_step(flow_channels_last),
    }
    # ActNorm's data-dependent initialisation on the first batch, as fit() does.
    x0, noise0 = batch(0)
    ours.initialize(x0)
    loop_glow.initialize(x0)
    with torch.no_grad():
        flow.log_prob(_dequantize(x0, noise0, config.n_bits), None)
        flow_channels_last.log_prob(_dequantize(x0, noise0, config.n_bits), None)

    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    losses: dict[str, list[float]] = {name: [] for name in VARIANTS}
    started = time.perf_counter()
    for step in range(args.warmup + args.rounds):
        x, noise = batch(step)
        order = VARIANTS if step % 2 == 0 else VARIANTS[::-1]
        for name in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            loss = steps[name](step, x, noise)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            losses[name].append(loss)
            if step >= args.warmup:
                seconds[name].append(elapsed)
                cpu_seconds[name].append(cpu)
        print(
            f"step {step:3d} "
            + "  ".join(f"{name} {losses[name][-1]:.3f} bpd" for name in VARIANTS)
            + ("" if step < args.warmup else "  (timed)"),
            flush=True,
        )
    load_after = os.getloadavg()[0]

    def paired_ratio(times: dict[str, list[float]], name: str) -> float:
        """Median over rounds of (normflows step time / this variant's step time)."""
        pairs = zip(times[name], times["normflows"], strict=True)
        return round(statistics.median(ref / own for own, ref in pairs), 3)

    rows = []
    for name in VARIANTS:
        median_seconds = statistics.median(seconds[name])
        rows.append(
            {
                "model": name,
                "parameters": parameters[name],
                "images_per_s": round(args.batch_size / median_seconds, 2),
                "ratio_to_normflows": paired_ratio(seconds, name),
                "cpu_images_per_s": round(
                    args.batch_size / statistics.median(cpu_seconds[name]), 2
                ),
                "cpu_ratio_to_normflows": paired_ratio(cpu_seconds, name),
                "seconds_per_step": round(median_seconds, 3),
                "first_bpd": round(losses[name][0], 3),
                "last_bpd": round(losses[name][-1], 3),
                "timed_steps": len(seconds[name]),
                "batch_size": args.batch_size,
                "threads": args.threads,
                "load_before": round(load_before, 2),
                "load_after": round(load_after, 2),
            }
        )
    print(
        f"\n{args.rounds} rounds in {time.perf_counter() - started:.0f} s, load {load_before:.2f}"
        f" -> {load_after:.2f}, {args.threads} thread(s), batch {args.batch_size}, {args.data}"
    )
    for row in rows:
        print(
            f"{row['model']:>23}: {row['images_per_s']:6.1f} images/s "
            f"(x{row['ratio_to_normflows']:.3f} of normflows), per CPU second "
            f"{row['cpu_images_per_s']:6.1f} (x{row['cpu_ratio_to_normflows']:.3f}), "
            f"{row['parameters']} parameters"
        )
    if parameters["ours"] != parameters["normflows"]:
        print("warning: the parameter counts differ; the architectures are not the same.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"table: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
