"""Where a latent-space solve spends its time: one Glow decode + backward, profiled by operator.

Every solver iteration costs one decode of the batch's latents and one backward pass; this script
profiles that unit on a shipped Glow and prints the share of convolutions, of the 1x1
convolutions' LU algebra and of everything else, with the kernel choices of
:mod:`deepinv_glowprior.batch_invariance`: oneDNN in chunks of at most 15 samples on
channels-last (NHWC) weights (what ``GlowReconstructor(batch_invariant=True)``, the default,
solves with where the probe finds it batch-invariant), the same chunks on the default (NCHW)
weights, the native kernels (its fallback), and PyTorch's default kernels (oneDNN on the whole
batch, and NNPACK from 16 samples on; not batch-invariant).

Usage::

    python benchmarks/profile_decode.py --batch 8 --repeats 5

Each line also gives the median time of ``repeats`` passes without the profiler, whose cost per
operator hides part of the difference between the two layouts; the next line is their ratio.
These rows recompute each 1x1 convolution's inverse at every decode; the solvers compute it once
per solve (:meth:`~deepinv_glowprior.glow.Glow.cached_1x1_inverses`). The last line is what that
saves: the median time of passes in NHWC chunks with the cache over those without, in
alternating blocks so that the machine's drifts reach both. It saves most where a call decodes
few latents (``--batch 1``: one image and the copy that keeps it company in its chunk).

``--compile`` adds one more line: the same passes (NHWC chunks, cached inverses) with the decode
compiled by ``torch.compile`` (inductor, static shapes) over the eager ones, in alternating
blocks, with the seconds of the first compiled pass (the compilation) and the largest difference
between the two gradients, relative to their largest entry (a solve's path follows the last
bits).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from deepinv_glowprior import load_pretrained
from deepinv_glowprior.batch_invariance import (
    InvariantEvaluator,
    batch_invariant_kernels,
    channels_last_weights,
    onednn_chunks_are_invariant,
)

# Operator-name prefixes (after "aten::"); the LU group is the 1x1 convolutions' weight algebra.
GROUPS = {
    "convolutions": (
        "_slow_conv2d",
        "mkldnn_convolution",
        "_nnpack",
        "convolution",
        "_convolution",
        "conv2d",
    ),
    "1x1-conv LU algebra": (
        "linalg_lu",
        "lu_unpack",
        "_lu_with_info",
        "linalg_inv",
        "inverse",
        "mm",
        "tril",
        "triu",
        "linalg_solve",
    ),
}


def _decode_and_backward(decode, z: torch.Tensor) -> torch.Tensor:
    """One pass, the unit a solver iteration pays; returns ``z``'s gradient."""
    z.grad = None
    decode(z).pow(2).sum().backward()
    return z.grad


def _alternating_medians(
    variants: dict[object, tuple[Callable[[], contextlib.AbstractContextManager], Callable]],
    z: torch.Tensor,
    repeats: int,
    block: int,
) -> dict[object, float]:
    """Median seconds of a pass of each ``decode`` of ``variants`` (``key: (context, decode)``):
    blocks of ``block + 1`` passes of each in turn, each block inside its own ``context()``,
    until each has ``repeats`` timed passes; a block's first pass is left out, so one-off work
    (computing a cache, compiling) is not timed. Alternating lets the machine's drifts reach
    every variant."""
    seconds: dict[object, list[float]] = {key: [] for key in variants}
    while min(len(times) for times in seconds.values()) < repeats:
        for key, (context, decode) in variants.items():
            with context():
                for index in range(block + 1):
                    started = time.perf_counter()
                    _decode_and_backward(decode, z)
                    if index:
                        seconds[key].append(time.perf_counter() - started)
    return {key: statistics.median(times) for key, times in seconds.items()}


def _profile(decode, z: torch.Tensor, repeats: int) -> tuple[dict[str, float], float, float]:
    """Shares of the operator groups, seconds per step under the profiler, and the median
    seconds per step without it (the profiler's per-operator cost blurs small differences)."""

    for _ in range(2):
        _decode_and_backward(decode, z)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            _decode_and_backward(decode, z)
    seconds = (time.perf_counter() - started) / repeats
    plain = []
    for _ in range(repeats):
        started = time.perf_counter()
        _decode_and_backward(decode, z)
        plain.append(time.perf_counter() - started)
    shares = dict.fromkeys(GROUPS, 0.0)
    total = 0.0
    for event in prof.key_averages():
        total += event.self_cpu_time_total
        name = event.key.removeprefix("aten::")
        for group, prefixes in GROUPS.items():
            if name.startswith(prefixes):
                shares[group] += event.self_cpu_time_total
                break
    shares = {group: value / total for group, value in shares.items()}
    shares["other"] = 1.0 - sum(shares.values())
    return shares, seconds, statistics.median(plain)


