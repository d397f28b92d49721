r"""Maximum-likelihood training of a :class:`~deepinv_glowprior.Glow`, resumable and distributed."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from deepinv_glowprior._checks import check_image_batch
from deepinv_glowprior.glow import CheckpointError, Glow, _load_checkpoint_file, atomic_torch_save

__all__ = [
    "TrainConfig",
    "learning_rate_factor",
    "batch_indices",
    "evaluate_bits_per_dim",
    "fit",
    "save_sample_grid",
]

TRAIN_CHECKPOINT_FORMAT = "deepinv-glowprior/train-v1"
CHECKPOINT_NAME = "checkpoint.pt"
FINAL_NAME = "model.pt"
LOG_NAME = "log.jsonl"
# Settings that may change between a run and its resumption without changing its result.
_RESUMABLE_CHANGES = {
    "iterations",
    "eval_every",
    "checkpoint_every",
    "sample_every",
    "max_minutes",
    "progress",
    "device",
    "channels_last",
}


@dataclass(frozen=True)
class TrainConfig:
    r"""Settings of :func:`fit`.

    :param int iterations: optimiser steps in total (a resumed run continues up to this count).
    :param int batch_size: images per step, summed over processes.
    :param float lr: peak learning rate, reached linearly after ``warmup`` steps.
    :param int warmup: warm-up steps.
    :param int decay_start: step from which the learning rate follows a cosine from ``lr`` down
        to 0 at ``iterations`` (0: constant after warm-up). It may be set when a finished run is
        resumed for more iterations, as long as it is not before the checkpoint's step.
    :param str optimizer: ``"adam"`` or ``"adamax"``.
    :param float grad_clip: maximum gradient norm.
    :param int eval_every: steps between test bits/dim evaluations (0: only at the end).
    :param int eval_images: test images used by each evaluation.
    :param int checkpoint_every: steps between checkpoints.
    :param int sample_every: steps between sample grids (0: only at the end).
    :param float sample_temperature: temperature of the sample grids.
    :param int seed: seeds data order and dequantisation noise (seed the model init yourself).
    :param float max_minutes: stop cleanly, with a checkpoint, after this wall time (0: no limit).
    :param str device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    :param bool progress: show a tqdm progress bar.
    :param bool channels_last: hold the convolution weights in channels-last memory layout
        while training, which oneDNN's CPU convolutions run faster (about 1.1-1.3x per step,
        ``benchmarks/train_throughput.py``). ``None`` (default): on CPU only, the one device
        measured. The weights return to the default layout when :func:`fit` returns.
    """

    iterations: int = 5000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    decay_start: int = 0
    optimizer: str = "adam"
    grad_clip: float = 50.0
    eval_every: int = 500
    eval_images: int = 1000
    checkpoint_every: int = 200
    sample_every: int = 1000
    sample_temperature: float = 0.7
    seed: int = 0
    max_minutes: float = 0.0
    device: str = "auto"
    progress: bool = True
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        positive = ("iterations", "batch_size", "checkpoint_every", "eval_images")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        for name in ("warmup", "decay_start", "eval_every", "sample_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
        for name in ("lr", "grad_clip", "sample_temperature", "max_minutes"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if self.decay_start >= self.iterations:
            raise ValueError(
                f"decay_start ({self.decay_start}) must be below iterations ({self.iterations}); "
                "0 keeps the learning rate constant."
            )
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError("lr and grad_clip must be > 0.")
        if self.optimizer not in ("adam", "adamax"):
            raise ValueError(f"optimizer must be 'adam' or 'adamax', got {self.optimizer!r}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be True or False, got {self.progress!r}.")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise TypeError(
                f"channels_last must be True, False or None, got {self.channels_last!r}."
            )

    def memory_format(self, device: torch.device) -> torch.memory_format:
        """The layout of the convolution weights while training on ``device``."""
        channels_last = device.type == "cpu" if self.channels_last is None else self.channels_last
        return torch.channels_last if channels_last else torch.contiguous_format


def batch_indices(
    step: int, dataset_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Indices of this process's share of the global batch at ``step``.

    Each epoch is a permutation drawn from ``seed`` and the epoch number, so the data order is a
    pure function of the step: resuming needs no saved sampler state.
    """
    steps_per_epoch = dataset_size // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"The training set has {dataset_size} images, fewer than one batch of {batch_size}; "
            "use a smaller batch_size."
        )
    epoch, position = divmod(step, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(dataset_size, generator=generator)
    batch = order[position * batch_size : (position + 1) * batch_size]
    share = batch_size // world_size
    return batch[rank * share : (rank + 1) * share]


def _stack(dataset: Dataset, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    items = [dataset[int(i)] for i in indices]
    images = [item[0] if isinstance(item, (tuple, list)) else item for item in items]
    return torch.stack(images).to(device)


class _BitsPerDim(nn.Module):
    """The training loss as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, glow: Glow) -> None:
        super().__init__()
        self.glow = glow

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.glow.bits_per_dim(x, noise=noise).mean()


@torch.no_grad()
def evaluate_bits_per_dim(
    glow: Glow, dataset: Dataset, num_images: int = 1000, batch_size: int = 256, seed: int = 0
) -> float:
    """Mean test bits/dim over the first ``num_images`` images, with seeded dequantisation."""
    was_training = glow.training
    glow.eval()
    count = min(num_images, len(dataset))
    generator = torch.Generator(device=glow.device).manual_seed(seed)
    total = 0.0
    for start in range(0, count, batch_size):
        indices = torch.arange(start, min(start + batch_size, count))
        x = _stack(dataset, indices, glow.device)
        total += float(glow.bits_per_dim(x, generator=generator).sum())
    glow.train(was_training)
    return total / count


def save_sample_grid(
    glow: Glow, path: str | os.PathLike, temperature: float = 0.7, num: int = 64, seed: int = 0
) -> Path:
    """Write a PNG grid of ``num`` samples at ``temperature``."""
    from torchvision.utils import save_image

    generator = torch.Generator(device=glow.device).manual_seed(seed)
    was_training = glow.training
    glow.eval()
    try:
        samples = glow.sample(num, temperature, generator=generator)
    except torch.linalg.LinAlgError as err:  # a diverged 1x1 convolution is singular
        warnings.warn(
            f"No sample grid written to {path}: the model cannot decode ({err}); its weights have "
            "probably diverged (learning rate too large?).",
            stacklevel=2,
        )
        return Path(path)
    finally:
        glow.train(was_training)
    path = Path(path)
    save_image(samples.cpu(), path, nrow=int(math.sqrt(num)), padding=1)
    return path


def _check_output_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"Cannot write to the output folder {out_dir} ({err.strerror}); choose another --out."
        ) from err


def _check_free_space(out_dir: Path, glow: Glow) -> None:
    parameter_bytes = sum(p.numel() * p.element_size() for p in glow.parameters())
    needed = 4 * parameter_bytes  # weights + Adam moments, twice while a checkpoint is renamed
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise OSError(
            f"Only {free / 2**20:.1f} MiB free in {out_dir}; checkpoints need about "
            f"{needed / 2**20:.1f} MiB. Free some space or choose another --out."
        )


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but CUDA is not available; use 'cpu'.")
    if name == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def _make_optimizer(glow: Glow, config: TrainConfig):
    kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.Adamax
    optimizer = kind(glow.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, config)
    )
    return optimizer, scheduler


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    r"""Learning rate of optimiser step ``step`` (from 0) as a fraction of ``config.lr``.

    Linear warm-up :math:`(s + 1)/w` for ``warmup`` steps, then 1 until ``decay_start`` (when
    it is > 0), then :math:`\tfrac12(1 + \cos(\pi (s - s_0) / (S - s_0)))` down to 0 at
    ``iterations`` :math:`S`.

    >>> config = TrainConfig(iterations=100, warmup=10, decay_start=50)
    >>> [round(learning_rate_factor(s, config), 3) for s in (0, 9, 50, 75, 100)]
    [0.1, 1.0, 1.0, 0.5, 0.0]
    """
    factor = min(1.0, (step + 1) / max(config.warmup, 1))
    if 0 < config.decay_start <= step:
        progress = min(1.0, (step - config.decay_start) / (config.iterations - config.decay_start))
        factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


_START_OVER = "delete it (or pass resume=False, --no-resume) to start over, or use another --out."


def _load_training_state(path: Path, glow: Glow, optimizer, scheduler, config: TrainConfig) -> dict:
    state = _load_checkpoint_file(path, glow.device, advice=f"To resume nothing, {_START_OVER}")
    if not (isinstance(state, dict) and state.get("format") == TRAIN_CHECKPOINT_FORMAT):
        raise CheckpointError(f"{path} is not a training checkpoint of this package; {_START_OVER}")
    keys = ("glow", "optimizer", "scheduler", "step", "train_config", "history")
    missing = [key for key in keys if key not in state]
    if missing or not isinstance(state["train_config"], dict):
        raise CheckpointError(f"Training checkpoint {path} lacks {missing}; {_START_OVER}")
    saved = state["train_config"]
    defaults = asdict(TrainConfig())  # checkpoints older than a setting ran at its default
    for name, value in asdict(config).items():
        if name == "decay_start" and value != saved.get(name, defaults[name]):
            if 0 < value < int(state["step"]):
                raise ValueError(
                    f"Cannot resume from {path} at step {state['step']} with decay_start={value}: "
                    "the decay would have started in the past. Use a decay_start at or after "
                    f"step {state['step']}."
                )
            continue
        if name not in _RESUMABLE_CHANGES and saved.get(name, defaults[name]) != value:
            raise ValueError(
                f"Cannot resume from {path}: it was trained with {name}={saved.get(name)!r}, now "
                f"{name}={value!r}. Use the same settings, or another --out for a new run."
            )
    glow.load_weights(path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"Optimiser state in {path} does not fit ({err}); {_START_OVER}"
        ) from err
    return state


def _check_dataset(dataset: object, name: str, glow: Glow) -> None:
    """Fail before training, not hours later, on a dataset of the wrong images."""
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(
            f"{name} must be a Dataset or tensor of images (C, H, W), got {type(dataset).__name__}."
        )
    if len(dataset) == 0:
        hint = " (pass None to skip evaluation)" if name == "test_set" else ""
        raise ValueError(f"{name} is empty{hint}.")
    item = dataset[0]
    image = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(
            f"{name}[0] must be an image tensor (C, H, W) (or a tuple starting with one), got "
            f"{shape}."
        )
    check_image_batch(image.unsqueeze(0), glow.img_size, name=f"{name}[0]", dtype=glow.dtype)


def fit(
    glow: Glow,
    train_set: Dataset,
    test_set: Dataset | None,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = True,
    meta: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[dict[str, Any]]:
    r"""Train ``glow`` by maximum likelihood: minimise the dequantised bits/dim of ``train_set``.

    .. math::

        \min_\theta\; \mathbb{E}_{x,u}
        \frac{-\log p_\theta((q(x) + u)/2^b) + n\,b\log 2}{n\log 2},
        \qquad u\sim\mathcal{U}[0,1)^n,

    with Adam (or Adamax), linear warm-up and gradient-norm clipping. Every ``checkpoint_every``
    steps the model, optimiser, scheduler, step and history are written atomically to
    ``out_dir/checkpoint.pt``; a later call with ``resume=True`` continues exactly where it
    stopped (data order and noise are functions of the seed and the step). The final model goes
    to ``out_dir/model.pt`` (loadable with :meth:`Glow.load`), the history to ``log.jsonl``,
    sample grids to ``samples_<step>.png``.

    Under ``torchrun --nproc_per_node=N`` (``torch.distributed`` initialised by the caller, gloo on
    CPU, nccl on GPU) the global batch is shared between processes and gradients are averaged.

    :param Glow glow: the model (seed its construction for reproducibility).
    :param Dataset train_set: items are images ``(C, H, W)`` in [0, 1] (or tuples whose first
        element is).
    :param Dataset test_set: held-out images for the periodic test bits/dim (optional).
    :param out_dir: folder for checkpoints, logs and samples.
    :param TrainConfig config: settings.
    :param bool resume: continue from ``out_dir/checkpoint.pt`` if it exists.
    :param dict meta: extra information stored with the final model (e.g. the command).
    :param on_step: called as ``on_step(step, loss)`` after each step (used by fault tests).
    :return: the history, a list of dicts with ``step``, ``train_bpd``, ``test_bpd``, ``lr``,
        ``seconds``.

    :Example:

    >>> import tempfile, torch
    >>> from deepinv_glowprior import Glow
    >>> from deepinv_glowprior.train import TrainConfig, fit
    >>> glow = Glow(img_size=(1, 8, 8), levels=2, steps=2, hidden_channels=8)
    >>> data = torch.rand(32, 1, 8, 8)
    >>> config = TrainConfig(iterations=4, batch_size=8, progress=False)
    >>> with tempfile.TemporaryDirectory() as out_dir:
    ...     history = fit(glow, data, data, out_dir, config)
    step 4: test bits/dim ...
    >>> history[-1]["step"]
    4
    """
    if not isinstance(glow, Glow):
        raise TypeError(f"glow must be a deepinv_glowprior.Glow, got {type(glow).__name__}.")
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(
            f"config must be a TrainConfig, got {type(config).__name__}; write "
            "TrainConfig(**settings)."
        )
    _check_dataset(train_set, "train_set", glow)
    if test_set is not None:
        _check_dataset(test_set, "test_set", glow)
    out_dir = Path(out_dir)
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1
    if config.batch_size % world_size:
        raise ValueError(
            f"batch_size={config.batch_size} must divide by the number of processes {world_size}."
        )
    device = _resolve_device(config.device)
    glow.to(device).train()
    if rank == 0:
        _check_output_folder(out_dir)
        _check_free_space(out_dir, glow)
    optimizer, scheduler = _make_optimizer(glow, config)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    history: list[dict[str, Any]] = []
    start_step = 0
    if resume and checkpoint_path.is_file():
        state = _load_training_state(checkpoint_path, glow, optimizer, scheduler, config)
        start_step, history = int(state["step"]), list(state["history"])
    elif not glow.is_initialized:
        # Same first global batch on every process, so ActNorm starts identical everywhere.
        first = batch_indices(0, len(train_set), config.batch_size, config.seed)
        glow.initialize(_stack(train_set, first, device))

    # Before DistributedDataParallel, which lays out its gradient buckets like the weights.
    glow.to(memory_format=config.memory_format(device))
    loss_module: nn.Module = _BitsPerDim(glow)
    if distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        loss_module = nn.parallel.DistributedDataParallel(loss_module, device_ids=device_ids)

    def write_log() -> None:
        """The history as JSON lines, written atomically."""
        if rank != 0:
            return
        temporary = out_dir / f".{LOG_NAME}.tmp"
        with open(temporary, "w") as log:
            log.writelines(json.dumps(entry) + "\n" for entry in history)
        os.replace(temporary, out_dir / LOG_NAME)

    if start_step:
        write_log()  # drop log entries a kill left beyond the checkpoint

    def save_checkpoint(step: int) -> None:
        if rank != 0:
            return
        # The log first: whenever a checkpoint exists, the log holds its history.
        write_log()
        state = {
            "format": TRAIN_CHECKPOINT_FORMAT,
            "glow": glow.checkpoint_payload(meta),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "train_config": asdict(config),
            "history": history,
        }
        atomic_torch_save(state, checkpoint_path)

    started = time.monotonic()
    seconds_before = history[-1]["seconds"] if history else 0.0
    running_loss, running_count = 0.0, 0
    bar = tqdm(
        total=config.iterations,
        initial=start_step,
        disable=not (config.progress and rank == 0),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    step = start_step
    skipped = 0
    try:
        while step < config.iterations:
            indices = batch_indices(
                step, len(train_set), config.batch_size, config.seed, rank, world_size
            )
            x = _stack(train_set, indices, device)
            # Noise for the whole global batch, then this process's share: the noise an image
            # gets does not depend on the number of processes.
            noise_generator = torch.Generator(device=device).manual_seed(
                (config.seed * 1_000_003 + step) * 1009
            )
            global_noise = torch.rand(
                (config.batch_size, *glow.img_size),
                generator=noise_generator,
                device=device,
                dtype=glow.dtype,
            )
            share = config.batch_size // world_size
            loss = loss_module(x, global_noise[rank * share : (rank + 1) * share])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(glow.parameters(), config.grad_clip)
            if torch.isfinite(loss) and torch.isfinite(grad_norm):
                optimizer.step()
            else:
                skipped += 1
                if skipped == 1:
                    warnings.warn(
                        f"Step {step + 1}: the loss or its gradient is not finite, so the update "
                        f"was skipped (lr={config.lr:g}). If this repeats, the weights have "
                        "diverged: train again with a lower lr.",
                        stacklevel=2,
                    )
            scheduler.step()
            step += 1
            loss_value = float(loss.detach())
            running_loss += loss_value
            running_count += 1
            bar.update(1)
            bar.set_postfix(bpd=f"{loss_value:.3f}")
            if on_step is not None:
                on_step(step, loss_value)
            evaluate_now = config.eval_every and step % config.eval_every == 0
            done = step >= config.iterations
            out_of_time = config.max_minutes and (
                time.monotonic() - started > 60 * config.max_minutes
            )
            if evaluate_now or done or step % config.checkpoint_every == 0 or out_of_time:
                entry = {
                    "step": step,
                    "train_bpd": running_loss / max(running_count, 1),
                    "lr": scheduler.get_last_lr()[0],
                    "seconds": round(seconds_before + time.monotonic() - started, 2),
                }
                running_loss, running_count = 0.0, 0
                if rank == 0 and test_set is not None and (evaluate_now or done):
                    entry["test_bpd"] = evaluate_bits_per_dim(
                        glow, test_set, config.eval_images, seed=config.seed
                    )
                    bar.write(f"step {step}: test bits/dim {entry['test_bpd']:.4f}")
                history.append(entry)
                save_checkpoint(step)
            if rank == 0 and config.sample_every and step % config.sample_every == 0:
                save_sample_grid(
                    glow,
                    out_dir / f"samples_{step:06d}.png",
                    config.sample_temperature,
                    seed=config.seed,
                )
            if out_of_time:
                bar.write(
                    f"Stopped after {config.max_minutes} minutes at step {step}; "
                    "run the same command again to resume."
                )
                break
    except KeyboardInterrupt:
        save_checkpoint(step)
        bar.write(f"Interrupted at step {step}; checkpoint saved, run again to resume.")
        raise
    finally:
        bar.close()
        glow.to(memory_format=torch.contiguous_format)
    if skipped > 1:
        warnings.warn(
            f"{skipped} of {step - start_step} steps were skipped because the loss or its gradient "
            f"was not finite; with lr={config.lr:g} the model has probably diverged.",
            stacklevel=2,
        )
    if rank == 0 and step >= config.iterations:
        glow.eval()
        glow.save(out_dir / FINAL_NAME, meta={**(meta or {}), "history": history})
        save_sample_grid(
            glow, out_dir / "samples_final.png", config.sample_temperature, seed=config.seed
        )
    return history
