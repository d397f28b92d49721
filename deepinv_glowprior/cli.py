"""The ``glowprior`` command: train, export and demo Glow priors."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

DATASETS = ("mnist", "fashion_mnist", "natural", "folder")


class UserError(Exception):
    """An error caused by the command line; printed as one line, exit status 2."""


def _add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a Glow by maximum likelihood (resumable; torchrun for several processes)",
        description=(
            "Train a Glow prior by maximum likelihood with uniform dequantisation. Checkpoints are "
            "written atomically to OUT/checkpoint.pt; running the same command again resumes "
            "exactly. Launch with `torchrun --nproc_per_node=N -m deepinv_glowprior.cli train ...` "
            "for data-parallel training (gloo on CPU, nccl on GPU)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="mnist", help="training data")
    data.add_argument("--data-dir", default=None, help="image folder for --dataset folder")
    data.add_argument("--image-size", type=int, default=32, help="H = W of the images")
    data.add_argument("--grey", action="store_true", help="natural/folder images in grey")
    data.add_argument(
        "--exclude-digits", default="", help="comma-separated MNIST digits left out (bias study)"
    )
    model = parser.add_argument_group("model")
    model.add_argument("--levels", type=int, default=3, help="number of scales L")
    model.add_argument("--flow-steps", type=int, default=8, help="flow steps per level K")
    model.add_argument("--hidden-channels", type=int, default=128, help="coupling net width")
    model.add_argument(
        "--coupling",
        choices=("affine", "additive"),
        default="affine",
        help="coupling layer: affine (bounded log-scale) or additive (volume preserving)",
    )
    model.add_argument("--scale-bound", type=float, default=2.0, help="affine log-scale bound")
    model.add_argument(
        "--shift-bound",
        type=float,
        default=None,
        help="affine shift bound c (shift -> c tanh(shift / c)); default: unbounded",
    )
    model.add_argument("--n-bits", type=int, default=8, help="quantisation bits of the data")
    run = parser.add_argument_group("optimisation")
    run.add_argument("--iterations", type=int, default=5000, help="optimiser steps in total")
    run.add_argument("--batch-size", type=int, default=64, help="global batch size")
    run.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    run.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    run.add_argument(
        "--decay-start",
        type=int,
        default=0,
        help="step from which lr follows a cosine down to 0 at --iterations (0: constant lr); "
        "may be added when resuming a finished run for more iterations",
    )
    run.add_argument("--optimizer", choices=("adam", "adamax"), default="adam", help="optimiser")
    run.add_argument("--grad-clip", type=float, default=50.0, help="max gradient norm")
    run.add_argument("--seed", type=int, default=0, help="seed of init, data order and noise")
    run.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available"
    )
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    run.add_argument(
        "--no-channels-last",
        action="store_true",
        help="keep the convolution weights in the default layout (channels-last trains faster "
        "on CPU; the models shipped before it were trained without it)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, help="folder for checkpoints, logs and samples")
    out.add_argument("--eval-every", type=int, default=500, help="steps between test bits/dim")
    out.add_argument("--eval-images", type=int, default=1000, help="test images per evaluation")
    out.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    out.add_argument("--sample-every", type=int, default=1000, help="steps between sample grids")
    out.add_argument("--max-minutes", type=float, default=0.0, help="stop (resumably) after this")
    out.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    out.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="reconstruct MNIST test digits with the shipped prior and print a PSNR/SSIM table",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="mnist32", help="pretrained model name")
    parser.add_argument("--num-images", type=int, default=8, help="MNIST test images")
    parser.add_argument("--out", default="outputs/demo.png", help="figure path")
    parser.add_argument("--seed", type=int, default=0, help="seed of matrices and noise")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="ship a finished training run as a pretrained model (maintainers)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run", help="the --out folder of a finished `glowprior train`")
    parser.add_argument("--name", required=True, help="registry name, e.g. mnist32")
    parser.add_argument("--dataset", choices=DATASETS[:3], required=True, help="training data")
    parser.add_argument("--notes", default="", help="free text for the model card")


def _add_benchmark_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="run one of the paper's experiments (a CSV, a plot and a printed table), or build "
        "the claims table from their CSVs",
        description=(
            "cs, denoise, inpaint: run the experiment and write OUT/NAME.csv (and a plot). "
            "bias: the shipped Glow and DCGAN trained without the digit 7 (and both trained on "
            "all digits) on left-out and seen digits: OUT/bias.csv, bias.png, bias_grid.png. "
            "claims: read OUT/cs*.csv, OUT/denoise.csv, OUT/inpaint.csv and OUT/bias.csv and "
            "write OUT/claims.csv, one verdict per claim of the paper."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "name", choices=("cs", "denoise", "inpaint", "bias", "claims"), help="experiment"
    )
    parser.add_argument("--model", default="mnist32", help="pretrained model name")
    parser.add_argument("--num-images", type=int, default=4, help="test images per setting")
    parser.add_argument("--full", action="store_true", help="publication size (32 images, all m/n)")
    parser.add_argument(
        "--datasets",
        default="",
        help="cs only: comma-separated test sets among mnist, fashion_mnist, faces, natural "
        "(default: mnist; with --full: mnist, fashion_mnist, faces)",
    )
    parser.add_argument(
        "--ratios",
        default="",
        help="cs and bias: comma-separated m/n (cs default 0.05,0.1,0.2,0.5, more with --full; "
        "bias default 0.1,0.25,0.5)",
    )
    parser.add_argument(
        "--sigmas",
        default="",
        help="denoise only: comma-separated noise levels (default 0.05,0.1,0.2)",
    )
    parser.add_argument(
        "--dcgan",
        default="dcgan_mnist32",
        help="shipped DCGAN of the CSGM baseline ('none' to leave CSGM out)",
    )
    parser.add_argument(
        "--deep-decoder",
        action="store_true",
        help="add the Deep Decoder (400 Adam steps per image; always on with --full)",
    )
    parser.add_argument(
        "--grid",
        default="",
        help="setting shown in OUT/<name>_grid.png, as its label: e.g. 'natural m/n=0.2', "
        "'sigma=0.1' (default: the middle setting)",
    )
    parser.add_argument("--out", default="outputs/benchmarks", help="folder for CSV and plot")
    parser.add_argument("--seed", type=int, default=0, help="seed of matrices and noise")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_theorem1_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "theorem1",
        help="Theorem 1 on a trained Glow: Jacobian spectra, bounds and measured CS error",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="mnist32", help="pretrained model name")
    parser.add_argument("--num-images", type=int, default=4, help="MNIST test images")
    parser.add_argument("--out", default="outputs/glow_panel.png", help="figure path")
    parser.add_argument("--max-iter", type=int, default=400, help="solver iterations per m")
    parser.add_argument("--seed", type=int, default=0, help="seed of the matrices")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``glowprior``."""
    parser = argparse.ArgumentParser(
        prog="glowprior", description="Invertible (Glow) generative priors for deepinv."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(subparsers)
    _add_demo_parser(subparsers)
    _add_export_parser(subparsers)
    _add_benchmark_parser(subparsers)
    _add_theorem1_parser(subparsers)
    return parser


def _datasets(args: argparse.Namespace):
    try:
        return _load_datasets(args)
    except RuntimeError as err:  # the loaders' "not available offline" errors
        raise UserError(str(err)) from err


def _load_datasets(args: argparse.Namespace):
    from deepinv_glowprior import data

    size = args.image_size
    if args.dataset in ("mnist", "fashion_mnist"):
        if size != 32:
            raise UserError(f"--image-size must be 32 for {args.dataset} (28x28 digits padded).")
        if args.dataset == "mnist":
            excluded = tuple(int(d) for d in args.exclude_digits.split(",") if d.strip())
            kwargs = {"exclude_classes": excluded}
            return data.mnist("train", **kwargs), data.mnist("test", **kwargs)
        return data.fashion_mnist("train"), data.fashion_mnist("test")
    if args.dataset == "natural":
        color = not args.grey
        return (
            data.natural_patches(size, "train", color=color),
            data.natural_patches(size, "test", color=color),
        )
    if not args.data_dir:
        raise UserError("--dataset folder needs --data-dir PATH.")
    folder = data.image_folder(args.data_dir, size, color=not args.grey)
    return folder, None


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import os

    import torch
    import torch.distributed as dist

    from deepinv_glowprior.glow import Glow
    from deepinv_glowprior.train import TrainConfig, fit

    if args.threads < 0:
        raise UserError(f"--threads must be >= 0 (0: torch's default), got {args.threads}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu.")
    if args.threads:
        torch.set_num_threads(args.threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        use_nccl = args.device != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if use_nccl else "gloo")
    try:
        config = TrainConfig(
            iterations=args.iterations,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=args.warmup,
            decay_start=args.decay_start,
            optimizer=args.optimizer,
            grad_clip=args.grad_clip,
            eval_every=args.eval_every,
            eval_images=args.eval_images,
            checkpoint_every=args.checkpoint_every,
            sample_every=args.sample_every,
            seed=args.seed,
            max_minutes=args.max_minutes,
            device=args.device,
            progress=not args.no_progress,
            channels_last=False if args.no_channels_last else None,
        )
        train_set, test_set = _datasets(args)
        channels = int(train_set[0].shape[0])
        torch.manual_seed(args.seed)
        glow = Glow(
            img_size=(channels, args.image_size, args.image_size),
            levels=args.levels,
            steps=args.flow_steps,
            hidden_channels=args.hidden_channels,
            coupling=args.coupling,
            scale_bound=args.scale_bound,
            shift_bound=args.shift_bound,
            n_bits=args.n_bits,
        )
        command = "glowprior " + " ".join(shlex.quote(a) for a in argv)
        history = fit(
            glow,
            train_set,
            test_set,
            args.out,
            config,
            resume=not args.no_resume,
            meta={"command": command, "dataset": args.dataset},
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if history:
        print(json.dumps(history[-1]))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from deepinv_glowprior.demo import format_table, run_demo

    if args.num_images < 1:
        raise UserError(f"--num-images must be >= 1, got {args.num_images}.")
    rows = run_demo(
        args.model, args.num_images, args.out, seed=args.seed, progress=not args.no_progress
    )
    print(f"Glow prior {args.model!r} on {args.num_images} MNIST test digits (mean over images):")
    print(format_table(rows))
    print(f"figure: {args.out}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deepinv_glowprior import experiments
    from deepinv_glowprior.demo import format_table

    out = Path(args.out)
    if args.name == "claims":
        return _claims(out)
    if args.num_images < 1:
        raise UserError(f"--num-images must be >= 1, got {args.num_images}.")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0 (0: torch's default), got {args.threads}.")
    datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    known = ("mnist", "fashion_mnist", "faces", "natural")
    if any(d not in known for d in datasets):
        raise UserError(f"--datasets must be among {', '.join(known)}, got {args.datasets!r}.")
    ratios, sigmas = _numbers(args.ratios, "--ratios"), _numbers(args.sigmas, "--sigmas")
    if datasets and args.name != "cs":
        raise UserError("--datasets applies to the cs benchmark only.")
    if ratios and args.name not in ("cs", "bias"):
        raise UserError("--ratios applies to the cs and bias benchmarks only.")
    if sigmas and args.name != "denoise":
        raise UserError("--sigmas applies to the denoise benchmark only.")
    import torch

    from deepinv_glowprior.pretrained import load_pretrained

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.name == "bias":
        return _bias(args, out, ratios)
    glow = load_pretrained(args.model)
    count = 32 if args.full else args.num_images
    options = {"num_images": count, "seed": args.seed, "progress": not args.no_progress}
    options["dcgan"] = None if args.dcgan.lower() == "none" else args.dcgan
    options["deep_decoder"] = args.full or args.deep_decoder
    if args.name == "cs":
        full_sets = ("mnist", "fashion_mnist", "faces")
        options["datasets"] = datasets or (full_sets if args.full else ("mnist",))
        if args.full:
            options["ratios"] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
        if ratios:
            options["ratios"] = ratios
    if sigmas:
        options["sigmas"] = sigmas
    labels = experiments.gallery_labels(experiments.EXPERIMENTS[args.name], options)
    grid_label = args.grid.strip() or labels[len(labels) // 2]  # default: a middle m/n or sigma
    if grid_label not in labels:
        raise UserError(f"--grid must be one of {', '.join(map(repr, labels))}; got {args.grid!r}.")
    galleries: dict = {}
    rows = experiments.EXPERIMENTS[args.name](glow, galleries=galleries, **options)
    stem = args.name  # cs.csv, or cs_fashion_mnist-faces.csv for --datasets fashion_mnist,faces
    if datasets:
        stem = f"cs_{'-'.join(datasets)}"
    if args.model != "mnist32":  # e.g. cs_natural32_natural-faces.csv, rows naming the model
        stem = f"{args.name}_{args.model}" + (f"_{'-'.join(datasets)}" if datasets else "")
        rows = [{"model": args.model, **row} for row in rows]
    csv_path = experiments.write_csv(rows, out / f"{stem}.csv")
    x_key = {"cs": "ratio", "denoise": "sigma", "inpaint": "method"}[args.name]
    if x_key != "method":
        experiments.plot_rows(rows, x_key, out / f"{stem}.png", title=args.name)
    experiments.save_grid(
        {
            "truth" if k == "truth" else f"{k}\n{grid_label}": v
            for k, v in galleries[grid_label].items()
        },
        out / f"{stem}_grid.png",
    )
    print(format_table(rows))
    print(f"table: {csv_path}")
    return 0


def _bias(args: argparse.Namespace, out, ratios: tuple[float, ...]) -> int:
    from deepinv_glowprior import bias
    from deepinv_glowprior.dcgan import load_pretrained_dcgan
    from deepinv_glowprior.demo import format_table
    from deepinv_glowprior.experiments import write_csv
    from deepinv_glowprior.pretrained import load_pretrained

    names = bias.BIASED_MODELS
    left_out = ",".join(str(d) for d in names["left_out"])
    try:
        priors = [
            bias.BiasPrior("Glow", f"without {left_out}", load_pretrained(names["glow"])),
            bias.BiasPrior("CSGM", f"without {left_out}", load_pretrained_dcgan(names["dcgan"])),
            bias.BiasPrior("Glow", "all digits", load_pretrained(names["glow_reference"])),
            bias.BiasPrior("CSGM", "all digits", load_pretrained_dcgan(names["dcgan_reference"])),
        ]
    except (KeyError, OSError) as err:
        raise UserError(
            f"the bias benchmark needs the shipped models {names['glow']}, {names['dcgan']}, "
            f"{names['glow_reference']} and {names['dcgan_reference']}: {err}"
        ) from err
    options = {"num_images": 32 if args.full else args.num_images, "seed": args.seed}
    if ratios or args.full:
        options["ratios"] = ratios or (0.1, 0.25, 0.5, 0.75, 1.0)
    result = bias.bias_experiment(
        priors, names["left_out"], progress=not args.no_progress, **options
    )
    csv_path = write_csv(result.rows, out / "bias.csv")
    bias.plot_bias(result.rows, out / "bias.png")
    bias.save_bias_grid(result, out / "bias_grid.png")
    print(format_table(result.rows))
    print(f"table: {csv_path}")
    return 0


def _numbers(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{option} must be comma-separated numbers, got {text!r}.") from None


def _claims(out) -> int:
    from deepinv_glowprior import experiments
    from deepinv_glowprior.demo import format_table

    rows = experiments.read_results(out)
    if not rows:
        raise UserError(
            f"no cs.csv, denoise.csv, inpaint.csv or bias.csv in {out}; run `glowprior "
            f"benchmark cs --out {out}` (and denoise, inpaint, bias) first."
        )
    table = experiments.claims_table(rows)
    csv_path = experiments.write_csv(table, out / "claims.csv")
    print(format_table([{k: row[k] for k in ("claim", "ours", "verdict")} for row in table]))
    print(f"table: {csv_path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from deepinv_glowprior import data
    from deepinv_glowprior.pretrained import _check_export, export_run

    _check_export(args.run, args.name)  # before the minutes spent loading test data
    try:
        if args.dataset == "natural":
            test_set, content = data.natural_patches(32, "test"), None
        else:
            test_set, content = getattr(data, args.dataset)("test"), 28 * 28
    except RuntimeError as err:  # the loaders' "not available offline" errors
        raise UserError(str(err)) from err
    card = export_run(args.run, args.name, args.dataset, test_set, content, args.notes)
    print(
        f"{card.name}: test bits/dim {card.test_bits_per_dim} over {card.test_images} images "
        f"({card.test_bits_per_content_dim} per content pixel), sha256 {card.sha256[:12]}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``glowprior``; user errors print one line and exit with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args, argv)
        if args.command == "demo":
            return _demo(args)
        if args.command == "export":
            return _export(args)
        if args.command == "benchmark":
            return _benchmark(args)
        if args.command == "theorem1":
            from deepinv_glowprior.theory_glow import main_glow_panel

            if args.num_images < 1 or args.max_iter < 1:
                raise UserError("--num-images and --max-iter must be >= 1.")
            main_glow_panel(
                args.model, args.num_images, out=args.out, max_iter=args.max_iter, seed=args.seed
            )
            return 0
    except (UserError, ValueError, TypeError, KeyError, OSError) as err:
        # str(KeyError) quotes its message; a multi-line message would read as a traceback
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        line = " ".join(str(message).split())
        print(f"glowprior {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"glowprior {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
