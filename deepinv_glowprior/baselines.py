r"""The paper's comparison methods as deepinv Reconstructors: Lasso (wavelet, DCT), TV, BM3D and
the Deep Decoder, plus :func:`tune_lambda` to pick a regularisation weight on validation images.

Every reconstructor is called as ``model(y, physics)`` with any deepinv linear physics (Gaussian CS,
denoising, inpainting, ...) and returns images ``(B, C, H, W)`` clamped to :math:`[0, 1]`.
Each sample of a batch is solved independently of the others, except TV on a physics other than
compressed sensing, denoising or inpainting, whose data prox is deepinv's conjugate gradient
with a batch-wide stopping test.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import deepinv as dinv
import torch
from deepinv.models import Reconstructor
from deepinv.optim import L2, Prior, optim_builder

from deepinv_glowprior._checks import (
    check_finite_tensor,
    check_image_batch,
    check_nonnegative_number,
    check_tensor_batch,
)

__all__ = [
    "LAMBDA_GRID",
    "BM3DReconstructor",
    "DCTPrior",
    "DeepDecoderReconstructor",
    "TotalVariationReconstructor",
    "VariationalReconstructor",
    "bm3d_denoiser",
    "dct2",
    "dct_matrix",
    "deep_decoder",
    "idct2",
    "lasso_dct",
    "lasso_wavelet",
    "total_variation",
    "tune_lambda",
]

#: Default :math:`\lambda` grid of :func:`tune_lambda` for :math:`\frac12\|Ax-y\|^2 + \lambda R(x)`
#: on [0, 1] images (wavelet, DCT, TV): half decades covering CS (m/n 0.1-0.5) to sigma = 0.2.
LAMBDA_GRID: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
ITERATIONS = ("FISTA", "PGD")


def _check_measurements(y: object, physics: object) -> torch.Tensor:
    """Check ``y`` against ``physics`` and return :math:`A^\\top y` (the solvers' start)."""
    check_tensor_batch(y)
    if not callable(getattr(physics, "A_adjoint", None)):
        raise TypeError(f"physics must be a deepinv LinearPhysics, got {type(physics).__name__}.")
    check_finite_tensor(y, name="y")
    try:
        x0 = physics.A_adjoint(y)
        measured = physics.A(x0)
    except Exception as err:
        hint = ""
        if "scalar type" in str(err):
            hint = (
                f" (y is {y.dtype}: the physics computes in another dtype. deepinv's "
                "CompressedSensing casts y to the dtype it was built with, even after .to(); "
                "build it with that dtype, e.g. tasks.compressed_sensing(..., dtype=y.dtype))"
            )
        raise ValueError(
            f"y of shape {tuple(y.shape)} does not match the physics {type(physics).__name__}: "
            f"{err}{hint}"
        ) from err
    if measured.shape != y.shape or x0.dim() != 4:
        raise ValueError(
            f"y has shape {tuple(y.shape)} but the physics maps A^T y (shape {tuple(x0.shape)}) "
            f"to {tuple(measured.shape)}; expected images (B, C, H, W) and matching measurements."
        )
    return x0


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def _finite_clamped(x: torch.Tensor, name: str) -> torch.Tensor:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):  # cannot happen with a convergent step; never return NaN silently
        warnings.warn(f"{name}: {int(bad.sum())} non-finite pixels set to 0.", stacklevel=3)
        x = torch.where(bad, 0.0, x)
    return x.clamp(0, 1)


