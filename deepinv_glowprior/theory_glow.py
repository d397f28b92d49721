r"""Theorem 1 applied to a trained Glow: its Jacobian spectrum and the CS error it predicts.

Theorem 1 (:mod:`deepinv_glowprior.theory`) is about a *linear* generator. A trained Glow
:math:`G` is not linear, but around the latent :math:`z^\star = G^{-1}(x)` of an image it is
approximately affine, with Jacobian :math:`J = \partial G / \partial z\,(z^\star) = U S V^\top`
(:func:`generator_jacobian`, :func:`jacobian_singular_values`). For noiseless compressed sensing
:math:`y = Ax`, :math:`A \in \mathbb{R}^{m \times n}` Gaussian, :func:`glow_cs_error_curve`
compares, for each :math:`m`, three errors and the bounds:

1. **measured**: :math:`\|G(\hat z) - x\|^2`, with :math:`\hat z` found by
   :class:`~deepinv_glowprior.GlowReconstructor` (L-BFGS from :math:`z = 0`,
   :math:`\gamma = 0`), the setting of the theorem with the real, nonlinear :math:`G`;
2. **linearised at the latent**: the same procedure with :math:`G` replaced by its tangent
   :math:`x + J(z - z^\star)`. Descent from zero stays in :math:`\operatorname{range}(J^\top
   A^\top)` and converges to :math:`\hat z = P z^\star` (:math:`P` the orthogonal projector onto
   that range), so the error is

   .. math::

       \|J (I - P) z^\star\|^2 = \|S (I - P_{S\Omega})\, V^\top z^\star\|^2, \qquad
       \Omega = U^\top A^\top \sim \text{i.i.d. } \mathcal{N}(0, 1),

   the error of Theorem 1 with :math:`G = J` and the particular latent :math:`z_0 = z^\star`;
3. **Theorem 1, linearised**: its average over :math:`z_0 \sim \mathcal{N}(0, I_n)`, i.e. the
   theorem for :math:`x_0 \sim \mathcal{N}(0, J J^\top)` with the linear generator :math:`J`
   (:func:`~deepinv_glowprior.theory.linear_recovery_error`), and its lower and upper bounds
   from the singular values of :math:`J`.

The bounds bracket (3) by the theorem. (2) differs from (3) only because :math:`z^\star` is one
latent rather than an isotropic draw (a data latent typically has :math:`\|z^\star\| < \sqrt n`
and need not spread evenly over the right singular vectors of :math:`J`). (1) differs from (2)
because of the nonlinearity (descent starts at :math:`z = 0`, far from :math:`z^\star`, where the
Jacobian is another one) and because the solver stops after finitely many iterations. So the
measured error lies between the bounds only to the extent that the local linear picture holds;
how far it does is what the comparison shows. All quantities are averaged over the images.

The CS matrices of :func:`~deepinv_glowprior.tasks.compressed_sensing` have
:math:`\mathcal{N}(0, 1/m)` entries; a scaling of :math:`A` changes neither the noiseless
minimisers nor the row space of :math:`AJ`, so the theorem's :math:`\mathcal{N}(0, 1)` applies.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.func import vjp, vmap

from deepinv_glowprior._checks import check_finite_tensor, check_image_batch
from deepinv_glowprior.glow import Glow
from deepinv_glowprior.theory import (
    _check_int,
    _check_measurements,
    linear_recovery_error,
    theorem1_lower_bound,
    theorem1_upper_bound,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "GlowPanelRow",
    "format_glow_panel",
    "generator_jacobian",
    "glow_cs_error_curve",
    "jacobian_singular_values",
    "main_glow_panel",
    "plot_glow_panel",
]

_DTYPES = (torch.float32, torch.float64)


def _check_glow(glow: object) -> Glow:
    if not isinstance(glow, Glow):
        raise TypeError(f"glow must be a deepinv_glowprior.Glow, got {type(glow).__name__}.")
    if not glow.is_initialized:
        raise ValueError(
            "The Glow is untrained (ActNorm not initialised); load a trained model or call "
            "glow.initialize(images) first."
        )
    return glow


def _in_dtype(glow: Glow, dtype: torch.dtype | None) -> Glow:
    """``glow`` itself, or a copy of it in ``dtype`` (the original is left untouched)."""
    if dtype is None or dtype == glow.dtype:
        return glow
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}.")
    return copy.deepcopy(glow).to(dtype)


def generator_jacobian(
    glow: Glow, z: torch.Tensor, *, dtype: torch.dtype | None = None, chunk_size: int = 128
) -> torch.Tensor:
    r"""Jacobian :math:`J = \partial G / \partial z` of the decoder at one latent.

    .. math::

        J_{ij} = \frac{\partial\, G(z)_i}{\partial z_j}, \qquad i, j = 1, \dots, n,

    with the image :math:`G(z)` flattened in ``(C, H, W)`` order. Rows are computed as
    vector-Jacobian products, one decoder pass and ``chunk_size`` vectorised backward passes
    (:func:`torch.func.vjp` under :func:`torch.func.vmap`) at a time. Its log-determinant
    :math:`\sum_j \log s_j` equals the one :meth:`~deepinv_glowprior.Glow.decode` returns.

    :param Glow glow: an initialised Glow; its weights are not changed.
    :param torch.Tensor z: one flat latent of shape ``(n,)``.
    :param dtype: ``torch.float32`` or ``torch.float64`` (a float64 copy of the model is about
        five times slower on CPU); default: the Glow's dtype.
    :param int chunk_size: rows per vectorised backward pass (memory grows with it).
    :return: the ``(n, n)`` Jacobian in ``dtype``.
    """
    glow = _in_dtype(_check_glow(glow), dtype)
    chunk_size = _check_int(chunk_size, "chunk_size", minimum=1)
    n = glow.latent_dim
    if not isinstance(z, torch.Tensor) or z.shape != (n,):
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"z must be one flat latent, a tensor of shape ({n},), got {shape}.")
    check_finite_tensor(z, name="z")
    z = z.detach().to(device=glow.device, dtype=glow.dtype)

    def decode(latent: torch.Tensor) -> torch.Tensor:
        return glow._decode(latent[None])[0].reshape(n)

    with glow.frozen(), torch.enable_grad():
        _, pullback = vjp(decode, z)
        eye = torch.eye(n, device=glow.device, dtype=glow.dtype)
        rows = [vmap(pullback)(eye[i : i + chunk_size])[0] for i in range(0, n, chunk_size)]
    return torch.cat(rows).detach()


def _latents_and_svd(
    glow: Glow, images: torch.Tensor, dtype: torch.dtype | None, chunk_size: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image: its latent, the singular values of the Jacobian there and its right singular
    vectors (as rows), all ``float64``."""
    glow = _check_glow(glow)
    check_image_batch(images, glow.img_size, name="images", dtype=glow.dtype, device=glow.device)
    with torch.no_grad():
        latents, _ = glow.encode(images)
    glow = _in_dtype(glow, dtype)
    results = []
    for z in latents:
        jacobian = generator_jacobian(glow, z, chunk_size=chunk_size).double()
        _, values, right = torch.linalg.svd(jacobian)
        results.append((z.double(), values, right))
    return results


