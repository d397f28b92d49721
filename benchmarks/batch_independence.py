"""Is a sample's reconstruction the same alone as in a batch? On the shipped mnist32.

Reconstructs 8 MNIST test digits from CS measurements (m/n = 0.5, gamma = 0: under-determined, the
hardest case) as one batch and one by one, and prints each digit's PSNR both ways with the
largest difference. Usage::

    python benchmarks/batch_independence.py                  # batch_invariant=True (default)
    python benchmarks/batch_independence.py --no-invariant   # batched oneDNN kernels
"""

from __future__ import annotations

import argparse
import time
import warnings

import deepinv as dinv
import torch

from deepinv_glowprior import GlowReconstructor, load_pretrained
from deepinv_glowprior.data import mnist
from deepinv_glowprior.tasks import compressed_sensing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-invariant", action="store_true", help="batch_invariant=False")
    parser.add_argument("--float64", action="store_true", help="solve in float64")
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    dtype = torch.float64 if args.float64 else torch.float32
    glow = load_pretrained("mnist32").to(dtype)
    test = mnist("test")
    x = torch.stack([test[i] for i in range(8)]).to(dtype)
    physics = compressed_sensing(glow.img_size, ratio=0.5, seed=0).to(dtype)
    torch.manual_seed(1)
    y = physics(x)
    model = GlowReconstructor(
        glow, gamma=0.0, max_iter=args.max_iter, batch_invariant=not args.no_invariant
    )
    psnr = dinv.metric.PSNR()
    start = time.perf_counter()
    together = model(y, physics)
    batch_seconds = time.perf_counter() - start
    alone = torch.cat([model(y[i : i + 1], physics) for i in range(len(y))])
    psnr_together, psnr_alone = psnr(together, x), psnr(alone, x)
    print(f"batch_invariant={not args.no_invariant}, {dtype}, batch solve {batch_seconds:.0f} s")
    print("PSNR in the batch:", " ".join(f"{v:.2f}" for v in psnr_together.tolist()))
    print("PSNR alone:       ", " ".join(f"{v:.2f}" for v in psnr_alone.tolist()))
    print(
        f"largest PSNR difference {float((psnr_together - psnr_alone).abs().max()):.3g} dB, "
        f"largest |x_hat difference| {float((together - alone).abs().max()):.3g}"
    )


if __name__ == "__main__":
    main()