class VariationalReconstructor(Reconstructor):
    r"""Proximal-gradient solver of :math:`\hat x = \arg\min_x \tfrac12\|Ax - y\|^2 +
    \lambda R(x)`.

    Runs deepinv's FISTA (or PGD) built by :func:`deepinv.optim.optim_builder` with the
    :class:`deepinv.optim.L2` data fidelity and a prior with a proximal operator, started at
    :math:`A^\top y`, for a fixed number of iterations (no batch-wide early stop, so samples stay
    independent). The step is :math:`1 / (1.05\,\|A^\top A\|)`, with the norm estimated by the
    power method (``physics.compute_sqnorm``) at each call, which makes it convergent for any
    linear physics. The output is clamped to :math:`[0, 1]`.

    :param deepinv.optim.Prior prior: :math:`R`; ``prior.prox(x, 1.0, gamma=t)`` must be
        :math:`\operatorname{prox}_{tR}(x)` (deepinv's PGD step passes ``g_param=1`` positionally).
    :param float lam: :math:`\lambda \ge 0`.
    :param str iteration: ``"FISTA"`` or ``"PGD"``.
    :param int max_iter: iterations.
    """

    def __init__(
        self, prior: Prior, lam: float, iteration: str = "FISTA", max_iter: int = 300
    ) -> None:
        super().__init__()
        if not isinstance(prior, Prior):
            raise TypeError(f"prior must be a deepinv.optim.Prior, got {type(prior).__name__}.")
        if iteration not in ITERATIONS:
            raise ValueError(f"iteration must be one of {ITERATIONS}, got {iteration!r}.")
        self.prior = prior
        self.lam = check_nonnegative_number(lam, name="lam")
        self.iteration = iteration
        self.max_iter = _positive_int(max_iter, "max_iter")

    def stepsize(self, physics: dinv.physics.LinearPhysics, x0: torch.Tensor) -> float:
        """:math:`1 / (1.05 \\|A^\\top A\\|)`, the norm from a seeded power method."""
        with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not converged": 5% margin covers it
            torch.manual_seed(0)
            sqnorm = physics.compute_sqnorm(x0[:1], max_iter=100, tol=1e-4, verbose=False)
        sqnorm = float(sqnorm)
        if not (math.isfinite(sqnorm) and sqnorm > 0):
            raise ValueError(f"||A^T A|| estimated as {sqnorm}; the physics looks degenerate.")
        return 1.0 / (1.05 * sqnorm)

    def forward(self, y: torch.Tensor, physics: dinv.physics.LinearPhysics, **kwargs):
        """Reconstruct ``(B, C, H, W)`` images in [0, 1] from ``y``."""
        x0 = _check_measurements(y, physics)
        if hasattr(self.prior, "TVModel"):  # TV's inner solver warm-starts across calls
            self.prior.TVModel.restart = True
        params = {"stepsize": self.stepsize(physics, x0), "lambda": self.lam, "g_param": 1.0}
        if self.iteration == "FISTA":
            params["a"] = 3.0
        solver = optim_builder(
            self.iteration,
            prior=self.prior,
            data_fidelity=L2(),
            params_algo=params,
            max_iter=self.max_iter,
            early_stop=False,
        )
        solver.has_cost = solver.fixed_point.iterator.has_cost = False  # no objective per step
        with torch.no_grad():
            x = solver(y, physics)
        return _finite_clamped(x, type(self).__name__)


class _WaveletL1(dinv.optim.prior.WaveletPrior):
    """deepinv's WaveletPrior with prox threshold ``gamma``: deepinv's own prox ignores the
    ``g_param`` that PGD/FISTA pass positionally and thresholds at ``0.1 * gamma``."""

    def prox(self, x: torch.Tensor, *args, gamma: float = 1.0, **kwargs) -> torch.Tensor:
        return super().prox(x, ths=1.0, gamma=gamma)


def lasso_wavelet(
    lam: float,
    wavelet: str = "haar",
    level: int = 3,
    max_iter: int = 300,
    device: str | torch.device = "cpu",
) -> VariationalReconstructor:
    r"""Wavelet Lasso :math:`\min_x \tfrac12\|Ax - y\|^2 + \lambda\|\Psi x\|_1` (FISTA).

    :math:`\Psi` is deepinv's :class:`~deepinv.optim.prior.WaveletPrior` (``ptwt``), which leaves
    the approximation band unpenalised. With the default Haar wavelet and image sides divisible by
    :math:`2^{\text{level}}`, :math:`\Psi` is an orthonormal basis and its soft-thresholding is
    the exact prox. Longer wavelets (e.g. ``"db4"``) are zero-padded into a redundant frame, where
    shrinkage only approximates the prox. On MNIST 32x32, Haar beats db4 in CS at m/n >= 0.25,
    denoising and inpainting.

    :param float lam: :math:`\lambda \ge 0`.
    :param str wavelet: a PyWavelets name.
    :param int level: decomposition levels.
    :param int max_iter: FISTA iterations.

    :Example:

    >>> import torch, deepinv as dinv
    >>> physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    >>> y = physics(torch.rand(2, 1, 32, 32))
    >>> lasso_wavelet(0.05, max_iter=20)(y, physics).shape
    torch.Size([2, 1, 32, 32])
    """
    try:
        prior = _WaveletL1(level=level, wv=wavelet, p=1, device=device)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("lasso_wavelet needs ptwt and PyWavelets: pip install ptwt") from err
    return VariationalReconstructor(prior, lam, max_iter=max_iter)


