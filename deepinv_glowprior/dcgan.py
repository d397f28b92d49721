r"""A DCGAN prior for 32x32 images and CSGM :footcite:p:`bora2017compressed`, the paper's GAN
baseline: latent-space reconstruction with a generator that has representation error.

deepinv's :class:`~deepinv.models.DCGANGenerator` only makes 64x64 or 128x128 images and its
``CSGMGenerator`` couples a batch into one latent optimised by Adam, hence this module.

Train and ship from the shell (``python -m deepinv_glowprior.dcgan --help``)::

    python -m deepinv_glowprior.dcgan train --dataset mnist --out runs/dcgan_mnist32
    python -m deepinv_glowprior.dcgan export runs/dcgan_mnist32 --name dcgan_mnist32
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from deepinv.models import Reconstructor
from torch import nn
from torch.utils.data import Dataset

from deepinv_glowprior._checks import (
    check_finite_tensor,
    check_image_batch,
    check_measurement_batch,
    check_physics_output,
)
from deepinv_glowprior._checks import check_nonnegative_number as _number
from deepinv_glowprior._checks import check_positive_int as _positive
from deepinv_glowprior.glow import CheckpointError, _load_checkpoint_file, atomic_torch_save
from deepinv_glowprior.solvers import batched_lbfgs
from deepinv_glowprior.train import _stack, batch_indices

__all__ = [
    "CSGMReconstructor",
    "DCGANConfig",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "csgm",
    "export_dcgan",
    "load_pretrained_dcgan",
    "train_dcgan",
]

FORMAT = "deepinv-glowprior/dcgan-generator-v1"
TRAIN_FORMAT = "deepinv-glowprior/dcgan-train-v1"
REGISTRY = Path(__file__).parent / "weights" / "dcgan_registry.json"


@dataclass(frozen=True)
class DCGANConfig:
    """Architecture of a :class:`DCGANGenerator` / :class:`DCGANDiscriminator`.

    :param tuple img_size: ``(C, 32, 32)``; only 32x32 images are supported.
    :param int latent_dim: dimension :math:`k` of the Gaussian latent.
    :param int features: channels of the widest-resolution layer (``ngf`` / ``ndf``).
    """

    img_size: tuple[int, int, int] = (1, 32, 32)
    latent_dim: int = 100
    features: int = 32

    def __post_init__(self) -> None:
        size = tuple(self.img_size)
        if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ValueError(f"img_size must be three positive ints (C, H, W), got {size}.")
        if size[1:] != (32, 32):
            raise ValueError(f"DCGANConfig supports 32x32 images only, got img_size {size}.")
        object.__setattr__(self, "img_size", size)
        _positive(self.latent_dim, name="latent_dim")
        _positive(self.features, name="features")


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: convolutions N(0, 0.02), batch-norm scales N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    r"""DCGAN generator (Radford et al., 2016) :math:`G:\mathbb{R}^k \to [0,1]^{C \times 32
    \times 32}`, :math:`z \sim \mathcal{N}(0, I_k)`.

    Transposed convolutions 1 -> 4 -> 8 -> 16 -> 32 pixels with batch norm and ReLU, then a
    sigmoid, so images are in :math:`[0, 1]` as deepinv expects. Unlike
    :class:`~deepinv_glowprior.Glow`, :math:`G` is not invertible: its range is a
    :math:`k`-dimensional manifold, and images off it have representation error. Use it in eval
    mode (batch norm then treats each sample alone). deepinv's own
    :class:`~deepinv.models.DCGANGenerator` makes only 64x64 or 128x128 images.

    :param DCGANConfig config: architecture (default: 1x32x32, :math:`k = 100`, 32 features).

    :Example:

    >>> import torch
    >>> generator = DCGANGenerator(DCGANConfig(latent_dim=16, features=8)).eval()
    >>> generator(torch.zeros(2, 16)).shape
    torch.Size([2, 1, 32, 32])
    """

    def __init__(self, config: DCGANConfig | None = None) -> None:
        super().__init__()
        self.config = DCGANConfig() if config is None else config
        k, f, c = self.config.latent_dim, self.config.features, self.config.img_size[0]
        layers: list[nn.Module] = []
        for cin, cout, stride, pad in ((k, 4 * f, 1, 0), (4 * f, 2 * f, 2, 1), (2 * f, f, 2, 1)):
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False)]
            layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(f, c, 4, 2, 1), nn.Sigmoid())
        self.apply(_init_weights)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`G(z)`: latents ``(B, k)`` to images ``(B, C, 32, 32)`` in [0, 1]."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}.")
        return self.net(z[:, :, None, None])

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num`` images :math:`G(z)`, :math:`z \\sim \\mathcal{N}(0, I)`."""
        device = next(self.parameters()).device
        z = torch.randn(num, self.latent_dim, generator=generator, device=device)
        return self(z)

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
        """Write config and weights atomically; read back with :meth:`load`."""
        payload = {"format": FORMAT, "config": asdict(self.config), "meta": meta or {}}
        atomic_torch_save({**payload, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu") -> DCGANGenerator:
        """A generator from :meth:`save` (or a training checkpoint), in eval mode."""
        payload = _load_checkpoint_file(path, map_location)
        if isinstance(payload, dict) and isinstance(payload.get("generator"), dict):
            payload = payload["generator"]
        if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
            raise CheckpointError(f"{path} is not a DCGANGenerator checkpoint (format {FORMAT}).")
        try:
            config = DCGANConfig(**payload["config"])
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"{path} holds an invalid DCGANConfig: {err}.") from err
        model = cls(config).to(map_location)
        model.load_state_dict(payload["state_dict"])
        return model.eval()


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: strided convolutions 32 -> 16 -> 8 -> 4 -> 1, one logit per image.

    :param DCGANConfig config: architecture (the generator's).
    """

    def __init__(self, config: DCGANConfig | None = None) -> None:
        super().__init__()
        config = DCGANConfig() if config is None else config
        f, c = config.features, config.img_size[0]
        self.net = nn.Sequential(
            nn.Conv2d(c, f, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(f, 2 * f, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * f),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * f, 4 * f, 4, 2, 1, bias=False),
            nn.BatchNorm2d(4 * f),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * f, 1, 4, 1, 0),
        )
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` that ``x`` is real."""
        return self.net(2 * x - 1).flatten()


def _save_grid(generator: DCGANGenerator, path: Path, seed: int) -> None:
    from torchvision.utils import save_image

    was_training = generator.training
    generator.eval()
    samples = generator.sample(64, torch.Generator().manual_seed(seed))
    generator.train(was_training)
    save_image(samples.cpu(), path, nrow=8, padding=1)


def train_dcgan(
    dataset: Dataset,
    out: str | os.PathLike,
    *,
    latent_dim: int = 100,
    features: int = 32,
    iterations: int = 4000,
    batch_size: int = 64,
    lr: float = 2e-4,
    beta1: float = 0.5,
    seed: int = 0,
    checkpoint_every: int = 200,
    sample_every: int = 1000,
    resume: bool = True,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> DCGANGenerator:
    r"""Train a DCGAN with the non-saturating GAN loss, Adam(lr, betas=(beta1, 0.999)).

    .. math::

        \max_D\, \mathbb{E}\log D(x) + \mathbb{E}\log(1 - D(G(z))), \qquad
        \max_G\, \mathbb{E}\log D(G(z)).

    The data order (:func:`~deepinv_glowprior.train.batch_indices`) and the latents of step
    :math:`t` are functions of ``seed`` and :math:`t`, and every ``checkpoint_every`` steps both
    networks, both optimisers and the history are saved atomically to ``out/checkpoint.pt``, so
    a killed run called again continues exactly (same weights as an uninterrupted run). At the
    end, ``out/generator.pt`` (generator only), ``log.jsonl`` and ``samples_final.png``.

    :param Dataset dataset: images ``(C, 32, 32)`` in [0, 1] (or tuples starting with one).
    :param out: run folder.
    :param int iterations: total steps (a resumed run continues up to this count).
    :return: the trained generator, in eval mode.

    :Example:

    >>> import torch
    >>> data = torch.rand(16, 1, 32, 32)
    >>> g = train_dcgan(data, "/tmp/dcgan-doc", latent_dim=8, features=4, iterations=2,
    ...                 batch_size=8, resume=False, progress=False)
    >>> g.sample(3).shape
    torch.Size([3, 1, 32, 32])
    """
    first = dataset[0]
    image = first[0] if isinstance(first, (tuple, list)) else first
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError(f"dataset items must be images (C, H, W), got {type(image).__name__}.")
    config = DCGANConfig(tuple(image.shape), latent_dim, features)
    check_image_batch(image[None], config.img_size, name="dataset[0]")
    settings = {
        "batch_size": _positive(batch_size, name="batch_size"),
        "lr": _number(lr, name="lr"),
    }
    settings.update(beta1=_number(beta1, name="beta1"), seed=seed, config=asdict(config))
    _positive(iterations, name="iterations")
    _positive(checkpoint_every, name="checkpoint_every")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator, discriminator = DCGANGenerator(config), DCGANDiscriminator(config)
    adam = {"lr": lr, "betas": (beta1, 0.999)}
    opt_g = torch.optim.Adam(generator.parameters(), **adam)
    opt_d = torch.optim.Adam(discriminator.parameters(), **adam)
    checkpoint, step, history = out / "checkpoint.pt", 0, []
    if resume and checkpoint.is_file():
        state = _load_checkpoint_file(checkpoint, advice="Delete it (or resume=False) to restart.")
        if not (isinstance(state, dict) and state.get("format") == TRAIN_FORMAT):
            raise CheckpointError(f"{checkpoint} is not a DCGAN training checkpoint.")
        for key, value in settings.items():
            if state["settings"].get(key) != value:
                raise ValueError(
                    f"Cannot resume from {checkpoint}: it was trained with {key}="
                    f"{state['settings'].get(key)!r}, now {key}={value!r}. Use the same settings "
                    "or another out folder."
                )
        generator.load_state_dict(state["generator"]["state_dict"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        step, history = int(state["step"]), list(state["history"])

    def save(step: int) -> None:
        with open(out / ".log.tmp", "w") as log:
            log.writelines(json.dumps(entry) + "\n" for entry in history)
        os.replace(out / ".log.tmp", out / "log.jsonl")
        generator_payload = {
            "format": FORMAT,
            "config": asdict(config),
            "meta": meta or {},
            "state_dict": generator.state_dict(),
        }
        atomic_torch_save(
            {
                "format": TRAIN_FORMAT,
                "generator": generator_payload,
                "discriminator": discriminator.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "step": step,
                "settings": settings,
                "history": history,
            },
            checkpoint,
        )

    bce = nn.BCEWithLogitsLoss()
    generator.train()
    discriminator.train()
    started, seconds_before = time.monotonic(), history[-1]["seconds"] if history else 0.0
    totals = torch.zeros(3)
    while step < iterations:
        x = _stack(dataset, batch_indices(step, len(dataset), batch_size, seed), "cpu")
        noise = torch.Generator().manual_seed(seed * 1_000_003 + step)
        fake = generator(torch.randn(batch_size, latent_dim, generator=noise))
        real_logits, fake_logits = discriminator(x), discriminator(fake.detach())
        loss_d = bce(real_logits, torch.ones_like(real_logits)) + bce(
            fake_logits, torch.zeros_like(fake_logits)
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        logits = discriminator(fake)
        loss_g = bce(logits, torch.ones_like(logits))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1
        totals += torch.tensor([loss_d.item(), loss_g.item(), 1.0])
        if step % checkpoint_every == 0 or step == iterations:
            entry = {"step": step, "loss_d": float(totals[0] / totals[2])}
            entry["loss_g"] = float(totals[1] / totals[2])
            entry["seconds"] = round(seconds_before + time.monotonic() - started, 2)
            history.append(entry)
            totals.zero_()
            save(step)
            if progress:
                print(json.dumps(entry), flush=True)
        if sample_every and step % sample_every == 0:
            _save_grid(generator, out / f"samples_{step:06d}.png", seed)
    generator.eval()
    generator.save(out / "generator.pt", meta={**(meta or {}), "history": history})
    _save_grid(generator, out / "samples_final.png", seed)
    return generator


class CSGMReconstructor(Reconstructor):
    r"""CSGM :footcite:p:`bora2017compressed`: reconstruction in the latent space of a GAN.

    For each measurement :math:`y_i`, independently of the rest of the batch,

    .. math::

        z_i^\star = \arg\min_z \|A(G(z)) - y_i\|^2 + \gamma \|z\|^2, \qquad \hat x_i = G(z_i^\star),

    solved by the batched, guarded L-BFGS of :func:`~deepinv_glowprior.solvers.batched_lbfgs`
    (the solver of :class:`~deepinv_glowprior.GlowReconstructor`). The first solve starts at
    :math:`z = 0`, each further restart at :math:`z \sim \mathcal{N}(0, \mathrm{init\_std}^2 I)`
    (one draw per restart shared by the batch, so a sample's start does not depend on its
    position); each sample keeps its lowest objective. The generator is put in eval mode during
    the solve (batch norm would otherwise couple the samples) and its weights get no gradient.
    Works under ``torch.no_grad()`` callers such as :func:`deepinv.test`.

    :param DCGANGenerator generator: a trained generator.
    :param float gamma: weight of :math:`\|z\|^2`.
    :param int restarts: solves per sample (the first from :math:`z = 0`).
    :param float init_std: standard deviation of the random restarts.
    :param float lr: initial L-BFGS step.
    :param int max_iter: L-BFGS iterations per solve.
    :param str line_search: ``"armijo"`` or ``"guard"`` (see ``batched_lbfgs``).
    :param int memory: curvature pairs per sample.
    :param float tol: relative decrease at which a sample stops.
    :param float | None max_step: largest latent step (``None``: no cap).
    :param int seed: seed of the random restarts.

    :Example:

    >>> import torch, deepinv as dinv
    >>> generator = DCGANGenerator(DCGANConfig(latent_dim=8, features=4)).eval()
    >>> physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    >>> y = physics(torch.rand(2, 1, 32, 32))
    >>> CSGMReconstructor(generator, restarts=2, max_iter=10)(y, physics).shape
    torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self,
        generator: DCGANGenerator,
        gamma: float = 0.0,
        restarts: int = 5,
        init_std: float = 1.0,
        lr: float = 1.0,
        max_iter: int = 300,
        line_search: str = "armijo",
        memory: int = 10,
        tol: float = 1e-6,
        max_step: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(generator, DCGANGenerator):
            raise TypeError(f"generator must be a DCGANGenerator, got {type(generator).__name__}.")
        if line_search not in ("armijo", "guard"):
            raise ValueError(f"line_search must be 'armijo' or 'guard', got {line_search!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}.")
        self.generator = generator
        self.gamma = _number(gamma, name="gamma")
        self.restarts = _positive(restarts, name="restarts")
        self.init_std = _number(init_std, name="init_std")
        self.lr = _number(lr, name="lr", allow_zero=False)
        self.max_iter = _positive(max_iter, name="max_iter")
        self.line_search, self.memory = line_search, _positive(memory, name="memory")
        self.tol = _number(tol, name="tol")
        self.max_step = None if max_step in (None, math.inf) else _number(max_step, name="max_step")
        self.seed = seed
        self.last_z: torch.Tensor | None = None
        self.last_objective: torch.Tensor | None = None

    @classmethod
    def from_preset(
        cls, generator: DCGANGenerator, preset: str = "paper", task: str = "cs", **overrides
    ) -> CSGMReconstructor:
        """The protocol of :meth:`GlowReconstructor.from_preset
        <deepinv_glowprior.GlowReconstructor.from_preset>` (guarded L-BFGS, memory 100; CS: lr
        0.1, 600 iterations; denoising / inpainting: lr 1, 400 iterations; gamma 0) with 10
        starts: :math:`z = 0` and 9 random restarts."""
        if preset != "paper":
            raise ValueError(f"preset must be 'paper', got {preset!r}.")
        if task not in ("cs", "denoising", "inpainting"):
            raise ValueError(f"task must be 'cs', 'denoising' or 'inpainting', got {task!r}.")
        settings: dict[str, Any] = {"line_search": "guard", "memory": 100, "tol": 1e-9}
        settings.update(restarts=10, lr=0.1 if task == "cs" else 1.0)
        settings.update(max_iter=600 if task == "cs" else 400)
        settings.update(overrides)
        return cls(generator, **settings)

    def forward(self, y: torch.Tensor, physics, **kwargs) -> torch.Tensor:
        """Reconstruct ``(B, C, 32, 32)`` images in [0, 1] from ``y = physics(x)``."""
        self._check_inputs(y, physics)
        generator, was_training = self.generator, self.generator.training
        needed = [p.requires_grad for p in generator.parameters()]
        generator.eval().requires_grad_(False)
        try:
            with torch.enable_grad():
                z, objective = self._solve(y.detach(), physics)
            with torch.no_grad():
                x = generator(z)
        finally:
            generator.train(was_training)
            for parameter, need in zip(generator.parameters(), needed, strict=True):
                parameter.requires_grad_(need)
        self.last_z, self.last_objective = z, objective
        return x

    def _solve(self, y: torch.Tensor, physics) -> tuple[torch.Tensor, torch.Tensor]:
        def objective(z: torch.Tensor) -> torch.Tensor:
            residual = (physics.A(self.generator(z)) - y).pow(2).flatten(1).sum(dim=1)
            return residual + self.gamma * z.pow(2).sum(dim=1)

        batch, k = y.shape[0], self.generator.latent_dim
        best_z, best_f = None, None
        for restart in range(self.restarts):
            z0 = y.new_zeros(batch, k)
            if restart > 0:
                draw = torch.Generator(device=y.device).manual_seed(self.seed + restart)
                noise = torch.randn(1, k, generator=draw, device=y.device, dtype=y.dtype)
                z0 = self.init_std * noise.expand(batch, k).clone()
            result = batched_lbfgs(
                objective,
                z0,
                max_iter=self.max_iter,
                lr=self.lr,
                memory=self.memory,
                tol=self.tol,
                line_search=self.line_search,
                max_step=self.max_step,
            )
            if best_z is None:
                best_z, best_f = result.z, result.objective
            else:
                better = result.objective < best_f
                best_z = torch.where(better[:, None], result.z, best_z)
                best_f = torch.where(better, result.objective, best_f)
        return best_z.detach(), best_f

    def _check_inputs(self, y: torch.Tensor, physics) -> None:
        check_measurement_batch(y, physics)
        weight = next(self.generator.parameters())
        if not torch.is_floating_point(y) or y.dtype != weight.dtype or y.device != weight.device:
            raise TypeError(
                f"y is {y.dtype} on {y.device} but the generator is {weight.dtype} on "
                f"{weight.device}; convert y with y.to(...)."
            )
        check_finite_tensor(y, name="y")
        check_physics_output(y, physics, self.generator.config.img_size, model="the generator")


def _sha256(path: Path) -> str:
    from deepinv_glowprior.pretrained import _sha256 as sha256

    return sha256(path)


def load_pretrained_dcgan(name: str = "dcgan_mnist32", device="cpu") -> DCGANGenerator:
    """A shipped DCGAN generator (eval mode), after checking its sha256.

    Shipped DCGANs are listed in ``weights/dcgan_registry.json`` (with their training command,
    seed and log), apart from the Glow zoo of :func:`~deepinv_glowprior.load_pretrained`.

    :Example:

    >>> generator = load_pretrained_dcgan("dcgan_mnist32")  # doctest: +SKIP
    """
    registry = json.loads(REGISTRY.read_text()) if REGISTRY.is_file() else {}
    if name not in registry:
        raise KeyError(f"Unknown DCGAN {name!r}; available: {', '.join(sorted(registry))}.")
    path = REGISTRY.parent / registry[name]["filename"]
    if _sha256(path) != registry[name]["sha256"]:
        raise OSError(f"Weights of {name!r} at {path} are corrupted; reinstall the package.")
    return DCGANGenerator.load(path, map_location=device)


def export_dcgan(run_dir: str | os.PathLike, name: str, notes: str = "") -> dict[str, Any]:
    """Ship a finished :func:`train_dcgan` run: generator weights, log and samples go into the
    package's ``weights`` folder and an entry into ``dcgan_registry.json``."""
    run_dir = Path(run_dir)
    payload = _load_checkpoint_file(run_dir / "generator.pt")
    meta, history = payload.get("meta", {}), payload.get("meta", {}).get("history", [])
    generator = DCGANGenerator.load(run_dir / "generator.pt")
    weights = REGISTRY.parent / f"{name}.pt"
    generator.save(weights, meta={"command": meta.get("command", ""), "seed": meta.get("seed")})
    shutil.copyfile(run_dir / "log.jsonl", REGISTRY.parent / f"{name}.log.jsonl")
    shutil.copyfile(run_dir / "samples_final.png", REGISTRY.parent / f"{name}_samples.png")
    entry = {
        "config": asdict(generator.config),
        "filename": weights.name,
        "sha256": _sha256(weights),
        "dataset": meta.get("dataset", ""),
        "command": meta.get("command", ""),
        "seed": meta.get("seed"),
        "iterations": history[-1]["step"] if history else 0,
        "train_minutes": round(history[-1]["seconds"] / 60, 1) if history else None,
        "log": f"{name}.log.jsonl",
        "samples": f"{name}_samples.png",
        "notes": notes,
    }
    registry = json.loads(REGISTRY.read_text()) if REGISTRY.is_file() else {}
    registry[name] = entry
    temporary = REGISTRY.with_suffix(".tmp")
    temporary.write_text(json.dumps(registry, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, REGISTRY)
    return entry


def csgm(
    generator: DCGANGenerator | str = "dcgan_mnist32", task: str = "cs", **overrides
) -> CSGMReconstructor:
    """The CSGM baseline in the paper protocol (:meth:`CSGMReconstructor.from_preset`), from a
    generator or the name of a shipped one."""
    if isinstance(generator, str):
        generator = load_pretrained_dcgan(generator)
    return CSGMReconstructor.from_preset(generator, "paper", task, **overrides)


def main(argv: list[str] | None = None) -> None:
    """``python -m deepinv_glowprior.dcgan {train,export}`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m deepinv_glowprior.dcgan")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a DCGAN (resumes from --out)")
    train.add_argument("--dataset", default="mnist", choices=("mnist", "fashion_mnist"))
    train.add_argument("--out", required=True)
    train.add_argument("--latent-dim", type=int, default=100)
    train.add_argument("--features", type=int, default=32)
    train.add_argument("--iterations", type=int, default=4000)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=2e-4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=200)
    train.add_argument("--sample-every", type=int, default=1000)
    train.add_argument("--threads", type=int, default=1)
    train.add_argument(
        "--exclude-digits", default="", help="comma-separated MNIST digits left out (bias study)"
    )
    export = commands.add_parser("export", help="ship a finished run into the package")
    export.add_argument("run_dir")
    export.add_argument("--name", required=True)
    export.add_argument("--notes", default="")
    args = parser.parse_args(argv)
    if args.command == "train":
        from deepinv_glowprior import data

        torch.set_num_threads(args.threads)
        command = "python -m deepinv_glowprior.dcgan " + " ".join(
            argv if argv is not None else __import__("sys").argv[1:]
        )
        excluded = tuple(int(d) for d in args.exclude_digits.split(",") if d.strip())
        if excluded and args.dataset != "mnist":
            parser.error("--exclude-digits applies to --dataset mnist only.")
        dataset = getattr(data, args.dataset)("train", exclude_classes=excluded)
        train_dcgan(
            dataset,
            args.out,
            latent_dim=args.latent_dim,
            features=args.features,
            iterations=args.iterations,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            sample_every=args.sample_every,
            meta={
                "command": command,
                "dataset": args.dataset,
                "seed": args.seed,
                "exclude_digits": list(excluded),
            },
        )
    else:
        print(json.dumps(export_dcgan(args.run_dir, args.name, args.notes), indent=2))


if __name__ == "__main__":
    main()