def jacobian_singular_values(
    glow: Glow, images: torch.Tensor, *, dtype: torch.dtype | None = None, chunk_size: int = 128
) -> torch.Tensor:
    r"""Singular values of :math:`\partial G / \partial z` at the latent :math:`G^{-1}(x)` of
    each image :math:`x`.

    :param Glow glow: an initialised Glow.
    :param torch.Tensor images: ``(B, C, H, W)`` in :math:`[0, 1]`, the Glow's dtype and device.
    :param dtype: dtype of the Jacobian (see :func:`generator_jacobian`); the SVD is in float64.
    :param int chunk_size: rows per vectorised backward pass.
    :return: ``float64`` tensor ``(B, n)``, each row sorted non-increasing, :math:`s_1 \geq
        \dots \geq s_n > 0`.
    """
    results = _latents_and_svd(glow, images, dtype, chunk_size)
    return torch.stack([values for _, values, _ in results])


def _error_at_latent(
    values: torch.Tensor, w: torch.Tensor, m: int, trials: int, seed: int
) -> tuple[float, float]:
    r"""Monte Carlo :math:`\mathbb{E}_\Omega \|S (I - P_{S\Omega}) w\|^2` for ``(n, m)``
    Gaussian :math:`\Omega` (drawn as the transpose of an ``(m, n)`` matrix, so that a larger
    ``m`` with the same seed adds rows to the same matrix)."""
    generator = torch.Generator().manual_seed(int(seed))
    omega = torch.randn(trials, m, values.numel(), dtype=torch.float64, generator=generator)
    q, _ = torch.linalg.qr(values[:, None] * omega.transpose(-2, -1))
    residual = w - (q @ (q.transpose(-2, -1) @ w[:, None])).squeeze(-1)
    errors = (values * residual).square().sum(dim=-1)
    return float(errors.mean()), float(errors.std() / math.sqrt(trials))


