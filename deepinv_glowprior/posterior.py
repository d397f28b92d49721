r"""Posterior sampling in the latent space of a Glow: Langevin chains, uncertainty maps, R-hat."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from deepinv.models import Reconstructor
from tqdm.auto import tqdm

from deepinv_glowprior._checks import (
    check_finite_tensor,
    check_nonnegative_number,
    check_positive_int,
)
from deepinv_glowprior.glow import Glow
from deepinv_glowprior.reconstructor import GlowReconstructor, noise_sigma

__all__ = [
    "GlowPosteriorSampler",
    "LangevinChains",
    "PosteriorSamples",
    "hamiltonian",
    "langevin",
    "split_rhat",
]

METHODS = ("mala", "ula", "hmc")
# Per method: burn-in and thinning (in steps; HMC: trajectories) and the optimal acceptance.
_METHOD_DEFAULTS = {
    "mala": {"burn_in": 100, "thinning": 2, "target_accept": 0.574},
    "ula": {"burn_in": 100, "thinning": 2, "target_accept": 0.574},
    "hmc": {"burn_in": 20, "thinning": 1, "target_accept": 0.65},
}
PRECONDITIONERS = ("diagonal", "laplace")


@dataclass
class LangevinChains:
    """Output of :func:`langevin` for ``N`` independent chains.

    :param torch.Tensor draws: kept states ``(draws, N, d)``.
    :param torch.Tensor extras: what the potential returned with each kept state, ``(draws, N,
        ...)`` (the states themselves when it returned none).
    :param torch.Tensor energy: potential of each kept state ``(draws, N)``.
    :param torch.Tensor acceptance: fraction of accepted moves after burn-in ``(N,)``.
    :param torch.Tensor step_size: step size of each chain after burn-in ``(N,)``.
    :param int evaluations: batched potential-and-gradient evaluations.
    """

    draws: torch.Tensor
    extras: torch.Tensor
    energy: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    evaluations: int


def _evaluate(potential: Callable, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Energy, gradient and extra of each row; rows with a non-finite value get energy ``inf``."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        out = potential(z)
        energy, extra = out if isinstance(out, tuple) else (out, z)
        (grad,) = torch.autograd.grad(energy.sum(), z)
    finite = torch.isfinite(energy) & torch.isfinite(grad).all(dim=1)
    energy = torch.where(finite, energy.detach(), math.inf)
    return energy, torch.where(finite[:, None], grad, 0.0), extra.detach()


def langevin(
    potential: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    z0: torch.Tensor,
    draws: int,
    burn_in: int = 100,
    thinning: int = 1,
    step_size: float | torch.Tensor = 1e-2,
    adjusted: bool = True,
    adapt: bool = True,
    target_accept: float = 0.574,
    preconditioner: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> LangevinChains:
    r"""Langevin chains for the density :math:`\pi(z) \propto e^{-U(z)}`, one per row of ``z0``.

    Each step proposes :math:`z' = z - hM\nabla U(z) + \sqrt{2hM}\,\xi`, :math:`\xi \sim
    \mathcal{N}(0, I)`, with a constant diagonal preconditioner :math:`M` (default :math:`I`).
    MALA (``adjusted=True``) accepts it with probability :math:`\min(1, e^{U(z) - U(z') +
    \|\xi\|^2/2 - \|z - z' + hM\nabla U(z')\|_{M^{-1}}^2/(4h)})`;
    unadjusted Langevin (ULA) always accepts (its stationary law is biased by :math:`O(h)`). Both
    reject proposals whose energy or gradient is non-finite. With ``adapt``, each chain's step
    size follows :math:`\log h \mathrel{+}= g_t(\alpha_t - \alpha^\star)` during burn-in
    (:math:`\alpha_t` the MALA acceptance probability, also for ULA), then is frozen at the mean
    of :math:`\log h` over the second half of burn-in. One potential-and-gradient evaluation per
    step.

    :param Callable potential: ``z (N, d) -> U(z) (N,)``, or ``(U(z), extra)`` with ``extra`` a
        per-row tensor kept with the state (e.g. the decoded image). Differentiable in ``z``.
    :param torch.Tensor z0: starting states ``(N, d)``, with finite energy.
    :param int draws: states kept per chain after burn-in.
    :param int burn_in: steps discarded (and used for adaptation).
    :param int thinning: steps between kept states.
    :param float | torch.Tensor step_size: initial step size(s) :math:`h`, a number or ``(N,)``.
    :param bool adjusted: MALA (``True``) or ULA (``False``).
    :param bool adapt: adapt the step sizes during burn-in.
    :param float target_accept: target acceptance probability :math:`\alpha^\star`.
    :param torch.Tensor preconditioner: the diagonal of :math:`M`, positive, ``(N, d)`` or
        ``(d,)`` (e.g. approximate posterior variances).
    :param torch.Generator generator: random numbers (seeded for reproducibility).
    :param bool progress: show a progress bar.

    |sep|

    :Example:

    >>> import torch
    >>> from deepinv_glowprior.posterior import langevin
    >>> chains = langevin(lambda z: 0.5 * z.pow(2).sum(1), torch.zeros(4, 2), draws=50,
    ...                   generator=torch.Generator().manual_seed(0))
    >>> chains.draws.shape, chains.acceptance.shape
    (torch.Size([50, 4, 2]), torch.Size([4]))
    """
    log_h, metric = _check_chain_inputs(
        z0, draws, burn_in, thinning, target_accept, step_size, preconditioner
    )
    z, energy, grad, extra = _start_chains(potential, z0)
    record = _ChainRecord(log_h, burn_in, draws, thinning, adapt, target_accept)
    for t in tqdm(range(record.total), disable=not progress, desc="Langevin", leave=False):
        h = record.log_step.exp()[:, None]
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        proposal = z - h * metric * grad + (2 * h * metric).sqrt() * noise
        energy_p, grad_p, extra_p = _evaluate(potential, proposal)
        backward = (z - proposal + h * metric * grad_p).pow(2).div(metric).sum(1) / (4 * h[:, 0])
        log_alpha = energy - energy_p + 0.5 * noise.pow(2).sum(dim=1) - backward
        alpha, accept = _metropolis(log_alpha, torch.isfinite(energy_p), adjusted, generator)
        z, grad, energy, extra = _where_rows(
            accept, (proposal, grad_p, energy_p, extra_p), (z, grad, energy, extra)
        )
        record.step(t, alpha, accept, z, extra, energy)
    return record.chains(evaluations=record.total + 1)


def hamiltonian(
    potential: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    z0: torch.Tensor,
    draws: int,
    burn_in: int = 20,
    thinning: int = 1,
    step_size: float | torch.Tensor = 0.1,
    leapfrog_steps: int = 5,
    adapt: bool = True,
    target_accept: float = 0.65,
    preconditioner: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> LangevinChains:
    r"""Hamiltonian Monte Carlo chains for :math:`\pi(z) \propto e^{-U(z)}`, one per row of ``z0``.

    Each iteration draws a momentum :math:`p \sim \mathcal{N}(0, M^{-1})`, follows
    ``leapfrog_steps`` leapfrog steps of :math:`H(z, p) = U(z) + p^\top M p / 2` with step
    :math:`\epsilon` (jittered uniformly by :math:`\pm 20\%` per iteration, against periodic
    orbits) and accepts the end point with probability :math:`\min(1, e^{H_0 - H_1})`. A
    trajectory moves about ``leapfrog_steps`` times farther than a MALA step of the same
    :math:`\epsilon` (MALA is the one-step case, :math:`h = \epsilon^2/2`), so it travels where
    MALA diffuses; it costs ``leapfrog_steps`` potential-and-gradient evaluations. Step sizes are
    adapted during burn-in as in :func:`langevin`; ``burn_in``, ``draws`` and ``thinning`` count
    iterations (trajectories), not evaluations. Non-finite end points are rejected.

    :param Callable potential: ``z (N, d) -> U(z)`` or ``(U(z), extra)``, as in :func:`langevin`.
    :param torch.Tensor z0: starting states ``(N, d)``, with finite energy.
    :param int draws: states kept per chain after burn-in.
    :param int burn_in: iterations discarded (and used for adaptation).
    :param int thinning: iterations between kept states.
    :param float | torch.Tensor step_size: initial leapfrog step(s) :math:`\epsilon`, a number or
        ``(N,)``.
    :param int leapfrog_steps: leapfrog steps per iteration.
    :param bool adapt: adapt the step sizes during burn-in.
    :param float target_accept: target acceptance probability (about 0.65 is optimal for HMC).
    :param torch.Tensor preconditioner: the diagonal of :math:`M` (approximate posterior
        variances), positive, ``(N, d)`` or ``(d,)``.
    :param torch.Generator generator: random numbers (seeded for reproducibility).
    :param bool progress: show a progress bar.

    |sep|

    :Example:

    >>> import torch
    >>> from deepinv_glowprior.posterior import hamiltonian
    >>> chains = hamiltonian(lambda z: 0.5 * z.pow(2).sum(1), torch.zeros(4, 2), draws=20,
    ...                      generator=torch.Generator().manual_seed(0))
    >>> chains.draws.shape, chains.evaluations
    (torch.Size([20, 4, 2]), 201)
    """
    check_positive_int(leapfrog_steps, name="leapfrog_steps")
    log_eps, metric = _check_chain_inputs(
        z0, draws, burn_in, thinning, target_accept, step_size, preconditioner
    )
    z, energy, grad, extra = _start_chains(potential, z0)
    record = _ChainRecord(log_eps, burn_in, draws, thinning, adapt, target_accept)
    for t in tqdm(range(record.total), disable=not progress, desc="HMC", leave=False):
        jitter = 0.8 + 0.4 * torch.rand(z.shape[:1], generator=generator, device=z.device)
        eps = (record.log_step.exp() * jitter.to(z))[:, None]
        momentum = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        momentum = momentum / metric.sqrt()
        start_h = energy + 0.5 * (momentum.pow(2) * metric).sum(dim=1)
        position, grad_end = z, grad
        momentum = momentum - 0.5 * eps * grad_end
        for step in range(leapfrog_steps):
            position = position + eps * metric * momentum
            energy_end, grad_end, extra_end = _evaluate(potential, position)
            if step < leapfrog_steps - 1:
                momentum = momentum - eps * grad_end
        momentum = momentum - 0.5 * eps * grad_end
        end_h = energy_end + 0.5 * (momentum.pow(2) * metric).sum(dim=1)
        finite = torch.isfinite(end_h)
        alpha, accept = _metropolis(start_h - end_h, finite, True, generator)
        z, grad, energy, extra = _where_rows(
            accept, (position, grad_end, energy_end, extra_end), (z, grad, energy, extra)
        )
        record.step(t, alpha, accept, z, extra, energy)
    return record.chains(evaluations=record.total * leapfrog_steps + 1)


def _check_chain_inputs(
    z0, draws, burn_in, thinning, target_accept, step_size, preconditioner
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the common chain arguments; return the log step sizes ``(N,)`` and the metric."""
    if not isinstance(z0, torch.Tensor) or z0.dim() != 2 or z0.shape[0] == 0:
        raise ValueError(f"z0 must be a tensor of shape (N, d), got {getattr(z0, 'shape', z0)!r}.")
    check_finite_tensor(z0, name="z0")
    check_positive_int(draws, name="draws")
    check_positive_int(burn_in, name="burn_in", minimum=0)
    check_positive_int(thinning, name="thinning")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}.")
    if isinstance(step_size, torch.Tensor):
        log_step = step_size.detach().to(z0).expand(z0.shape[0]).log().clone()
    else:
        log_step = torch.full_like(
            z0[:, 0],
            math.log(check_nonnegative_number(step_size, name="step_size", allow_zero=False)),
        )
    if not bool(torch.isfinite(log_step).all()):
        raise ValueError("step_size must hold finite values > 0.")
    if preconditioner is None:
        return log_step, torch.ones_like(z0[:1])
    metric = torch.as_tensor(preconditioner).detach().to(z0)
    if metric.shape[-1] != z0.shape[1] or not bool((metric > 0).all() & metric.isfinite().all()):
        raise ValueError(f"preconditioner must hold {z0.shape[1]} finite values > 0 per row.")
    return log_step, metric