def _cache_ratio(decode, glow, z: torch.Tensor, repeats: int, block: int = 5) -> float:
    """Median seconds of a decode+backward pass with cached 1x1 inverses over one without, in
    NHWC chunks: blocks of ``block`` passes of each, alternating, until each has ``repeats``.
    A cached block's first pass, which computes the inverses, is left out (a solve computes
    them once for hundreds of passes), and so is an uncached block's, to treat both alike."""
    variants = {
        "cached": (glow.cached_1x1_inverses, decode),
        "recomputed": (contextlib.nullcontext, decode),
    }
    with channels_last_weights(glow):
        medians = _alternating_medians(variants, z, repeats, block)
    return medians["cached"] / medians["recomputed"]


def _compile_ratio(
    decode, z: torch.Tensor, repeats: int, block: int = 5, backend: str = "inductor"
) -> tuple[float, float, float]:
    """``(compiled / eager median seconds per pass, seconds of the first compiled pass, largest
    gradient difference over the gradient's largest entry)`` of ``decode`` and its
    ``torch.compile``: blocks of ``block`` passes of each, alternating, until each has
    ``repeats`` (a block's first pass left out)."""
    compiled = torch.compile(decode, backend=backend, dynamic=False)
    started = time.perf_counter()
    compiled_gradient = _decode_and_backward(compiled, z).clone()
    compile_seconds = time.perf_counter() - started
    eager_gradient = _decode_and_backward(decode, z).clone()
    difference = float(
        (compiled_gradient - eager_gradient).abs().max() / eager_gradient.abs().max()
    )
    variants = {
        "compiled": (contextlib.nullcontext, compiled),
        "eager": (contextlib.nullcontext, decode),
    }
    medians = _alternating_medians(variants, z, repeats, block)
    return medians["compiled"] / medians["eager"], compile_seconds, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compile", action="store_true", help="also time the decode under torch.compile"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    glow = load_pretrained(args.model).eval().requires_grad_(False)
    z = 0.5 * torch.randn(args.batch, glow.latent_dim, generator=torch.Generator().manual_seed(0))
    z.requires_grad_(True)
    evaluator = InvariantEvaluator(glow, glow._decode, glow.latent_dim)
    if not onednn_chunks_are_invariant(glow, glow._decode, glow.latent_dim):
        print("oneDNN in chunks is not batch-invariant here: the solver uses the native kernels")
    evaluator.chunked = True  # time the chunks whatever the probe found
    in_chunks = lambda z: evaluator(glow._decode, z)[0]  # noqa: E731
    kernels = {  # (chunks of <= 15 never reach NNPACK, which starts at 16 samples)
        "oneDNN chunks, NHWC": (lambda: channels_last_weights(glow), in_chunks),
        "oneDNN chunks, NCHW": (contextlib.nullcontext, in_chunks),
        "native (batch-invariant)": (batch_invariant_kernels, glow.decode),
        "PyTorch default (oneDNN)": (contextlib.nullcontext, glow.decode),
    }
    unprofiled = {}
    for label, (context, decode) in kernels.items():
        with context():
            shares, seconds, unprofiled[label] = _profile(decode, z, args.repeats)
        parts = ", ".join(f"{group} {share:.0%}" for group, share in shares.items())
        print(
            f"{label:24s} {seconds * 1e3:7.1f} ms per decode+backward of {args.batch} "
            f"({unprofiled[label] * 1e3:.1f} ms unprofiled): {parts}"
        )
    layouts = unprofiled["oneDNN chunks, NHWC"] / unprofiled["oneDNN chunks, NCHW"]
    print(f"oneDNN chunks, NHWC / NCHW time (unprofiled medians): {layouts:.2f}")
    cache = _cache_ratio(in_chunks, glow, z, args.repeats)
    print(
        f"oneDNN chunks, NHWC, cached / recomputed 1x1 inverses (alternating medians): {cache:.3f}"
    )
    if args.compile:
        with channels_last_weights(glow), glow.cached_1x1_inverses():
            ratio, seconds, difference = _compile_ratio(in_chunks, z, args.repeats)
        print(
            f"oneDNN chunks, NHWC, cached, torch.compile / eager (alternating medians): "
            f"{ratio:.3f}; compiling took {seconds:.1f} s, gradients differ by up to "
            f"{difference:.2g} of their largest entry"
        )


if __name__ == "__main__":
    main()
