r"""Theorem 1 of Asim et al. (2020): recovery with a linear invertible generator.

For a linear invertible generator :math:`G \in \mathbb{R}^{n \times n}` with singular values
:math:`s_1 \geq \dots \geq s_n > 0`, a signal :math:`x_0 = G z_0`, :math:`z_0 \sim \mathcal{N}(0,
I_n)`, a Gaussian matrix :math:`A \in \mathbb{R}^{m \times n}` and noiseless measurements
:math:`y = A x_0`, gradient descent on :math:`\|AGz - y\|^2` started at :math:`z = 0` converges to
the minimum-norm solution :math:`\hat z = (AG)^+ y`, and :math:`\hat x = G \hat z` satisfies

.. math::

    \sum_{j > m} s_j^2 \;\leq\; \mathbb{E} \|\hat x - x_0\|^2 \;\leq\;
    \min_{2 \leq k \leq m - 2} \Big(1 + \frac{k}{m - k - 1}\Big) \sum_{j > k} s_j^2 .

**Derivation.** Gradient descent from zero never leaves the row space of :math:`AG`, so its limit
is :math:`\hat z = P_B z_0` with :math:`B = G^\top A^\top` and :math:`P_B` the orthogonal projector
onto :math:`\operatorname{range}(B)`. Hence :math:`\hat x - x_0 = -G (I - P_B) z_0` and, averaging
over :math:`z_0`,

.. math::

    \mathbb{E}_{z_0} \|\hat x - x_0\|^2 = \|G (I - P_B)\|_F^2 = \|(I - P_B)\, G^\top\|_F^2 ,

which is the error of the randomised range finder applied to :math:`G^\top` with the Gaussian test
matrix :math:`\Omega = A^\top` (:math:`m` samples, :math:`Y = G^\top \Omega`). Theorem 10.5 of
Halko, Martinsson and Tropp (2011), with :math:`k + p = m`, :math:`k, p \geq 2`, gives the upper
bound; :math:`\operatorname{rank}(P_B) \leq m` and Eckart-Young give the lower bound. Note that
:math:`\hat x` is an *oblique* projection of :math:`x_0` onto
:math:`\operatorname{range}(G G^\top A^\top)`: the orthogonal-projection error
:math:`\|(I - P_{GG^\top A^\top}) G\|_F^2` is smaller and is not the recovery error.

All computations are in ``float64``.

:Example:

>>> from deepinv_glowprior.theory import (exponential_spectrum, linear_recovery_error,
...     theorem1_lower_bound, theorem1_upper_bound)
>>> s = exponential_spectrum(32, rate=0.2)
>>> mean, stderr = linear_recovery_error(s, m=16, trials=100)
>>> bool(theorem1_lower_bound(s, 16) <= mean + 3 * stderr)
True
>>> bool(mean - 3 * stderr <= theorem1_upper_bound(s, 16))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "exponential_spectrum",
    "flat_spectrum",
    "gradient_descent_limit",
    "linear_recovery_error",
    "plot_theorem1",
    "polynomial_spectrum",
    "theorem1_lower_bound",
    "theorem1_upper_bound",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]

DTYPE = torch.float64


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}; pass a Python or NumPy int.")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    return int(value)


def _check_positive_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}.")
    return float(value)


def _check_singular_values(singular_values: ArrayLike) -> torch.Tensor:
    values = torch.as_tensor(singular_values, dtype=DTYPE)
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(
            "singular_values must be a non-empty 1-D array (one value per latent dimension), "
            f"got shape {tuple(values.shape)}."
        )
    if not torch.isfinite(values).all():
        raise ValueError("singular_values must be finite; remove NaN or inf entries.")
    if (values <= 0).any():
        raise ValueError("singular_values must be positive: G is invertible, so s_n > 0.")
    if (values[1:] > values[:-1]).any():
        raise ValueError(
            "singular_values must be sorted non-increasing (s_1 >= ... >= s_n); "
            "sort them in descending order first."
        )
    return values


def _check_measurements(m: object, n: int) -> int:
    m = _check_int(m, "m", minimum=1)
    if m < 4:
        raise ValueError(
            f"m must be at least 4, got {m}: the upper bound needs a target rank k >= 2 "
            "and an oversampling m - k >= 2."
        )
    if m >= n:
        raise ValueError(
            f"m must be smaller than n = {n} (the theorem is about m < n), got m = {m}; "
            "with m >= n the recovery is exact."
        )
    return m


def _tail_energy(singular_values: torch.Tensor, k: int) -> torch.Tensor:
    r""":math:`\sum_{j > k} s_j^2` (1-based :math:`j`): the best rank-:math:`k` error of G."""
    return singular_values[k:].square().sum()


def theorem1_lower_bound(singular_values: ArrayLike, m: int) -> float:
    r"""Lower bound of Theorem 1, the best rank-:math:`m` approximation error of :math:`G`.

    .. math::

        \mathbb{E} \|\hat x - x_0\|^2 \geq \sum_{j > m} s_j^2

    It holds because the error is :math:`\|(I - P) G^\top\|_F^2` for a projector :math:`P` of rank
    at most :math:`m` (Eckart-Young).

    :param singular_values: singular values :math:`s_1 \geq \dots \geq s_n > 0` of :math:`G`.
    :param int m: number of measurements, :math:`4 \leq m < n`.
    :return: the bound, a float.
    """
    values = _check_singular_values(singular_values)
    m = _check_measurements(m, values.numel())
    return float(_tail_energy(values, m))


def theorem1_upper_bound(singular_values: ArrayLike, m: int) -> float:
    r"""Upper bound of Theorem 1, Halko-Martinsson-Tropp (2011) Theorem 10.5.

    .. math::

        \mathbb{E} \|\hat x - x_0\|^2 \leq \min_{2 \leq k \leq m - 2}
        \Big(1 + \frac{k}{m - k - 1}\Big) \sum_{j > k} s_j^2

    :math:`k` is the target rank and :math:`p = m - k \geq 2` the oversampling. The bound is
    non-increasing in :math:`m`.

    :param singular_values: singular values :math:`s_1 \geq \dots \geq s_n > 0` of :math:`G`.
    :param int m: number of measurements, :math:`4 \leq m < n`.
    :return: the bound, a float.
    """
    values = _check_singular_values(singular_values)
    m = _check_measurements(m, values.numel())
    return min((1.0 + k / (m - k - 1)) * float(_tail_energy(values, k)) for k in range(2, m - 1))


def _random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    gaussian = torch.randn(n, n, dtype=DTYPE, generator=generator)
    q, r = torch.linalg.qr(gaussian)
    # The sign fix makes q Haar-distributed rather than biased by the QR convention.
    return q * torch.sign(torch.diagonal(r))


def _minimum_norm_solution(matrix: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r""":math:`M^+ y` for a batch of full-row-rank ``(..., m, n)`` matrices, via QR of
    :math:`M^\top` (``M = R^T Q^T``, so ``M^+ y = Q R^{-T} y``)."""
    q, r = torch.linalg.qr(matrix.transpose(-2, -1))
    coefficients = torch.linalg.solve_triangular(r.transpose(-2, -1), y, upper=False)
    return q @ coefficients


def linear_recovery_error(
    singular_values: ArrayLike, m: int, trials: int = 200, seed: int = 0
) -> tuple[float, float]:
    r"""Monte Carlo estimate of :math:`\mathbb{E} \|\hat x - x_0\|^2` in Theorem 1.

    Builds :math:`G = U \operatorname{diag}(s) V^\top` with random orthogonal :math:`U, V` (the
    error law does not depend on them, but drawing them keeps the simulation literal), then, for
    each trial, draws :math:`z_0 \sim \mathcal{N}(0, I_n)` and :math:`A` with i.i.d.
    :math:`\mathcal{N}(0, 1)` entries, sets :math:`y = A G z_0` and

    .. math::

        \hat z = (AG)^+ y, \qquad \hat x = G \hat z ,

    the limit of gradient descent from :math:`z = 0` (see :func:`gradient_descent_limit`).

    :param singular_values: singular values :math:`s_1 \geq \dots \geq s_n > 0` of :math:`G`.
    :param int m: number of measurements, :math:`4 \leq m < n`.
    :param int trials: number of independent draws of :math:`(A, z_0)`, at least 2.
    :param int seed: seed of the random generator; the same seed gives the same estimate.
    :return: ``(mean, standard_error)`` of :math:`\|\hat x - x_0\|^2` over the trials.
    """
    values = _check_singular_values(singular_values)
    n = values.numel()
    m = _check_measurements(m, n)
    trials = _check_int(trials, "trials", minimum=2)
    generator = torch.Generator().manual_seed(int(seed))

    U = _random_orthogonal(n, generator)
    V = _random_orthogonal(n, generator)
    G = U * values @ V.T
    latents = torch.randn(trials, n, 1, dtype=DTYPE, generator=generator)
    A = torch.randn(trials, m, n, dtype=DTYPE, generator=generator)

    signals = G @ latents
    measurements = A @ signals
    latent_estimates = _minimum_norm_solution(A @ G, measurements)
    errors = (G @ latent_estimates - signals).square().sum(dim=(-2, -1))
    return float(errors.mean()), float(errors.std() / math.sqrt(trials))


def gradient_descent_limit(
    A: torch.Tensor,
    G: torch.Tensor,
    y: torch.Tensor,
    steps: int = 20_000,
    lr: float | None = None,
) -> torch.Tensor:
    r"""Plain gradient descent from :math:`z = 0` on :math:`f(z) = \|AGz - y\|^2`.

    Every gradient :math:`2 (AG)^\top (AGz - y)` lies in the row space of :math:`AG`, so the
    iterates stay there and converge to the minimum-norm solution :math:`(AG)^+ y`.

    :param torch.Tensor A: measurement matrix of shape ``(m, n)``.
    :param torch.Tensor G: generator matrix of shape ``(n, n)``.
    :param torch.Tensor y: measurements of shape ``(m,)``.
    :param int steps: number of gradient steps. Convergence is linear with rate
        :math:`1 - \sigma_{\min}^2 / \sigma_{\max}^2` of :math:`AG`, so ill-conditioned problems
        need more steps.
    :param float lr: step size; defaults to :math:`1 / (2 \|AG\|_2^2)`, the inverse Lipschitz
        constant of :math:`\nabla f` (any value below :math:`1 / \|AG\|_2^2` converges).
    :return: the last iterate :math:`z` of shape ``(n,)``, in ``float64``.
    """
    A, G, y = (torch.as_tensor(t, dtype=DTYPE) for t in (A, G, y))
    if A.ndim != 2 or G.ndim != 2 or G.shape[0] != G.shape[1] or A.shape[1] != G.shape[0]:
        raise ValueError(
            f"A must be (m, n) and G must be (n, n), got A {tuple(A.shape)}, G {tuple(G.shape)}."
        )
    if y.shape != (A.shape[0],):
        raise ValueError(f"y must have shape ({A.shape[0]},) to match A, got {tuple(y.shape)}.")
    steps = _check_int(steps, "steps", minimum=1)
    forward = A @ G
    if lr is None:
        lr = 0.5 / float(torch.linalg.matrix_norm(forward, ord=2)) ** 2
    lr = _check_positive_real(lr, "lr")

    z = torch.zeros(G.shape[1], dtype=DTYPE)
    for _ in range(steps):
        z = z - lr * 2.0 * forward.T @ (forward @ z - y)
    return z


def exponential_spectrum(n: int, rate: float) -> torch.Tensor:
    r"""Singular values :math:`s_j = e^{-\text{rate}\,(j - 1)}`, :math:`j = 1, \dots, n`.

    :param int n: dimension.
    :param float rate: positive decay rate.
    :return: a non-increasing positive ``float64`` tensor of shape ``(n,)``.
    """
    n = _check_int(n, "n", minimum=1)
    rate = _check_positive_real(rate, "rate")
    return torch.exp(-rate * torch.arange(n, dtype=DTYPE))


def polynomial_spectrum(n: int, power: float) -> torch.Tensor:
    r"""Singular values :math:`s_j = j^{-\text{power}}`, :math:`j = 1, \dots, n`.

    :param int n: dimension.
    :param float power: positive decay exponent.
    :return: a non-increasing positive ``float64`` tensor of shape ``(n,)``.
    """
    n = _check_int(n, "n", minimum=1)
    power = _check_positive_real(power, "power")
    return torch.arange(1, n + 1, dtype=DTYPE).pow(-power)


def flat_spectrum(n: int) -> torch.Tensor:
    r"""Singular values :math:`s_j = 1`: :math:`G` is orthogonal and the error is exactly
    :math:`n - m` in expectation, so the lower bound is tight.

    :param int n: dimension.
    :return: a ``float64`` tensor of ones, shape ``(n,)``.
    """
    n = _check_int(n, "n", minimum=1)
    return torch.ones(n, dtype=DTYPE)


def plot_theorem1(
    n: int = 64,
    ms: Sequence[int] | None = None,
    trials: int = 200,
    seed: int = 0,
    rate: float = 0.15,
    power: float = 1.0,
    figure: Figure | None = None,
) -> Figure:
    r"""Plot the Monte Carlo error of Theorem 1 against :math:`m`, with both bounds.

    One panel per spectrum (exponential, polynomial, flat), log-scaled error axis, error bars of
    :math:`\pm 2` standard errors.

    :param int n: dimension of :math:`G`.
    :param ms: numbers of measurements, each in :math:`[4, n)`; defaults to about eight values.
    :param int trials: Monte Carlo trials per point.
    :param int seed: seed shared by all points.
    :param float rate: decay rate of :func:`exponential_spectrum`.
    :param float power: exponent of :func:`polynomial_spectrum`.
    :param figure: an empty figure to draw into, e.g. from :func:`matplotlib.pyplot.figure` so
        that a notebook or sphinx-gallery shows it; by default a new figure not tied to pyplot.
    :return: a :class:`matplotlib.figure.Figure` with three axes.
    """
    from matplotlib.figure import Figure

    n = _check_int(n, "n", minimum=5)
    if ms is None:
        ms = sorted({int(m) for m in np.linspace(4, n - 1, 8)})
    spectra = {
        f"exponential, rate {rate:g}": exponential_spectrum(n, rate),
        f"polynomial, power {power:g}": polynomial_spectrum(n, power),
        "flat": flat_spectrum(n),
    }

    if figure is None:
        figure = Figure(figsize=(4 * len(spectra), 3.5), layout="constrained")
    axes = figure.subplots(1, len(spectra))
    for axis, (title, values) in zip(axes, spectra.items(), strict=True):
        estimates = [linear_recovery_error(values, m, trials=trials, seed=seed) for m in ms]
        means = [mean for mean, _ in estimates]
        errors = [2 * stderr for _, stderr in estimates]
        axis.errorbar(ms, means, yerr=errors, fmt="o", label="Monte Carlo (±2 s.e.)")
        axis.plot(ms, [theorem1_upper_bound(values, m) for m in ms], "--", label="upper bound")
        axis.plot(ms, [theorem1_lower_bound(values, m) for m in ms], ":", label="lower bound")
        axis.set_yscale("log")
        axis.set_title(f"{title} (n = {n})")
        axis.set_xlabel("measurements m")
    axes[0].set_ylabel(r"$E\,\|\hat x - x_0\|^2$")
    axes[0].legend()
    return figure
