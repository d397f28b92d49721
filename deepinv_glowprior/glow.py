r"""Glow, a multi-scale invertible generator :math:`x = G(z)` built on normflows blocks."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import normflows as nf
import torch
from torch import nn

from deepinv_glowprior._checks import (
    check_device,
    check_dtype_device,
    check_finite_tensor,
    check_image_batch,
    check_path,
)

__all__ = ["CheckpointError", "Glow", "GlowConfig", "atomic_torch_save", "read_checkpoint"]

CHECKPOINT_FORMAT = "deepinv-glowprior/glow-v1"
_COUPLINGS = ("affine", "additive")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class GlowConfig:
    r"""Architecture of a :class:`Glow`; stored in every checkpoint.

    :param tuple img_size: image size ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**levels``.
    :param int levels: number of scales :math:`L` (a squeeze and a split per level).
    :param int steps: flow steps :math:`K` per level (ActNorm, invertible 1x1 conv, coupling).
    :param int hidden_channels: width of each coupling network.
    :param str coupling: ``"affine"`` (bounded log-scale) or ``"additive"`` (volume preserving).
    :param float scale_bound: bound :math:`b` of the affine log-scale, :math:`s \mapsto
        b\tanh(s/b)`, so one coupling scales by at most :math:`e^{\pm b}` in either direction.
    :param int n_bits: bits per pixel of the training data after quantisation (8 for raw images,
        5 as in the paper's CelebA model).
    :param bool use_lu: LU-parametrised 1x1 convolutions.
    :param float | None shift_bound: bound :math:`c` of the affine shift, :math:`t \mapsto
        c\tanh(t/c)`, or ``None`` (unbounded, as in Glow). Bounded shifts stop one coupling's
        large output from feeding the next ones on images far from the data.
    """

    img_size: tuple[int, int, int] = (1, 32, 32)
    levels: int = 3
    steps: int = 8
    hidden_channels: int = 128
    coupling: str = "affine"
    scale_bound: float = 2.0
    n_bits: int = 8
    use_lu: bool = True
    shift_bound: float | None = None

    def __post_init__(self) -> None:
        size = tuple(self.img_size)
        if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ValueError(
                f"img_size must be three positive ints (C, H, W), got {self.img_size}."
            )
        object.__setattr__(self, "img_size", size)
        for name in ("levels", "steps", "hidden_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        factor = 2**self.levels
        if size[1] % factor or size[2] % factor:
            raise ValueError(
                f"H and W must be divisible by 2**levels = {factor} (each level halves them), "
                f"got img_size {size} with levels={self.levels}; pad the images or use fewer "
                "levels."
            )
        if self.coupling not in _COUPLINGS:
            raise ValueError(f"coupling must be one of {_COUPLINGS}, got {self.coupling!r}.")
        if not (isinstance(self.scale_bound, (int, float)) and 0 < self.scale_bound < math.inf):
            raise ValueError(f"scale_bound must be a finite number > 0, got {self.scale_bound!r}.")
        if self.shift_bound is not None:
            if not (isinstance(self.shift_bound, (int, float)) and 0 < self.shift_bound < math.inf):
                raise ValueError(
                    f"shift_bound must be a finite number > 0 or None, got {self.shift_bound!r}."
                )
            if self.coupling != "affine":
                raise ValueError("shift_bound applies to affine couplings; use coupling='affine'.")
        if not (isinstance(self.n_bits, int) and 1 <= self.n_bits <= 8):
            raise ValueError(f"n_bits must be an int in [1, 8], got {self.n_bits!r}.")


class _BoundedLogScale(nn.Module):
    r"""Wraps a coupling network so that its log-scale outputs are soft-clamped to :math:`\pm b`
    (and its shifts to :math:`\pm c` when ``shift_bound`` is given).

    normflows' ``AffineCoupling`` reads shifts from channels ``0::2`` and log-scales from ``1::2``.
    """

    def __init__(self, net: nn.Module, bound: float, shift_bound: float | None = None) -> None:
        super().__init__()
        self.net = net
        self.bound = float(bound)
        self.shift_bound = None if shift_bound is None else float(shift_bound)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        params = self.net(h)
        shift, raw_log_scale = params[:, 0::2], params[:, 1::2]
        if self.shift_bound is not None:
            shift = self.shift_bound * torch.tanh(shift / self.shift_bound)
        log_scale = self.bound * torch.tanh(raw_log_scale / self.bound)
        return torch.stack((shift, log_scale), dim=2).flatten(1, 2)


def _flow_step(channels: int, config: GlowConfig) -> nf.flows.GlowBlock:
    affine = config.coupling == "affine"
    with warnings.catch_warnings():
        # normflows builds its LU 1x1 convolutions with the deprecated torch.lu; the warning
        # would greet every user who loads a model and concerns no code of theirs.
        warnings.filterwarnings("ignore", message=r"torch\.lu is deprecated", category=UserWarning)
        block = nf.flows.GlowBlock(
            channels,
            config.hidden_channels,
            scale=affine,
            scale_map="exp",
            split_mode="channel",
            init_zeros=True,
            use_lu=config.use_lu,
        )
    if affine:
        coupling = block.flows[0].flows[1]
        coupling.param_map = _BoundedLogScale(
            coupling.param_map, config.scale_bound, config.shift_bound
        )
    return block


class _CachedInverseForward:
    """The decoding call of one ``nf.flows.Invertible1x1Conv``, with its weight :math:`W^{-1}`
    and log-determinant computed as normflows does, but once per state of the factors."""

    def __init__(self, convolution: nf.flows.Invertible1x1Conv) -> None:
        self.convolution = convolution
        self.key: tuple | None = None
        self.weight = self.log_det = None

    def _factors(self) -> list[torch.Tensor]:
        names = ("L", "U", "log_S", "P", "sign_S") if self.convolution.use_lu else ("W",)
        return [getattr(self.convolution, name) for name in names]

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        convolution = self.convolution
        factors = self._factors()
        if torch.is_grad_enabled() and any(factor.requires_grad for factor in factors):
            return type(convolution).forward(convolution, z)
        key = tuple((factor.data_ptr(), factor._version, factor.dtype) for factor in factors)
        if key != self.key:
            with torch.no_grad():
                self.weight, self.log_det = _decoding_weight(convolution)
            self.key = key
        channels = convolution.num_channels
        z_ = torch.nn.functional.conv2d(z, self.weight.view(channels, channels, 1, 1))
        return z_, self.log_det * z.size(2) * z.size(3)


def _decoding_weight(convolution: nf.flows.Invertible1x1Conv) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`W^{-1}` and :math:`-\log|\det W|` per pixel, with normflows' own arithmetic (so a
    test can compare its forward bit for bit)."""
    if convolution.use_lu:
        return convolution._assemble_W(inverse=True), -torch.sum(convolution.log_S)
    weight = convolution.W
    if weight.dtype == torch.float64:
        inverse = torch.inverse(weight)
    else:
        inverse = torch.inverse(weight.double()).type(weight.dtype)
    return inverse, -torch.slogdet(weight)[1]


def _load_checkpoint_file(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    advice: str = "Re-download or re-train it.",
) -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors: a missing file is a
    ``FileNotFoundError``, unreadable bytes (truncated, corrupted, not torch) a
    :class:`CheckpointError` ending with ``advice``, an unknown or absent device a
    ``ValueError``."""
    check_path(path)
    if isinstance(map_location, (str, torch.device)):
        check_device(map_location, name="map_location")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}; check the path or train a model first.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types (EOFError, KeyError, ...) on bad bytes
        first_line = (str(err).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"Could not read checkpoint {path}: the file is truncated, corrupted or not a torch "
            f"checkpoint ({type(err).__name__}: {first_line}). {advice}"
        ) from err


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a Glow checkpoint payload safely (``weights_only=True``), with clear errors.

    Training checkpoints, which hold the Glow payload under ``"glow"``, are accepted too.

    :param path: file written by :meth:`Glow.save` or by the training loop.
    :param map_location: device to load tensors onto.
    :return: dict with ``"format"``, ``"config"``, ``"state_dict"`` and optional ``"meta"``.
    """
    payload = _load_checkpoint_file(path, map_location)
    if isinstance(payload, dict) and isinstance(payload.get("glow"), dict):
        payload = payload["glow"]
    if not (isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT):
        raise CheckpointError(
            f"{path} is not a deepinv-glowprior Glow checkpoint (expected format "
            f"{CHECKPOINT_FORMAT!r}); save models with Glow.save()."
        )
    missing = [key for key in ("config", "state_dict") if not isinstance(payload.get(key), dict)]
    if missing:
        raise CheckpointError(f"Checkpoint {path} lacks {missing}; it is incomplete.")
    return payload


class Glow(nn.Module):
    r"""Glow (Kingma and Dhariwal, 2018) as an invertible generator for inverse problems.

    **Direction contract.** ``encode`` maps images to latents, :math:`z = G^{-1}(x)`, and
    ``decode`` maps latents to images, :math:`x = G(z)`; nothing else in this package uses the
    opposite naming of normflows (whose ``forward`` is latent to image).

    The latent is one flat tensor of shape ``(B, n)``, :math:`n = CHW`, distributed as
    :math:`\mathcal{N}(0, I_n)` under the model (the Gaussians of all scales are standard and
    concatenated), so :math:`\|z\|^2` is the prior energy:

    .. math::

        \log p_G(x) = \log \mathcal{N}(G^{-1}(x); 0, I_n)
        + \log \left|\det \frac{\partial G^{-1}(x)}{\partial x}\right|.

    Images are ``(B, C, H, W)`` in :math:`[0, 1]`; centring happens inside. Each level squeezes
    (space to depth), applies ``steps`` normflows ``GlowBlock`` s (ActNorm, invertible 1x1
    convolution, coupling) and, except the last, splits half of its channels off into the latent.
    Affine couplings use a soft-clamped log-scale :math:`b\tanh(s/b)`, so decoding far from the
    data (e.g. at a high temperature) stays finite. For training, :meth:`bits_per_dim`
    dequantises with uniform noise on ``n_bits`` levels.

    ActNorm is initialised from the first batch that is encoded (or by :meth:`initialize`).

    :param tuple img_size: ``(C, H, W)``.
    :param int levels: number of scales.
    :param int steps: flow steps per level.
    :param int hidden_channels: coupling network width.
    :param str coupling: ``"affine"`` or ``"additive"``.
    :param float scale_bound: bound of the affine log-scale.
    :param float | None shift_bound: bound of the affine shift (``None``: unbounded).
    :param int n_bits: quantisation bits of the training data.
    :param bool use_lu: LU-parametrised 1x1 convolutions.
    :param GlowConfig config: a full configuration instead of the keyword arguments.

    |sep|

    :Example:

    >>> import torch
    >>> from deepinv_glowprior import Glow
    >>> glow = Glow(img_size=(1, 16, 16), levels=2, steps=2, hidden_channels=16)
    >>> x = torch.rand(4, 1, 16, 16)
    >>> z, logdet = glow.encode(x)
    >>> z.shape
    torch.Size([4, 256])
    >>> bool(torch.allclose(glow.decode(z), x, atol=1e-4))
    True
    """

    def __init__(
        self,
        img_size: tuple[int, int, int] = (1, 32, 32),
        levels: int = 3,
        steps: int = 8,
        hidden_channels: int = 128,
        coupling: str = "affine",
        scale_bound: float = 2.0,
        n_bits: int = 8,
        use_lu: bool = True,
        shift_bound: float | None = None,
        *,
        config: GlowConfig | None = None,
    ) -> None:
        super().__init__()
        if config is None:
            config = GlowConfig(
                img_size=tuple(img_size),
                levels=levels,
                steps=steps,
                hidden_channels=hidden_channels,
                coupling=coupling,
                scale_bound=scale_bound,
                n_bits=n_bits,
                use_lu=use_lu,
                shift_bound=shift_bound,
            )
        self.config = config
        self.squeeze = nf.flows.Squeeze()
        self.flow_levels = nn.ModuleList()
        self._latent_shapes: list[tuple[int, int, int]] = []
        channels, height, width = config.img_size
        for level in range(config.levels):
            channels, height, width = channels * 4, height // 2, width // 2
            self.flow_levels.append(
                nn.ModuleList(_flow_step(channels, config) for _ in range(config.steps))
            )
            if level < config.levels - 1:
                self._latent_shapes.append((channels // 2, height, width))
                channels -= channels // 2
        self._latent_shapes.append((channels, height, width))
        self._latent_sizes = [math.prod(shape) for shape in self._latent_shapes]
        # Fixed with the architecture; found once because every decode asks is_initialized.
        self._actnorm_modules = tuple(m for m in self.modules() if isinstance(m, nf.flows.ActNorm))

    @classmethod
    def from_config(cls, config: GlowConfig) -> Glow:
        """Build an untrained Glow from a :class:`GlowConfig`."""
        return cls(config=config)

    # -- properties -------------------------------------------------------------------------
    @property
    def img_size(self) -> tuple[int, int, int]:
        """Image size ``(C, H, W)``."""
        return self.config.img_size

    @property
    def latent_dim(self) -> int:
        """Latent dimension :math:`n = CHW`."""
        return math.prod(self.config.img_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _actnorms(self) -> tuple[nf.flows.ActNorm, ...]:
        return self._actnorm_modules

    @property
    def is_initialized(self) -> bool:
        """Whether ActNorm's data-dependent initialisation has happened."""
        return all(bool(m.data_dep_init_done > 0) for m in self._actnorms())

    @contextlib.contextmanager
    def frozen(self) -> Iterator[Glow]:
        r"""Within, the weights are constants: they require no gradients (so autograd works out
        gradients with respect to inputs or latents only, which is cheaper) and each 1x1
        convolution's inverse is computed once (:meth:`cached_1x1_inverses`). Leaving restores
        every weight's ``requires_grad``. What solvers and samplers run inside.

        :Example:

        >>> import torch
        >>> from deepinv_glowprior import Glow
        >>> glow = Glow(img_size=(1, 8, 8), levels=2, steps=2, hidden_channels=8)
        >>> with glow.frozen():
        ...     any(p.requires_grad for p in glow.parameters())
        False
        >>> all(p.requires_grad for p in glow.parameters())
        True
        """
        needed_grad = [parameter.requires_grad for parameter in self.parameters()]
        self.requires_grad_(False)
        try:
            with self.cached_1x1_inverses():
                yield self
        finally:
            for parameter, needed in zip(self.parameters(), needed_grad, strict=True):
                parameter.requires_grad_(needed)

    @contextlib.contextmanager
    def cached_1x1_inverses(self) -> Iterator[Glow]:
        r"""Within, each invertible 1x1 convolution computes its decoding weight :math:`W^{-1}`
        once, not at every decode.

        Decoding applies :math:`W^{-1}`, which normflows assembles from the LU factors and
        inverts in double precision at every call: a small cost per call, but one a solver pays
        at each of its hundreds of decodes, and the larger share the fewer images a call
        decodes. The cached weight is the one the call would compute, so results are the same
        bit for bit. It is recomputed when a factor changes (an optimiser step, loading
        weights, a move to another device or dtype), and not used where gradients must reach
        the weights (grad mode on and the factors requiring gradients): training inside is
        safe, only not faster. Leaving restores the modules.

        :Example:

        >>> import torch
        >>> from deepinv_glowprior import Glow
        >>> glow = Glow(img_size=(1, 8, 8), levels=2, steps=2, hidden_channels=8)
        >>> glow = glow.initialize(torch.rand(4, 1, 8, 8))
        >>> z = torch.randn(2, glow.latent_dim)
        >>> with torch.no_grad(), glow.cached_1x1_inverses():
        ...     cached = glow.decode(z)
        >>> bool(torch.equal(cached, glow.decode(z).detach()))
        True
        """
        convolutions = [
            module
            for module in self.modules()
            if isinstance(module, nf.flows.Invertible1x1Conv) and "forward" not in vars(module)
        ]
        for convolution in convolutions:
            convolution.forward = _CachedInverseForward(convolution)
        try:
            yield self
        finally:
            for convolution in convolutions:
                del convolution.forward

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> Glow:
        """Initialise ActNorm from a data batch ``x`` (B, C, H, W) in [0, 1]; returns ``self``."""
        check_image_batch(x, self.img_size, dtype=self.dtype, device=self.device)
        self._encode(x)
        return self

    # -- the two directions -----------------------------------------------------------------
    def encode(
        self, x: torch.Tensor, *, check_range: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Image to latent: :math:`z = G^{-1}(x)` and :math:`\log|\det \partial z/\partial x|`.

        :param torch.Tensor x: images ``(B, C, H, W)`` in :math:`[0, 1]`.
        :param bool check_range: reject values outside :math:`[0, 1]` (disable for off-range
            round trips such as ``encode(decode(z))``).
        :return: ``(z, logdet)`` of shapes ``(B, n)`` and ``(B,)``.
        """
        check_image_batch(
            x, self.img_size, dtype=self.dtype, device=self.device, check_range=check_range
        )
        return self._encode(x)

    def decode(
        self, z: torch.Tensor, *, return_logdet: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        r"""Latent to image: :math:`x = G(z)`, not clamped (so gradients flow everywhere).

        :param torch.Tensor z: latents ``(B, n)``.
        :param bool return_logdet: also return :math:`\log|\det \partial x/\partial z|`, shape
            ``(B,)``.
        :return: images ``(B, C, H, W)`` (and the log-determinant).
        """
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor of shape (B, {self.latent_dim}).")
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"z must have shape (B, {self.latent_dim}) (one flat latent per image), "
                f"got {tuple(z.shape)}."
            )
        if z.shape[0] == 0:
            raise ValueError("z is an empty batch; pass at least one latent.")
        check_dtype_device(z, name="z", dtype=self.dtype, device=self.device)
        check_finite_tensor(z, name="z")
        x, logdet = self._decode(z)
        return (x, logdet) if return_logdet else x

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            per_channel = x.shape[0] * math.prod(self._latent_shapes[-1][1:])
            if per_channel < 2:
                raise ValueError(
                    f"ActNorm initialises from the first encoded batch, and {x.shape[0]} image(s) "
                    "give one value per channel at the coarsest level (no spread to normalise). "
                    "Call glow.initialize(images) with a batch of several images first."
                )
        h = x - 0.5
        logdet = x.new_zeros(x.shape[0])
        pieces = []
        last = len(self.flow_levels) - 1
        for level, steps in enumerate(self.flow_levels):
            h, _ = self.squeeze.inverse(h)
            for step in steps:
                h, step_logdet = step.inverse(h)
                logdet = logdet + step_logdet
            if level < last:
                piece_channels = self._latent_shapes[level][0]
                piece, h = h.split([piece_channels, h.shape[1] - piece_channels], dim=1)
                pieces.append(piece.flatten(1))
        pieces.append(h.flatten(1))
        return torch.cat(pieces, dim=1), logdet

    def _decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            warnings.warn(
                "Decoding with an uninitialised Glow: ActNorm is set to the identity. Train the "
                "model or call glow.initialize(images) first.",
                stacklevel=3,
            )
            for actnorm in self._actnorms():
                actnorm.data_dep_init_done = torch.tensor(1.0, device=z.device)
        batch = z.shape[0]
        pieces = z.split(self._latent_sizes, dim=1)
        logdet = z.new_zeros(batch)
        h = pieces[-1].reshape(batch, *self._latent_shapes[-1])
        last = len(self.flow_levels) - 1
        for level in range(last, -1, -1):
            if level < last:
                piece = pieces[level].reshape(batch, *self._latent_shapes[level])
                h = torch.cat((piece, h), dim=1)
            for step in reversed(self.flow_levels[level]):
                h, step_logdet = step(h)
                logdet = logdet + step_logdet
            h, _ = self.squeeze(h)
        return h + 0.5, logdet

    # -- densities ----------------------------------------------------------------------------
    @staticmethod
    def latent_log_prob(z: torch.Tensor) -> torch.Tensor:
        r"""Standard normal log-density :math:`\log\mathcal{N}(z; 0, I_n)` per sample, ``(B,)``."""
        return -0.5 * (z.pow(2).sum(dim=1) + z.shape[1] * math.log(2 * math.pi))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""Continuous log-density :math:`\log p_G(x)` in nats, shape ``(B,)``.

        :param torch.Tensor x: images ``(B, C, H, W)`` in :math:`[0, 1]`.
        """
        z, logdet = self.encode(x)
        return self.latent_log_prob(z) + logdet

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer bin index in ``[0, 2**n_bits - 1]`` of each pixel of ``x`` in [0, 1]."""
        n_bins = 2**self.config.n_bits
        return torch.floor(x * n_bins).clamp_(0, n_bins - 1)

    def discretize(self, x: torch.Tensor) -> torch.Tensor:
        """The data value :math:`k/(2^b - 1)` of each pixel's bin :math:`k`: a continuous
        (dequantised) image of the Glow back on the grid of its ``n_bits`` training images
        (8-bit images as :math:`k/255`), undoing :meth:`dequantize`; ``x`` is clamped to [0, 1]."""
        return self.quantize(x.clamp(0, 1)) / (2**self.config.n_bits - 1)

    def dequantize(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Quantise ``x`` to ``n_bits`` and add uniform noise within each bin (values in [0, 1)).

        ``noise`` (uniform in [0, 1), shape of ``x``) is drawn from ``generator`` when not given.
        """
        if noise is None:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        elif not isinstance(noise, torch.Tensor) or noise.shape != x.shape:
            shape = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(
                f"noise must be a tensor of the shape of x, {tuple(x.shape)}, got {shape}; draw "
                "it with torch.rand_like(x) or leave it out."
            )
        else:
            check_dtype_device(noise, name="noise", dtype=x.dtype, device=x.device)
            if not bool(((noise >= 0) & (noise <= 1)).all()):  # False for NaN too
                raise ValueError(
                    "noise must hold uniform values in [0, 1) (torch.rand_like(x)); it has values "
                    "outside [0, 1] or NaN."
                )
        return (self.quantize(x) + noise) / 2**self.config.n_bits

    def bits_per_dim(
        self,
        x: torch.Tensor,
        *,
        dequantize: bool = True,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Discrete negative log-likelihood in bits per dimension, shape ``(B,)``.

        .. math::

            \mathrm{bpd}(x) = \frac{-\log p_G(\tilde x) + n \log 2^{\text{n\_bits}}}{n \log 2},

        with :math:`\tilde x` the dequantised image (uniform noise in each bin), or the bin centre
        when ``dequantize=False``. This is the training loss. The dequantisation noise comes from
        ``generator``, or is given as ``noise`` (uniform in [0, 1), shape of ``x``).
        """
        check_image_batch(x, self.img_size, dtype=self.dtype, device=self.device)
        n_bins = 2**self.config.n_bits
        if dequantize:
            x_continuous = self.dequantize(x, generator, noise)
        else:
            x_continuous = (self.quantize(x) + 0.5) / n_bins
        z, logdet = self._encode(x_continuous)
        log_prob = self.latent_log_prob(z) + logdet
        n = self.latent_dim
        return (-log_prob + n * math.log(n_bins)) / (n * math.log(2))

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        temperature: float = 1.0,
        *,
        generator: torch.Generator | None = None,
        clamp: bool = True,
    ) -> torch.Tensor:
        """Draw images :math:`G(T z)`, :math:`z\\sim\\mathcal{N}(0, I)`, at temperature ``T``.

        :param int num_samples: number of images.
        :param float temperature: latent standard deviation (0.7 gives cleaner samples).
        :param torch.Generator generator: random generator, for reproducibility.
        :param bool clamp: clamp the images to [0, 1].
        :return: images ``(num_samples, C, H, W)``.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
        if not (isinstance(temperature, (int, float)) and 0 <= temperature < math.inf):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}.")
        z = torch.randn(
            num_samples, self.latent_dim, generator=generator, device=self.device, dtype=self.dtype
        )
        x, _ = self._decode(temperature * z)
        return x.clamp(0, 1) if clamp else x

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_payload(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """The dict :meth:`save` writes: format tag, config, weights and optional metadata."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.config),
            "state_dict": self.state_dict(),
            "meta": dict(meta or {}),
        }

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
        """Save config and weights atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.checkpoint_payload(meta), path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Glow:
        """Build a Glow from a checkpoint's config and weights, in eval mode."""
        payload = read_checkpoint(path, map_location)
        try:
            config = GlowConfig(**payload["config"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"{path} holds an invalid Glow config ({err}); the file is damaged or was not "
                "written by Glow.save()."
            ) from err
        model = cls(config=config).to(map_location)
        model._load_state(payload["state_dict"], path)
        return model.eval()

    def load_weights(self, path: str | os.PathLike) -> Glow:
        """Load a checkpoint into this model; a differing config field is an error naming it."""
        payload = read_checkpoint(path, self.device)
        saved = payload["config"]
        for field in fields(GlowConfig):
            ours = getattr(self.config, field.name)
            theirs = saved.get(field.name)
            if isinstance(ours, tuple) and theirs is not None:
                theirs = tuple(theirs)
            if ours != theirs:
                raise CheckpointError(
                    f"Checkpoint {path} was saved with {field.name}={theirs!r} but this model has "
                    f"{field.name}={ours!r}; build the model with Glow.load(path) instead."
                )
        self._load_state(payload["state_dict"], path)
        return self

    def _load_state(self, state_dict: dict[str, torch.Tensor], path: object) -> None:
        non_finite = [
            name
            for name, value in state_dict.items()
            if isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ]
        if non_finite:
            raise CheckpointError(
                f"Weights in {path} hold NaN or infinite values ({', '.join(non_finite[:3])}"
                f"{', ...' if len(non_finite) > 3 else ''}): the run that wrote them diverged or "
                "the file is damaged. Use an earlier checkpoint, or retrain with a lower lr."
            )
        ours = self.state_dict()
        missing = [name for name in ours if name not in state_dict]
        unexpected = [name for name in state_dict if name not in ours]
        reshaped = [
            name
            for name in ours
            if name in state_dict
            and tuple(getattr(state_dict[name], "shape", ())) != ours[name].shape
        ]
        problems = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if reshaped:
            name = reshaped[0]
            problems.append(
                f"{len(reshaped)} of another shape (e.g. {name}: {tuple(state_dict[name].shape)} "
                f"in the file, {tuple(ours[name].shape)} here)"
            )
        if problems:
            raise CheckpointError(
                f"Weights in {path} do not fit this architecture: {'; '.join(problems)} tensors. "
                "The file's config does not describe its weights: it was edited or damaged."
            )
        try:
            self.load_state_dict(state_dict)
        except RuntimeError as err:
            first_line = (str(err).splitlines() or [""])[0][:200]
            raise CheckpointError(
                f"Weights in {path} do not fit this architecture: {first_line}"
            ) from err

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    A crash mid-write leaves the previous file intact.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o644)  # mkstemp makes the file private; checkpoints are shareable
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
