"""Per-image test bits/dim of a Glow checkpoint on MNIST: finds the images a mean hides.

Usage::

    python benchmarks/bpd_per_image.py runs/mnist32/model.pt --num-images 2000
"""

from __future__ import annotations

import argparse
import warnings

import torch

from deepinv_glowprior import Glow
from deepinv_glowprior.data import mnist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a Glow checkpoint (model.pt or shipped weights)")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--outlier", type=float, default=5.0, help="bits/dim counted as outlier")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    glow = Glow.load(args.model).eval()
    test = mnist("test")
    generator = torch.Generator().manual_seed(0)
    values = []
    with torch.no_grad():
        for start in range(0, args.num_images, 200):
            stop = min(args.num_images, start + 200)
            batch = torch.stack([test[i] for i in range(start, stop)])
            values.append(glow.bits_per_dim(batch, generator=generator))
    bits = torch.cat(values)
    outliers = torch.nonzero(bits > args.outlier).flatten()
    print(
        f"mean {float(bits.mean()):.4f}  median {float(bits.median()):.4f}  "
        f"max {float(bits.max()):.4g} bits/dim over {len(bits)} test images"
    )
    print(f"outliers (> {args.outlier}): {outliers.tolist()[:20]}")
    print(f"mean without them: {float(bits[bits <= args.outlier].mean()):.4f}")


if __name__ == "__main__":
    main()