def _start_chains(potential: Callable, z0: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The chains' first states ``z0`` with their energy, gradient and extra; all must be finite."""
    z = z0.detach().clone()
    energy, grad, extra = _evaluate(potential, z)
    if not bool(torch.isfinite(energy).all()):
        raise ValueError("The potential is not finite at z0; start the chains at finite states.")
    return z, energy, grad, extra


def _where_rows(
    accept: torch.Tensor, proposed: tuple[torch.Tensor, ...], current: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """Row by row, the proposed tensor where ``accept`` holds and the current one elsewhere."""
    return tuple(
        torch.where(accept.view(-1, *[1] * (new.dim() - 1)), new, old)
        for new, old in zip(proposed, current, strict=True)
    )


def _metropolis(
    log_alpha: torch.Tensor, finite: torch.Tensor, adjusted: bool, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Acceptance probabilities and decisions; non-finite proposals are always rejected."""
    log_alpha = torch.where(finite, log_alpha.nan_to_num(nan=-math.inf), -math.inf)
    alpha = log_alpha.clamp(max=0).exp()
    if not adjusted:
        return alpha, finite
    uniform = torch.rand(alpha.shape, generator=generator, device=alpha.device)
    return alpha, (uniform.to(alpha) < alpha) & finite


class _ChainRecord:
    """Step-size adaptation during burn-in, then the kept states and acceptance counts."""

    def __init__(
        self,
        log_step: torch.Tensor,
        burn_in: int,
        draws: int,
        thinning: int,
        adapt: bool,
        target_accept: float,
    ) -> None:
        self.log_step, self.burn_in, self.draws, self.thinning = log_step, burn_in, draws, thinning
        self.adapt, self.target_accept = adapt, target_accept
        self.total = burn_in + draws * thinning
        self.accepted = torch.zeros_like(log_step)
        self._log_step_sum, self._log_step_count = torch.zeros_like(log_step), 0
        self.kept: dict[str, list[torch.Tensor]] = {"z": [], "extra": [], "energy": []}

    def step(self, t, alpha, accept, z, extra, energy) -> None:
        if t < self.burn_in:
            if self.adapt:
                gain = 1.5 / (1 + t / 10) ** 0.5
                self.log_step = self.log_step + gain * (alpha - self.target_accept)
                if t >= self.burn_in // 2:
                    self._log_step_sum = self._log_step_sum + self.log_step
                    self._log_step_count += 1
                if t == self.burn_in - 1:
                    self.log_step = self._log_step_sum / self._log_step_count
            return
        self.accepted += accept.to(self.accepted)
        if (t - self.burn_in + 1) % self.thinning == 0:
            self.kept["z"].append(z)
            self.kept["extra"].append(extra)
            self.kept["energy"].append(energy)

    def chains(self, evaluations: int) -> LangevinChains:
        return LangevinChains(
            draws=torch.stack(self.kept["z"]),
            extras=torch.stack(self.kept["extra"]),
            energy=torch.stack(self.kept["energy"]),
            acceptance=self.accepted / (self.draws * self.thinning),
            step_size=self.log_step.exp(),
            evaluations=evaluations,
        )


def split_rhat(chains: torch.Tensor) -> torch.Tensor:
    r"""Split :math:`\hat R` of Gelman et al. (BDA3) for chains ``(M, N, ...)``, per trailing entry.

    Each chain is split into halves of :math:`n = \lfloor N/2 \rfloor` draws (the middle draw of
    an odd :math:`N` is dropped), giving :math:`2M` chains with means :math:`\bar\theta_j` and
    variances :math:`s_j^2`; with :math:`W = \mathrm{mean}_j s_j^2` and
    :math:`B/n = \mathrm{var}_j \bar\theta_j`,
    :math:`\hat R = \sqrt{((n-1)W/n + B/n) / W}`. Values near 1 (say below 1.1) are consistent
    with converged chains; an entry with no spread at all (:math:`W = B = 0`) gives 1, one with
    :math:`W = 0 < B` gives ``inf``.

    :param torch.Tensor chains: draws ``(M, N, ...)``: ``M`` chains of ``N >= 4`` draws.
    :return: :math:`\hat R`, shape ``chains.shape[2:]``.

    |sep|

    :Example:

    >>> import torch
    >>> from deepinv_glowprior.posterior import split_rhat
    >>> mixed = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    >>> bool(split_rhat(mixed) < 1.01), bool(split_rhat(mixed + torch.arange(4.0)[:, None]) > 1.5)
    (True, True)
    """
    if not isinstance(chains, torch.Tensor) or chains.dim() < 2:
        raise ValueError("chains must be a tensor of shape (chains, draws, ...).")
    if chains.shape[1] < 4:
        raise ValueError(f"split R-hat needs at least 4 draws per chain, got {chains.shape[1]}.")
    half = chains.shape[1] // 2
    split = torch.cat((chains[:, :half], chains[:, -half:]), dim=0).double()
    within = split.var(dim=1).mean(dim=0)
    between = split.mean(dim=1).var(dim=0)
    pooled = (half - 1) / half * within + between
    rhat = (pooled / within).sqrt()
    rhat = torch.where(within > 0, rhat, torch.where(between > 0, math.inf, 1.0))
    return rhat.to(chains.dtype if chains.is_floating_point() else torch.float64)


@dataclass
class PosteriorSamples:
    r"""What :meth:`GlowPosteriorSampler.sample` returns, for ``B`` measurements.

    :param torch.Tensor samples: posterior samples ``(K, B, C, H, W)`` in [0, 1], ``K =
        chains * draws``, chain-major (sample ``c * draws + t`` is draw ``t`` of chain ``c``).
    :param torch.Tensor mean: posterior mean ``(B, C, H, W)``.
    :param torch.Tensor std: pixelwise posterior standard deviation ``(B, C, H, W)``.
    :param torch.Tensor map: the MAP estimate the chains started from ``(B, C, H, W)``.
    :param torch.Tensor z: latent samples ``(K, B, n)``.
    :param torch.Tensor energy: :math:`U(z)` along the chains ``(B, chains, draws)``.
    :param torch.Tensor acceptance: acceptance rate per image (mean over chains) ``(B,)``.
    :param torch.Tensor step_size: step size per image and chain ``(B, chains)``.
    :param torch.Tensor rhat: split :math:`\hat R` of the energy per image ``(B,)``.
    :param torch.Tensor rhat_pixels: split :math:`\hat R` per pixel ``(B, C, H, W)``.
    :param float sigma: the noise level read from the physics.
    :param int evaluations: batched Glow forward+backward evaluations of the chains (MAP
        excluded), each on ``B * chains`` latents.
    :param dict seconds: wall-clock time of the ``"map"`` solve and of the ``"chains"``, and the
        process CPU time of each (``"map_cpu"``, ``"chains_cpu"``; all threads).
    """

    samples: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    map: torch.Tensor
    z: torch.Tensor
    energy: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    rhat: torch.Tensor
    rhat_pixels: torch.Tensor
    sigma: float
    evaluations: int
    seconds: dict[str, float]

    def interval(self, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixelwise equal-tailed credible interval ``(lower, upper)``, each ``(B, C, H, W)``."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}.")
        tails = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=self.samples.dtype)
        lower, upper = torch.quantile(self.samples, tails.to(self.samples.device), dim=0)
        return lower, upper


class GlowPosteriorSampler(Reconstructor):
    r"""Samples the posterior of an inverse problem under a Glow prior, in latent space.

    With :math:`y = A(x) + \varepsilon`, :math:`\varepsilon \sim \mathcal{N}(0, \sigma^2 I)` and
    :math:`x = G(z)`, :math:`z \sim \mathcal{N}(0, I_n)`, the latent posterior is

    .. math::

        p(z \mid y) \propto \exp\Big(-U(z)\Big), \qquad
        U(z) = \frac{\|A(G(z)) - y\|^2}{2\sigma^2} + \frac{\|z\|^2}{2},

    and :math:`G(z)` for :math:`z \sim p(z \mid y)` is a sample of :math:`p(x \mid y)` (no
    Jacobian is needed in latent space). :math:`\sigma` is read from ``physics.noise_model``
    (a :class:`deepinv.physics.GaussianNoise`). The MAP latent :math:`\arg\min_z U(z)` comes
    from :class:`GlowReconstructor` with :math:`\gamma = \sigma^2` (the Gaussian latent prior of
    :footcite:t:`asim2020invertible`). The latent posterior is badly conditioned (curvature
    :math:`\sim\|AJ\|^2/\sigma^2` along measured directions, 1 along the others), so the chains
    use a diagonal preconditioner :math:`M = (\mathrm{diag}(J^\top A^\top A J)/\sigma^2 + 1)^{-1}`,
    :math:`J = \partial G/\partial z` at the MAP, estimated with ``probes`` Rademacher probes.
    Each measurement gets ``chains`` chains (by default :func:`hamiltonian`: HMC, whose trajectories
    of ``leapfrog_steps`` gradient steps travel farther than Langevin steps; or :func:`langevin`:
    MALA or ULA; step sizes adapted during burn-in) started at the MAP plus a draw of
    :math:`\mathcal{N}(0, M)` (``jitter``; over-dispersed starts make :math:`\hat R` meaningful),
    and the whole batch runs as one batch of ``B * chains`` latents. Samples are clamped to [0, 1]
    and, with ``quantize`` (the default), put on the grid of the Glow's training data: a sample
    :math:`x` becomes :math:`k/(2^b-1)` with :math:`k = \lfloor 2^b x \rfloor` its bin (:math:`b` =
    ``n_bits``). The Glow is a density of dequantised data, :math:`(k + u)/2^b`, so this is the
    posterior of the discrete :math:`b`-bit image, on the scale of the data it was trained on (8-bit
    images as :math:`k/255`); without it, pixels of an 8-bit image sit half a bin off and a credible
    interval can never contain an exact 0. Their mean is what :meth:`forward` returns, so the
    sampler is a deepinv ``Reconstructor`` (e.g. for :func:`deepinv.test`).

    Short chains do not mix this 1024-dimensional posterior fully: :math:`\hat R` well above 1.1
    says so, and the intervals are then too narrow. Read the std map as a relative uncertainty,
    or run longer chains.

    :param Glow glow: a trained Glow.
    :param str method: ``"hmc"`` (default), ``"mala"`` or ``"ula"``.
    :param int chains: chains per measurement.
    :param int draws: kept draws per chain (``chains * draws`` samples per measurement).
    :param int | None burn_in: discarded steps per chain (used to adapt the step size); for
        HMC, trajectories of ``leapfrog_steps`` evaluations each. Default 100 for MALA and ULA,
        20 for HMC.
    :param int | None thinning: steps (HMC: trajectories) between kept draws; default 2 for MALA
        and ULA, 1 for HMC.
    :param float | None step_size: initial step size (adapted from there); default
        :math:`h = \sigma^2/10` (:math:`0.1` with ``preconditioner="laplace"``), and for HMC
        the leapfrog step :math:`\sqrt{2h}` (the step of the same reach).
    :param int leapfrog_steps: leapfrog steps per HMC trajectory.
    :param bool adapt: adapt step sizes during burn-in towards ``target_accept``.
    :param float | None target_accept: target acceptance probability; default the method's
        optimum, 0.574 for MALA and 0.65 for HMC.
    :param GlowReconstructor | None map_estimator: solver of the starting point; default
        ``GlowReconstructor(glow, gamma=(sigma / temperature)**2, max_iter=map_iter)``.
    :param int map_iter: L-BFGS iterations of the default MAP solver.
    :param str preconditioner: ``"diagonal"`` (the estimate above, ``probes`` backward passes
        per chain) or ``"laplace"``: the chains run in the coordinates :math:`w` of the Laplace
        approximation, :math:`z = z_{\mathrm{MAP}} + L^{-\top} w` with :math:`LL^\top = J^\top
        A^\top A J/\sigma^2 + I` (exact Gauss-Newton, one Glow backward pass per measurement
        and image, in chunks of ``jacobian_chunk`` latents), where the posterior is close to
        :math:`\mathcal{N}(0, I)` and mixes much faster; costlier to set up, especially for
        denoising and inpainting (:math:`m = n`).
    :param int probes: Rademacher probes of the diagonal preconditioner (0: no preconditioning).
    :param int jacobian_chunk: latents per backward pass of the Laplace preconditioner (memory).
    :param bool jitter: start the chains at the MAP plus a draw of :math:`\mathcal{N}(0, M)`
        (with a preconditioner), rather than all at the MAP.
    :param bool quantize: return samples (and the MAP) on the ``n_bits`` grid of the training
        data (see above); ``False`` keeps :math:`G(z)` clamped to [0, 1], for images that are
        not quantised.
    :param float temperature: scale :math:`T` of the latent prior, :math:`z \sim
        \mathcal{N}(0, T^2 I)`: :math:`\|z\|^2/2` becomes :math:`\|z\|^2/(2T^2)` in
        :math:`U` (and :math:`\gamma = \sigma^2/T^2` in the MAP). ``1`` is the Glow's own
        prior; Glow samples look best near ``0.7``.
    :param int seed: seed of the chains' random numbers.
    :param bool progress: show progress bars.

    |sep|

    :Example:

    >>> import torch, deepinv as dinv
    >>> from deepinv_glowprior import Glow, GlowPosteriorSampler
    >>> glow = Glow(img_size=(1, 8, 8), levels=2, steps=2, hidden_channels=8)
    >>> glow = glow.initialize(torch.rand(8, 1, 8, 8)).eval()
    >>> physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> sampler = GlowPosteriorSampler(glow, chains=2, draws=5, burn_in=10, map_iter=5)
    >>> out = sampler.sample(y, physics)
    >>> out.samples.shape, out.std.shape, out.rhat.shape
    (torch.Size([10, 2, 1, 8, 8]), torch.Size([2, 1, 8, 8]), torch.Size([2]))
    """

    def __init__(
        self,
        glow: Glow,
        method: str = "hmc",
        chains: int = 4,
        draws: int = 25,
        burn_in: int | None = None,
        thinning: int | None = None,
        step_size: float | None = None,
        leapfrog_steps: int = 5,
        adapt: bool = True,
        target_accept: float | None = None,
        map_estimator: GlowReconstructor | None = None,
        map_iter: int = 100,
        probes: int = 16,
        preconditioner: str = "diagonal",
        jacobian_chunk: int = 64,
        jitter: bool = True,
        quantize: bool = True,
        temperature: float = 1.0,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(glow, Glow):
            raise TypeError(f"glow must be a deepinv_glowprior.Glow, got {type(glow).__name__}.")
        if not glow.is_initialized:
            raise ValueError("The Glow is untrained; load or train a model before sampling.")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        if map_estimator is not None and not isinstance(map_estimator, GlowReconstructor):
            raise TypeError("map_estimator must be a GlowReconstructor or None.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}.")
        defaults = _METHOD_DEFAULTS[method]
        burn_in = defaults["burn_in"] if burn_in is None else burn_in
        thinning = defaults["thinning"] if thinning is None else thinning
        target_accept = defaults["target_accept"] if target_accept is None else target_accept
        if not (isinstance(target_accept, float) and 0 < target_accept < 1):
            raise ValueError(f"target_accept must be a float in (0, 1), got {target_accept!r}.")
        self.leapfrog_steps = check_positive_int(leapfrog_steps, name="leapfrog_steps")
        self.glow = glow
        self.method = method
        self.chains = check_positive_int(chains, name="chains")
        self.draws = check_positive_int(draws, name="draws", minimum=4)
        self.burn_in = check_positive_int(burn_in, name="burn_in", minimum=0)
        self.thinning = check_positive_int(thinning, name="thinning")
        self.step_size = (
            None
            if step_size is None
            else check_nonnegative_number(step_size, name="step_size", allow_zero=False)
        )
        self.adapt = adapt
        self.target_accept = target_accept
        self.map_estimator = map_estimator
        self.map_iter = check_positive_int(map_iter, name="map_iter")
        self.probes = check_positive_int(probes, name="probes", minimum=0)
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(
                f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}."
            )
        self.preconditioner = preconditioner
        self.jacobian_chunk = check_positive_int(jacobian_chunk, name="jacobian_chunk")
        self.jitter = jitter
        if not isinstance(quantize, bool):
            raise TypeError(f"quantize must be True or False, got {quantize!r}.")
        self.quantize = quantize
        self.temperature = check_nonnegative_number(
            temperature, name="temperature", allow_zero=False
        )
        self.seed = seed
        self.progress = progress

    def forward(self, y: torch.Tensor, physics, **kwargs) -> torch.Tensor:
        """Posterior mean ``(B, C, H, W)`` of the images measured as ``y``."""
        return self.sample(y, physics).mean

    def sample(self, y: torch.Tensor, physics) -> PosteriorSamples:
        """Run the chains; see :class:`PosteriorSamples` for what comes back."""
        try:
            sigma = noise_sigma(physics)
        except ValueError as err:
            raise ValueError(
                "Posterior sampling needs the Gaussian noise level sigma > 0 of the likelihood "
                "exp(-||A(G(z)) - y||^2 / (2 sigma^2)), read from physics.noise_model; build the "
                f"physics with deepinv.physics.GaussianNoise(sigma). ({err})"
            ) from err
        estimator = self.map_estimator or GlowReconstructor(
            self.glow,
            gamma=(sigma / self.temperature) ** 2,
            max_iter=self.map_iter,
            progress=self.progress,
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        solution = estimator.solve(y, physics)  # also checks y against physics and the Glow
        seconds = {"map": time.perf_counter() - started}
        seconds["map_cpu"] = time.process_time() - cpu_started
        batch, chains, shape = y.shape[0], self.chains, self.glow.img_size
        y_chains = y.detach().repeat(chains, *[1] * (y.dim() - 1))

        def potential(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x, _ = self.glow._decode(z)
            measured = torch.cat([physics.A(part) for part in x.split(batch)])
            misfit = (measured - y_chains).pow(2).flatten(1).sum(dim=1)
            prior = z.pow(2).sum(dim=1) / (2 * self.temperature**2)
            return misfit / (2 * sigma**2) + prior, x

        device = self.glow.device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        with self.glow.frozen():  # fixed weights while the chains run
            z_map = solution.z.detach().repeat(chains, 1)
            to_latent, metric, step_size = (lambda w: w), None, sigma**2 / 10
            if self.preconditioner == "laplace":
                to_latent = self._laplace_map(solution.z.detach(), physics, sigma, y[0].numel())
                z0, spread = torch.zeros_like(z_map), 1.0  # the whitened posterior: unit scale
                step_size = 0.1
            else:
                metric = self._metric(z_map, batch, physics, y_chains, sigma, generator)
                z0, spread = z_map, None if metric is None else metric.sqrt()
            if self.jitter and spread is not None:
                noise = torch.randn(z_map.shape, generator=generator, device=device).to(z_map)
                z0 = z0 + spread * noise
            chain_settings = {
                "draws": self.draws,
                "burn_in": self.burn_in,
                "thinning": self.thinning,
                "adapt": self.adapt,
                "target_accept": self.target_accept,
                "preconditioner": metric,
                "generator": generator,
                "progress": self.progress,
            }
            if self.step_size is not None:
                step_size = self.step_size
            elif self.method == "hmc":
                step_size = math.sqrt(2 * step_size)
            if self.method == "hmc":
                run = hamiltonian(
                    lambda w: potential(to_latent(w)),
                    z0,
                    step_size=step_size,
                    leapfrog_steps=self.leapfrog_steps,
                    **chain_settings,
                )
            else:
                run = langevin(
                    lambda w: potential(to_latent(w)),
                    z0,
                    step_size=step_size,
                    adjusted=self.method == "mala",
                    **chain_settings,
                )
            latents = to_latent(run.draws.flatten(0, 1)).view_as(run.draws).detach()
        seconds["chains"] = time.perf_counter() - started - seconds["map"]
        seconds["chains_cpu"] = time.process_time() - cpu_started - seconds["map_cpu"]
        draws = self.draws
        # (draws, chains * B, ...) -> (chains, draws, B, ...), chain-major like the samples.
        images = self._to_images(run.extras).view(draws, chains, batch, *shape).transpose(0, 1)
        samples = images.reshape(chains * draws, batch, *shape)
        energy = run.energy.view(draws, chains, batch).permute(2, 1, 0)
        z = (
            latents.view(draws, chains, batch, -1)
            .transpose(0, 1)
            .reshape(chains * draws, batch, -1)
        )
        return PosteriorSamples(
            samples=samples,
            mean=samples.mean(dim=0),
            std=samples.std(dim=0),
            map=self._to_images(solution.x),
            z=z,
            energy=energy,
            acceptance=run.acceptance.view(chains, batch).mean(dim=0),
            step_size=run.step_size.view(chains, batch).T,
            rhat=split_rhat(energy.permute(1, 2, 0)),
            rhat_pixels=split_rhat(images),
            sigma=sigma,
            evaluations=run.evaluations,
            seconds=seconds,
        )

    def _to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded latents as images: clamped to [0, 1], on the data grid with ``quantize``."""
        return self.glow.discretize(x) if self.quantize else x.clamp(0, 1)

    def _laplace_map(
        self, z_map: torch.Tensor, physics, sigma: float, m: int
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        r"""The map :math:`w \mapsto z_{\mathrm{MAP}} + L^{-\top} w` of each image's chains
        (rows ordered chain-major, like the chains), :math:`LL^\top = (AJ)^\top AJ/\sigma^2 + I`
        at :math:`z_{\mathrm{MAP}}` (``(B, n)``), :math:`AJ` built row by row: the gradient of
        measurement :math:`i` (of ``m`` per image) is one backward pass."""
        batch, n = z_map.shape
        copies = max(1, self.jacobian_chunk // batch)  # measurements per backward pass
        rows = []
        with torch.enable_grad():
            for first in range(0, m, copies):
                count = min(copies, m - first)
                latent = z_map.repeat(count, 1).requires_grad_(True)  # copy-major
                x, _ = self.glow._decode(latent)
                measured = torch.cat([physics.A(part) for part in x.split(batch)]).flatten(1)
                which = first + torch.arange(count, device=z_map.device).repeat_interleave(batch)
                picked = measured.gather(1, which[:, None]).sum()
                (grad,) = torch.autograd.grad(picked, latent)
                rows.append(grad.detach().view(count, batch, n).transpose(0, 1))
        jacobian = torch.cat(rows, dim=1)  # (B, m, n): A J of each image
        precision = jacobian.transpose(1, 2) @ jacobian / sigma**2
        eye = torch.eye(n, dtype=precision.dtype, device=precision.device)
        precision += eye / self.temperature**2
        lower = torch.linalg.cholesky(precision)  # (B, n, n)
        upper = lower.transpose(1, 2)

        def to_latent(w: torch.Tensor) -> torch.Tensor:
            rows = w.shape[0]
            # (copies * chains * B, n) -> (B, n, copies * chains): one triangular solve per image
            columns = w.view(rows // batch, batch, n).permute(1, 2, 0)
            offsets = torch.linalg.solve_triangular(upper, columns, upper=True)
            return z_map.repeat(rows // batch, 1) + offsets.permute(2, 0, 1).reshape(rows, n)

        return to_latent

    def _metric(self, z, batch, physics, y_chains, sigma, generator) -> torch.Tensor | None:
        r"""Inverse of :math:`\mathrm{diag}(J^\top A^\top A J)/\sigma^2 + 1` at ``z`` (the same
        start for every chain), shape ``(chains * B, n)``, :math:`J = \partial G/\partial z`,
        the Gauss-Newton diagonal estimated as :math:`\mathbb{E}_v (J^\top A^\top v)^2` over
        Rademacher probes :math:`v`."""
        if self.probes == 0:
            return None
        # The chains of an image share its metric: probe at the B starting latents, `chains`
        # probes per pass of chains * B rows.
        start = z[:batch].detach().repeat(self.chains, 1)
        squares = torch.zeros_like(start)
        passes = math.ceil(self.probes / self.chains)
        with torch.enable_grad():
            for _ in range(passes):
                probe = torch.randint(0, 2, y_chains.shape, generator=generator, device=z.device)
                latent = start.clone().requires_grad_(True)
                x, _ = self.glow._decode(latent)
                measured = torch.cat([physics.A(part) for part in x.split(batch)])
                (pullback,) = torch.autograd.grad((measured * (2 * probe - 1)).sum(), latent)
                squares += pullback.detach().pow(2)
        curvature = squares.view(self.chains, batch, -1).mean(0) / passes / sigma**2
        curvature = curvature.repeat(self.chains, 1)
        prior_curvature = 1 / self.temperature**2
        return (prior_curvature + curvature.nan_to_num(posinf=0.0)).reciprocal()