@dataclass(frozen=True)
class GlowPanelRow:
    r"""One number of measurements of :func:`glow_cs_error_curve`; errors are
    :math:`\|\hat x - x\|^2` averaged over the images.

    :param int m: number of measurements.
    :param float ratio: :math:`m / n`.
    :param float measured_mean: measured error of the Glow reconstruction.
    :param float measured_stderr: its standard error over images and matrices.
    :param float linear_mean: Theorem 1 for the linearised generator (Monte Carlo over
        :math:`A` and :math:`z_0 \sim \mathcal{N}(0, I)`).
    :param float linear_stderr: its Monte Carlo standard error.
    :param float at_latent_mean: error of the tangent model at the image's own latent
        (Monte Carlo over :math:`A`).
    :param float at_latent_stderr: its Monte Carlo standard error.
    :param float lower_bound: Theorem 1 lower bound from the Jacobian's singular values.
    :param float upper_bound: Theorem 1 upper bound from the Jacobian's singular values.
    :param float residual_mean: mean final data misfit :math:`\|A G(\hat z) - y\|^2` of the
        reconstructions (with the :math:`\mathcal{N}(0, 1/m)` matrices), which shows whether the
        solver converged: the theorem describes the converged limit.
    :param tuple measured_errors: the measured errors themselves, image by image for each matrix.
    """

    m: int
    ratio: float
    measured_mean: float
    measured_stderr: float
    linear_mean: float
    linear_stderr: float
    at_latent_mean: float
    at_latent_stderr: float
    lower_bound: float
    upper_bound: float
    residual_mean: float
    measured_errors: tuple[float, ...]

    def as_dict(self) -> dict[str, float | int]:
        """The row as a plain ``dict``."""
        return asdict(self)