def dct_matrix(n: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    r"""Orthonormal DCT-II matrix :math:`D \in \mathbb{R}^{n\times n}`, :math:`D^\top D = I`.

    :math:`D_{ki} = c_k \sqrt{2/n}\cos\big(\pi(2i+1)k / 2n\big)`, :math:`c_0 = 1/\sqrt2`,
    :math:`c_k = 1` otherwise (``scipy.fft.dct(..., norm="ortho")``).
    """
    k = torch.arange(_positive_int(n, "n"), dtype=torch.float64, device=device)
    matrix = torch.cos(math.pi * (2 * k + 1) * k[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(dtype)


def _dct_pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(dct_matrix(n, x.dtype, x.device) for n in x.shape[-2:])


def dct2(x: torch.Tensor) -> torch.Tensor:
    r"""Orthonormal 2-D DCT-II over the last two axes: :math:`D_H X D_W^\top`."""
    d_h, d_w = _dct_pair(x)
    return d_h @ x @ d_w.T


def idct2(c: torch.Tensor) -> torch.Tensor:
    r"""Inverse (= adjoint) of :func:`dct2`: :math:`D_H^\top C D_W`."""
    d_h, d_w = _dct_pair(c)
    return d_h.T @ c @ d_w


class DCTPrior(Prior):
    r"""DCT sparsity prior :math:`R(x) = \|W x\|_1`, :math:`W` the orthonormal 2-D DCT-II.

    deepinv has no DCT prior. As :math:`W` is orthonormal, the proximal operator is exact:

    .. math::

        \operatorname{prox}_{\gamma R}(x) = W^\top \operatorname{soft}_{\gamma}(W x),
        \qquad \operatorname{soft}_{\gamma}(c) = \operatorname{sign}(c)\max(|c| - \gamma, 0).

    All coefficients, the DC term included, are penalised.
    """

    def __init__(self) -> None:
        super().__init__()
        self.explicit_prior = True

    def fn(self, x: torch.Tensor, *args, reduce: bool = True, **kwargs) -> torch.Tensor:
        """:math:`\\|Wx\\|_1` per sample, shape ``(B,)``."""
        return dct2(x).abs().flatten(1).sum(dim=1)

    def prox(self, x: torch.Tensor, *args, ths: float = 1.0, gamma: float = 1.0, **kwargs):
        """:math:`W^\\top \\operatorname{soft}_{\\mathrm{ths}\\cdot\\gamma}(Wx)`."""
        if args:  # deepinv passes g_param positionally; it scales the threshold
            ths = args[0] if args[0] is not None else ths
        coefficients = dct2(x)
        shrunk = torch.sign(coefficients) * (coefficients.abs() - ths * gamma).clamp(min=0)
        return idct2(shrunk)


def lasso_dct(lam: float, max_iter: int = 300) -> VariationalReconstructor:
    r"""DCT Lasso :math:`\min_x \tfrac12\|Ax - y\|^2 + \lambda\|Wx\|_1` (FISTA, :class:`DCTPrior`).

    The paper's Lasso-DCT baseline :footcite:p:`asim2020invertible`.

    :param float lam: :math:`\lambda \ge 0`.
    :param int max_iter: iterations.

    :Example:

    >>> import torch, deepinv as dinv
    >>> physics = dinv.physics.CompressedSensing(m=512, img_size=(1, 32, 32))
    >>> y = physics(torch.rand(2, 1, 32, 32))
    >>> lasso_dct(1e-3, max_iter=20)(y, physics).shape
    torch.Size([2, 1, 32, 32])
    """
    return VariationalReconstructor(DCTPrior(), lam, max_iter=max_iter)


class _ExactL2(L2):
    r""":class:`deepinv.optim.L2` whose prox is solved exactly, sample by sample, for
    :class:`deepinv.physics.CompressedSensing`:
    :math:`(I + \gamma A^\top A)^{-1} b = b - \gamma A^\top (I_m + \gamma A A^\top)^{-1} A b`
    (Woodbury), with the Cholesky factor of the :math:`m \times m` matrix computed once per step
    size and each row solved alone (batch-size-free rounding). The products go through
    ``physics.A`` and ``physics.A_adjoint``, so a physics whose operators run one sample at a
    time keeps that. Any other physics keeps deepinv's prox: closed form for decomposable physics
    (denoising, inpainting), conjugate gradient otherwise, whose stopping test is batch-wide."""

    def __init__(self, physics: dinv.physics.LinearPhysics) -> None:
        super().__init__()
        matrix = getattr(physics, "_A", None)
        is_cs = isinstance(physics, dinv.physics.CompressedSensing)
        self.matrix = matrix if is_cs and isinstance(matrix, torch.Tensor) else None
        self._factors: dict[float, torch.Tensor] = {}

    def prox(self, x: torch.Tensor, y: torch.Tensor, physics, *args, gamma: float = 1.0, **kw):
        if self.matrix is None or x.is_complex() or self.matrix.is_complex():
            return super().prox(x, y, physics, *args, gamma=gamma, **kw)
        gamma = float(gamma) * self.norm
        if gamma not in self._factors:
            matrix = self.matrix.to(x.dtype)
            identity = torch.eye(matrix.shape[0], dtype=x.dtype, device=x.device)
            self._factors[gamma] = torch.linalg.cholesky(identity + gamma * matrix @ matrix.T)
        factor = self._factors[gamma]
        b = x + gamma * physics.A_adjoint(y)
        projected = physics.A(b)
        rows = projected.reshape(-1, 1, projected.shape[-1])
        solved = torch.stack([torch.cholesky_solve(row.T, factor).T for row in rows])
        return b - gamma * physics.A_adjoint(solved.reshape(projected.shape))


class _GroupL1(dinv.optim.prior.L12Prior):
    r""":math:`\|u\|_{1,2}` over the gradient field, whose conjugate's prox (the projection onto
    :math:`\{\|u_i\|_2 \le \lambda\}`) is written out: deepinv's Moreau form divides by
    :math:`\lambda` and fails at :math:`\lambda = 0`."""

    def prox_conjugate(self, x: torch.Tensor, *args, lamb: float = 1.0, **kwargs) -> torch.Tensor:
        if lamb <= 0:
            return torch.zeros_like(x)
        norms = torch.linalg.vector_norm(x, dim=self.l2_axis, keepdim=True)
        return x / (norms / lamb).clamp(min=1.0)


class TotalVariationReconstructor(Reconstructor):
    r"""Total variation :math:`\hat x = \arg\min_x \tfrac12\|Ax - y\|^2 + \lambda\|\nabla x\|_{1,2}`
    (isotropic, per channel) by the Chambolle-Pock primal-dual algorithm.

    deepinv's ``CP`` iteration (:func:`deepinv.optim.optim_builder`, ``g_first=True``) with
    :math:`K = \nabla` (:meth:`deepinv.optim.prior.TVPrior.nabla`), the dual step on
    :class:`deepinv.optim.prior.L12Prior` (its conjugate's prox, a projection) and the primal
    step the exact prox of the data term:

    .. math::

        u_{k+1} = \Pi_{\|\cdot\|_{\infty,2} \le \lambda}(u_k + \sigma \nabla \bar x_k), \quad
        x_{k+1} = (I + \tau A^\top A)^{-1}(x_k - \tau \nabla^\top u_{k+1} + \tau A^\top y), \quad
        \bar x_{k+1} = 2x_{k+1} - x_k,

    started at :math:`x_0 = A^\top y`, :math:`u_0 = 0`, for a fixed number of iterations (no
    batch-wide early stop). The steps are :math:`\tau = 1/\sqrt{8\lambda}` and
    :math:`\sigma = 1/(8\tau)` (so :math:`\sigma\tau\|\nabla\|^2 \le 1`): they balance the primal
    scale (pixels in [0, 1]) against the dual one (:math:`\lambda`). Unlike proximal gradient
    with an inner TV prox, the data term is never linearised, so the part of :math:`x` that
    :math:`A` does not see moves by :math:`O(\tau\lambda)` per step, not :math:`O(\lambda /
    \|A^\top A\|)`: small weights (CS) converge in hundreds of steps instead of thousands. The
    prox is exact and per-sample for dense :class:`deepinv.physics.CompressedSensing` (Woodbury
    with a cached Cholesky factor) and decomposable physics; other physics use deepinv's
    conjugate gradient. The output is clamped to :math:`[0, 1]`. 300 iterations reach the
    minimiser for the :math:`\lambda` of :data:`LAMBDA_GRID` on our tasks
    (``benchmarks/tv_convergence.py``); much smaller weights need more.

    :param float lam: :math:`\lambda \ge 0`.
    :param int max_iter: primal-dual iterations.

    :Example:

    >>> import torch
    >>> from deepinv_glowprior.tasks import compressed_sensing
    >>> physics = compressed_sensing((1, 16, 16), ratio=0.3)
    >>> y = physics(torch.rand(2, 1, 16, 16))
    >>> x_hat = TotalVariationReconstructor(0.01, max_iter=50)(y, physics)
    >>> x_hat.shape, bool(x_hat.min() >= 0), bool(x_hat.max() <= 1)
    (torch.Size([2, 1, 16, 16]), True, True)
    """

    def __init__(self, lam: float, max_iter: int = 300) -> None:
        super().__init__()
        self.lam = check_nonnegative_number(lam, name="lam")
        self.max_iter = _positive_int(max_iter, "max_iter")
        self.tv = dinv.optim.prior.TVPrior()

    def stepsizes(self) -> tuple[float, float]:
        r""":math:`(\tau, \sigma) = (1/\sqrt{8\lambda}, 1/(8\tau))` (:math:`\lambda` floored at
        :math:`10^{-4}`)."""
        tau = 1.0 / math.sqrt(8.0 * max(self.lam, 1e-4))
        return tau, 1.0 / (8.0 * tau)

    def forward(self, y: torch.Tensor, physics: dinv.physics.LinearPhysics, **kwargs):
        """Reconstruct ``(B, C, H, W)`` images in [0, 1] from ``y``."""
        x0 = _check_measurements(y, physics)
        if x0.dim() != 4:
            raise ValueError(
                f"total variation needs images (B, C, H, W); A^T y has shape {tuple(x0.shape)}."
            )
        tau, sigma = self.stepsizes()
        params = {
            "stepsize": tau,
            "stepsize_dual": sigma,
            "lambda": self.lam,
            "g_param": 1.0,
            "beta": 1.0,
            "K": self.tv.nabla,
            "K_adjoint": self.tv.nabla_adjoint,
        }
        dual0 = torch.zeros_like(self.tv.nabla(x0))
        solver = optim_builder(
            "CP",
            prior=_GroupL1(),
            data_fidelity=_ExactL2(physics),
            params_algo=params,
            max_iter=self.max_iter,
            early_stop=False,
            g_first=True,
            custom_init=lambda y, physics: {"est": (x0, x0, dual0)},
        )
        solver.has_cost = solver.fixed_point.iterator.has_cost = False
        with torch.no_grad():
            x = solver(y, physics)
        return _finite_clamped(x, type(self).__name__)


def total_variation(lam: float, max_iter: int = 300) -> TotalVariationReconstructor:
    r"""Total variation :math:`\min_x \tfrac12\|Ax - y\|^2 + \lambda\|\nabla x\|_{1,2}` (isotropic),
    solved by :class:`TotalVariationReconstructor` (Chambolle-Pock, exact data prox).

    :param float lam: :math:`\lambda \ge 0`.
    :param int max_iter: primal-dual iterations.

    :Example:

    >>> import torch, deepinv as dinv
    >>> physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    >>> y = physics(torch.rand(2, 1, 32, 32))
    >>> total_variation(0.05, max_iter=10)(y, physics).shape
    torch.Size([2, 1, 32, 32])
    """
    return TotalVariationReconstructor(lam, max_iter=max_iter)


class BM3DReconstructor(Reconstructor):
    r"""BM3D :footcite:p:`dabov2007image` for denoising :math:`y = x + \sigma\varepsilon` only.

    Wraps :class:`deepinv.models.BM3D`; :math:`\sigma` is read from ``physics.noise_model``
    unless given.

    :param float | None sigma: noise level, or ``None`` to read it from the physics.
    :param bool use_legacy: the ``bm3d`` package (``True``) or deepinv's ptwt re-implementation.
    """

    def __init__(self, sigma: float | None = None, use_legacy: bool = True, device="cpu") -> None:
        super().__init__()
        self.sigma = None if sigma is None else check_nonnegative_number(sigma, name="sigma")
        self.denoiser = dinv.models.BM3D(use_legacy=use_legacy, device=device)

    def forward(self, y: torch.Tensor, physics: dinv.physics.Physics, **kwargs) -> torch.Tensor:
        """Denoise ``y`` ``(B, C, H, W)``; ``physics`` must be a deepinv ``Denoising``."""
        if not isinstance(physics, dinv.physics.Denoising):
            raise ValueError(
                f"BM3D is a denoiser: physics must be deepinv.physics.Denoising, got "
                f"{type(physics).__name__}."
            )
        _check_measurements(y, physics)
        sigma, noise = self.sigma, getattr(physics, "noise_model", None)
        if sigma is None:
            if not isinstance(noise, dinv.physics.GaussianNoise):
                raise ValueError(f"BM3D needs sigma=... or a GaussianNoise, got {noise!r}.")
            sigma = check_nonnegative_number(noise.sigma, name="physics.noise_model.sigma")
        if sigma == 0:
            return y.clamp(0, 1)
        with torch.no_grad():
            x = self.denoiser(y, sigma)
        return _finite_clamped(x, type(self).__name__)


def bm3d_denoiser(sigma: float | None = None, device: str | torch.device = "cpu"):
    r"""BM3D for the denoising task, from the ``bm3d`` package, else deepinv's ptwt version.

    :param float | None sigma: noise level; ``None`` reads it from ``physics.noise_model``.
    :raises ImportError: when neither ``bm3d`` nor ``ptwt`` is installed.

    :Example:

    >>> import torch, deepinv as dinv
    >>> physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    >>> y = physics(torch.rand(1, 1, 32, 32))
    >>> bm3d_denoiser()(y, physics).shape
    torch.Size([1, 1, 32, 32])
    """
    for module, legacy in (("bm3d", True), ("ptwt", False)):
        try:
            __import__(module)
        except ImportError:
            continue
        return BM3DReconstructor(sigma=sigma, use_legacy=legacy, device=device)
    raise ImportError("bm3d_denoiser needs the bm3d package (or ptwt): pip install bm3d")


class DeepDecoderReconstructor(Reconstructor):
    r"""The Deep Decoder :footcite:p:`heckel2019deep`, an unlearned convolutional prior.

    For each sample independently, a freshly initialised (seeded)
    :class:`deepinv.models.ConvDecoder` :math:`G_\theta` with a fixed random input :math:`z` is
    fitted by :class:`deepinv.models.DeepImagePrior` (Adam),

    .. math::

        \hat\theta = \arg\min_\theta \|A G_\theta(z) - y\|^2, \qquad \hat x = G_{\hat\theta}(z),

    stopped after ``iterations`` steps (the early stopping is the regularisation). deepinv's
    ``DeepImagePrior`` fits one network to a whole batch, hence the loop over samples.
    The physics must be shared by the batch (one matrix or mask for all samples).

    :param int layers: decoder layers.
    :param int channels: channels per layer.
    :param tuple in_size: spatial size of the random input.
    :param int iterations: Adam steps per sample.
    :param float learning_rate: Adam learning rate.
    :param int seed: seed of the network initialisation and of :math:`z` (same for all samples).
    """

    def __init__(
        self,
        layers: int = 4,
        channels: int = 64,
        in_size: tuple[int, int] = (4, 4),
        iterations: int = 400,
        learning_rate: float = 1e-2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if _positive_int(layers, "layers") < 2:
            raise ValueError(f"layers must be >= 2, got {layers}.")
        self.layers, self.channels = layers, _positive_int(channels, "channels")
        self.in_size = tuple(in_size)
        self.iterations = _positive_int(iterations, "iterations")
        self.learning_rate = check_nonnegative_number(
            learning_rate, name="learning_rate", allow_zero=False
        )
        self.seed = seed

    def forward(self, y: torch.Tensor, physics: dinv.physics.LinearPhysics, **kwargs):
        """Reconstruct ``(B, C, H, W)`` images in [0, 1], one decoder fit per sample."""
        x0 = _check_measurements(y, physics)
        outputs = []
        for i in range(y.shape[0]):
            with torch.random.fork_rng(devices=[] if y.device.type == "cpu" else [y.device]):
                torch.manual_seed(self.seed)
                decoder = dinv.models.ConvDecoder(
                    tuple(x0.shape[1:]), self.in_size, self.layers, self.channels
                ).to(device=y.device, dtype=y.dtype)
                dip = dinv.models.DeepImagePrior(
                    decoder, (self.channels, *self.in_size), self.iterations, self.learning_rate
                )
                outputs.append(dip(y[i : i + 1], physics).detach())
        return _finite_clamped(torch.cat(outputs), type(self).__name__)


def deep_decoder(
    iterations: int = 400, layers: int = 4, channels: int = 64, **kwargs
) -> DeepDecoderReconstructor:
    r"""The Deep Decoder baseline, :class:`DeepDecoderReconstructor` (``kwargs`` go to it).

    :Example:

    >>> import torch, deepinv as dinv
    >>> physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    >>> y = physics(torch.rand(1, 1, 32, 32))
    >>> deep_decoder(iterations=5, channels=8)(y, physics).shape
    torch.Size([1, 1, 32, 32])
    """
    return DeepDecoderReconstructor(
        layers=layers, channels=channels, iterations=iterations, **kwargs
    )


def tune_lambda(
    factory: Callable[[float], Reconstructor],
    physics: dinv.physics.Physics,
    images: torch.Tensor,
    grid: Sequence[float] | None = None,
    seed: int = 0,
) -> tuple[float, list[tuple[float, float]]]:
    r"""Pick :math:`\lambda` by mean PSNR on a batch of VALIDATION images.

    Measures ``y = physics(images)`` (noise seeded by ``seed``), reconstructs with
    ``factory(lam)`` for every ``lam`` in ``grid`` and returns the one with the highest mean
    PSNR. Tune on held-out images (e.g. ``mnist("val")``), never on the test images: the
    reported test PSNR would otherwise be an oracle.

    :param Callable factory: ``lam -> Reconstructor``, e.g. :func:`lasso_dct` or a
        ``functools.partial`` of one.
    :param deepinv.physics.Physics physics: the task.
    :param torch.Tensor images: validation images ``(B, C, H, W)`` in [0, 1].
    :param Sequence[float] | None grid: values of :math:`\lambda \ge 0` (default
        :data:`LAMBDA_GRID`).
    :param int seed: seed of the measurement noise.
    :return: ``(best_lam, [(lam, mean_psnr), ...])`` in grid order.

    :Example:

    >>> import torch, deepinv as dinv
    >>> physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    >>> best, table = tune_lambda(lasso_dct, physics, torch.rand(2, 1, 8, 8), grid=(0.01, 0.1))
    >>> best in (0.01, 0.1), len(table)
    (True, 2)
    """
    if not callable(factory):
        raise TypeError(f"factory must be callable (lam -> Reconstructor), got {factory!r}.")
    grid = [
        check_nonnegative_number(g, name="grid value")
        for g in (LAMBDA_GRID if grid is None else grid)
    ]
    if not grid:
        raise ValueError("grid must hold at least one lambda.")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {images!r:.80}.")
    check_image_batch(images, tuple(images.shape[1:]), name="images")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        y = physics(images)
    psnr = dinv.metric.PSNR(max_pixel=1.0)
    table = []
    for lam in grid:
        x_hat = factory(lam)(y, physics)
        table.append((lam, float(psnr(x_hat, images).mean())))
    best = max(table, key=lambda row: row[1])[0]
    return best, table