def glow_cs_error_curve(
    glow: Glow,
    images: torch.Tensor,
    ms: Sequence[int],
    trials_per_m: int = 1,
    seed: int = 0,
    max_iter: int = 400,
    memory: int = 50,
    linear_trials: int = 4,
    dtype: torch.dtype | None = None,
    chunk_size: int = 128,
    progress: bool = False,
) -> list[GlowPanelRow]:
    r"""Measured noiseless CS error of a Glow against Theorem 1 for its linearisation.

    For each image :math:`x` (latent :math:`z^\star = G^{-1}(x)`, Jacobian :math:`J = U S V^\top`
    there) and each :math:`m`:

    - **measured**: ``trials_per_m`` Gaussian matrices (``compressed_sensing(seed=seed + t)``,
      so a larger :math:`m` adds rows to the same matrix), :math:`y = Ax`, and
      :math:`\hat x = G(\hat z)` with :math:`\hat z` from
      :class:`~deepinv_glowprior.GlowReconstructor` with :math:`\gamma = 0`, ``init="zero"``,
      L-BFGS (its directions are combinations of gradients, so in the linear case it stays in
      the row space, like gradient descent). The error :math:`\|G(\hat z) - x\|^2` is taken
      before clamping to :math:`[0, 1]` (clamping could only lower it);
    - **Theorem 1, linearised**: :func:`~deepinv_glowprior.theory.linear_recovery_error` with
      the singular values :math:`s` of :math:`J`, i.e. the expected error for
      :math:`x_0 \sim \mathcal{N}(0, J J^\top)` with the linear generator :math:`J`, and
      :func:`~deepinv_glowprior.theory.theorem1_lower_bound` /
      :func:`~deepinv_glowprior.theory.theorem1_upper_bound`, which bracket it;
    - **linearised at the latent**: :math:`\mathbb{E}_A \|J (I - P_{J^\top A^\top}) z^\star\|^2`,
      the exact limit of gradient descent from zero on the tangent model
      :math:`x + J(z - z^\star)`: Theorem 1's error for the image's own latent instead of an
      average over :math:`z_0`.

    Averaging over images keeps the bounds valid for the averaged linear error (the bounds are
    averaged too). Whether the *measured* error lies between them tests how well the local
    linearisation describes the nonlinear recovery (see :mod:`deepinv_glowprior.theory_glow`).

    :param Glow glow: an initialised Glow.
    :param torch.Tensor images: ``(B, C, H, W)`` test images in :math:`[0, 1]`.
    :param ms: numbers of measurements, each in :math:`[4, n)`; sorted and deduplicated.
    :param int trials_per_m: measurement matrices per :math:`m` for the measured error.
    :param int seed: seed of the matrices and of the Monte Carlo estimates.
    :param int max_iter: L-BFGS iterations per reconstruction. Near the solution the problem is
        as ill-conditioned as :math:`AJ`, and :math:`s_1 / s_n` of a trained Glow is large, so
        at large :math:`m` the measured error can be limited by this budget; see
        ``residual_mean``.
    :param int memory: L-BFGS curvature pairs per sample.
    :param int linear_trials: Monte Carlo trials of the two linearised errors, at least 2.
    :param dtype: dtype of the Jacobians (see :func:`generator_jacobian`).
    :param int chunk_size: rows per vectorised backward pass of the Jacobians.
    :param bool progress: show a progress bar over :math:`m`.
    :return: one :class:`GlowPanelRow` per :math:`m`, increasing in :math:`m`.
    """
    from tqdm.auto import tqdm

    from deepinv_glowprior.reconstructor import GlowReconstructor
    from deepinv_glowprior.tasks import compressed_sensing

    glow = _check_glow(glow)
    n = glow.latent_dim
    if isinstance(ms, (str, bytes)) or not isinstance(ms, Sequence) or len(ms) == 0:
        raise ValueError(f"ms must be a non-empty sequence of integers in [4, {n}), got {ms!r}.")
    ms = sorted({_check_measurements(m, n) for m in ms})
    trials_per_m = _check_int(trials_per_m, "trials_per_m", minimum=1)
    linear_trials = _check_int(linear_trials, "linear_trials", minimum=2)
    max_iter = _check_int(max_iter, "max_iter", minimum=1)
    memory = _check_int(memory, "memory", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    spectra = _latents_and_svd(glow, images, dtype, chunk_size)
    reconstructor = GlowReconstructor(
        glow, gamma=0.0, regularizer=None, init="zero", max_iter=max_iter, memory=memory, tol=1e-10
    )

    rows = []
    for m in tqdm(ms, desc="m", disable=not progress):
        errors, residuals = [], []
        for trial in range(trials_per_m):
            physics = compressed_sensing(
                glow.img_size, m / n, noise_norm=0.0, seed=seed + trial, device=glow.device
            ).to(dtype=glow.dtype)
            y = physics.A(images)
            with torch.no_grad():
                solution = reconstructor.solve(y, physics)
                x_hat, _ = glow._decode(solution.z)
            errors.append((x_hat - images).double().square().flatten(1).sum(dim=1))
            residuals.append(solution.residual.detach().double())
        errors = torch.cat(errors)
        measured_stderr = (
            float(errors.std() / math.sqrt(errors.numel())) if errors.numel() > 1 else math.nan
        )
        linear, at_latent, lower, upper = [], [], [], []
        for z, values, right in spectra:
            linear.append(linear_recovery_error(values, m, trials=linear_trials, seed=seed))
            at_latent.append(_error_at_latent(values, right @ z, m, linear_trials, seed))
            lower.append(theorem1_lower_bound(values, m))
            upper.append(theorem1_upper_bound(values, m))
        count = len(spectra)
        rows.append(
            GlowPanelRow(
                m=m,
                ratio=m / n,
                measured_mean=float(errors.mean()),
                measured_stderr=measured_stderr,
                linear_mean=sum(mean for mean, _ in linear) / count,
                linear_stderr=math.sqrt(sum(se**2 for _, se in linear)) / count,
                at_latent_mean=sum(mean for mean, _ in at_latent) / count,
                at_latent_stderr=math.sqrt(sum(se**2 for _, se in at_latent)) / count,
                lower_bound=sum(lower) / count,
                upper_bound=sum(upper) / count,
                residual_mean=float(torch.cat(residuals).mean()),
                measured_errors=tuple(errors.tolist()),
            )
        )
    return rows


def _check_table(table: Sequence[GlowPanelRow]) -> list[GlowPanelRow]:
    if (
        isinstance(table, (str, bytes))
        or not isinstance(table, Sequence)
        or len(table) == 0
        or not all(isinstance(row, GlowPanelRow) for row in table)
    ):
        raise ValueError("table must be a non-empty list of GlowPanelRow from glow_cs_error_curve.")
    return list(table)


def format_glow_panel(table: Sequence[GlowPanelRow]) -> str:
    """The rows of :func:`glow_cs_error_curve` as a fixed-width text table.

    :param table: rows from :func:`glow_cs_error_curve`.
    :return: the table, one line per :math:`m` under a header.
    """
    table = _check_table(table)
    header = (
        f"{'m':>5s} {'m/n':>6s} {'measured':>10s} {'± s.e.':>9s} {'lower':>10s} "
        f"{'Thm1 lin.':>10s} {'± s.e.':>9s} {'upper':>10s} {'at latent':>10s} {'residual':>9s}"
    )
    lines = [header]
    for row in table:
        lines.append(
            f"{row.m:5d} {row.ratio:6.3f} {row.measured_mean:10.3e} {row.measured_stderr:9.2e} "
            f"{row.lower_bound:10.3e} {row.linear_mean:10.3e} {row.linear_stderr:9.2e} "
            f"{row.upper_bound:10.3e} {row.at_latent_mean:10.3e} {row.residual_mean:9.2e}"
        )
    return "\n".join(lines)


def plot_glow_panel(
    table: Sequence[GlowPanelRow], figure: Figure | None = None, title: str | None = None
) -> Figure:
    r"""Plot measured and predicted error against :math:`m`, log-scaled error axis.

    Labelled in the legend: the mean measured error, each measured error (dots), Theorem 1 for
    the linearised generator (Monte Carlo), the tangent model at the image's latent, and the upper
    and lower bounds.

    :param table: rows from :func:`glow_cs_error_curve`.
    :param figure: an empty figure to draw into (e.g. :func:`matplotlib.pyplot.figure`, so that a
        notebook or sphinx-gallery shows it); by default a new figure not tied to pyplot.
    :param str title: axis title.
    :return: a :class:`matplotlib.figure.Figure` with one axis.
    """
    from matplotlib.figure import Figure

    table = _check_table(table)
    if figure is None:
        figure = Figure(figsize=(5.5, 4), layout="constrained")
    axis = figure.subplots()
    ms = [row.m for row in table]
    axis.plot(
        ms, [row.measured_mean for row in table], "o-", label="measured (Glow, L-BFGS from z = 0)"
    )
    axis.scatter(
        [row.m for row in table for _ in row.measured_errors],
        [error for row in table for error in row.measured_errors],
        s=9,
        alpha=0.4,
        color="C0",
        label="measured, each image",
    )
    axis.plot(ms, [row.linear_mean for row in table], "s-", label="Theorem 1, linearised (MC)")
    axis.plot(ms, [row.at_latent_mean for row in table], "^-", label="tangent model at z*")
    axis.plot(ms, [row.upper_bound for row in table], "--", color="grey", label="upper bound")
    axis.plot(ms, [row.lower_bound for row in table], ":", color="grey", label="lower bound")
    axis.set_yscale("log")
    axis.set_xlabel("measurements m")
    axis.set_ylabel(r"$\|\hat x - x\|^2$")
    if title:
        axis.set_title(title)
    axis.legend(fontsize="small")
    return figure


def main_glow_panel(
    model: str = "mnist32",
    num_images: int = 4,
    ms: Sequence[int] = (64, 128, 256, 512, 768, 960),
    out: str | Path = "outputs/glow_panel.png",
    trials_per_m: int = 1,
    max_iter: int = 400,
    memory: int = 50,
    linear_trials: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> list[GlowPanelRow]:
    """Compute the panel for a shipped model on the first MNIST test digits, print its table and
    save its figure.

    :param str model: a pretrained model name (an MNIST model: the images are MNIST test digits).
    :param int num_images: test images (the first ones of the MNIST test split).
    :param ms: numbers of measurements, each in ``[4, n)``.
    :param out: figure path (PNG); its folder is created.
    :param int trials_per_m: measurement matrices per ``m``.
    :param int max_iter: L-BFGS iterations per reconstruction.
    :param int memory: L-BFGS curvature pairs per sample.
    :param int linear_trials: Monte Carlo trials of the linearised errors.
    :param int seed: seed of the matrices and Monte Carlo estimates.
    :param bool progress: show a progress bar.
    :return: the rows of :func:`glow_cs_error_curve`.
    """
    from deepinv_glowprior.data import mnist
    from deepinv_glowprior.pretrained import load_pretrained

    num_images = _check_int(num_images, "num_images", minimum=1)
    glow = load_pretrained(model)
    test = mnist("test", pad_to=glow.img_size[-1])
    images = torch.stack([test[i] for i in range(num_images)]).to(glow.device, glow.dtype)
    table = glow_cs_error_curve(
        glow,
        images,
        ms,
        trials_per_m=trials_per_m,
        seed=seed,
        max_iter=max_iter,
        memory=memory,
        linear_trials=linear_trials,
        progress=progress,
    )
    print(f"{model}: n = {glow.latent_dim}, {num_images} MNIST test images, noiseless CS")
    print(format_glow_panel(table))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = plot_glow_panel(table, title=f"{model}: measured vs Theorem 1 (linearised)")
    figure.savefig(out, dpi=120)
    print(f"figure saved to {out}")
    return table
