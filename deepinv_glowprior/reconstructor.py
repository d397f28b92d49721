r"""Latent-space reconstruction with a Glow prior, as a deepinv Reconstructor."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from deepinv.models import Reconstructor
from deepinv.physics import GaussianNoise

from deepinv_glowprior._checks import (
    check_dtype_device,
    check_finite_tensor,
    check_measurement_batch,
    check_nonnegative_number,
    check_physics_output,
    check_positive_int,
)
from deepinv_glowprior.batch_invariance import InvariantEvaluator
from deepinv_glowprior.glow import Glow
from deepinv_glowprior.solvers import (
    IterationCallback,
    SolverResult,
    StuckTest,
    batched_adam,
    batched_lbfgs,
)

__all__ = ["GlowReconstructor", "GlowSolution", "noise_sigma"]

REGULARIZERS = ("l2sq", "l2", "nll", None)
INITS = ("zero", "random", "pinv")
OPTIMIZERS = ("lbfgs", "adam")
PRESETS = ("paper",)
PAPER_TASKS = ("cs", "denoising", "inpainting")
_DEFAULTS = {"lbfgs": {"lr": 1.0, "max_iter": 300}, "adam": {"lr": 1e-2, "max_iter": 2000}}
# Diagnostics (warnings) of a finished solve; none fires on well-posed problems at the defaults.
_FEW_MEASUREMENTS = 0.02  # m/n below which y barely constrains the image
_NO_PROGRESS_RTOL = 1e-6  # relative decrease below which a sample made no progress
_MANY_HALVINGS = 4.0  # mean step shrink per iteration, in halvings: lr >= 16x too large
_MANY_REJECTED = 0.1  # fraction of trial steps rejected as non-finite
_RANGE_MARGIN = 1.0  # G(z) beyond [-margin, 1 + margin] before clamping: y is off-scale
_MISFIT_LEFT = 100.0  # residual (in m sigma^2) above which, after the retry, y is not explained
# x_hat = clamp(G(z)) does not explain y (its residual above _MISFIT_LEFT m sigma^2, or without a
# known noise level above this share of y's energy: a fit worse than 30 dB) ...
_CLAMPED_MISS = 1e-3
# ... though G(z) did, to a tenth of that: the fit relied on pixels outside [0, 1].
_CLAMPED_RATIO = 10.0
# The retry of misfit samples starts like the reference protocol at CS, with steps of 0.1, for
# this fraction of its iterations (50 of the default 300).
_RETRY_DAMPED_FRACTION = 1 / 6
_RETRY_DAMPED_LR = 0.1
# A sample that looks stuck in a local minimum gets its retry early, beside its first attempt,
# rather than at the end: after this fraction of the iterations (60 of 300), if its residual is
# still above _STUCK_RESIDUAL m sigma^2 and fell by less than half over the last half of them.
_STUCK_FRACTION = 1 / 5
_STUCK_RESIDUAL = 100.0
_STUCK_RATIO = 0.5
_STUCK_MIN_ITER = 10  # fewer iterations say too little about where a sample is going


@dataclass
class GlowSolution:
    """Everything :meth:`GlowReconstructor.solve` found, per sample of the batch.

    :param torch.Tensor x: reconstructions ``(B, C, H, W)`` clamped to [0, 1].
    :param torch.Tensor z: latents ``(B, n)``, with ``x = glow.decode(z).clamp(0, 1)``.
    :param torch.Tensor objective: final objective values ``(B,)``.
    :param torch.Tensor residual: :math:`\\|A(G(z)) - y\\|^2` per sample ``(B,)``.
    :param torch.Tensor gamma: regularisation weight used per sample ``(B,)``.
    :param torch.Tensor iterations: solver iterations per sample (all restarts, grid points and
        the retry of a misfit).
    :param list history: objective ``(B,)`` after each iteration of the last solve of the whole
        batch (not of the retry of misfit samples).
    :param int evaluations: batched Glow forward+backward evaluations.
    :param int sample_evaluations: Glow forward+backward evaluations of single images (the
        solver evaluates only the samples that still need it).
    :param int rejected_steps: trial steps rejected for a non-finite objective.
    :param torch.Tensor step_shrink: per sample ``(B,)``, how much shorter than ``lr`` the
        solver's steps were, in halvings summed over iterations (all restarts and grid points).
    :param torch.Tensor retried: per sample ``(B,)``, whether it was solved again from its start
        with short first steps (``retry_misfit``), early or at the end.
    :param torch.Tensor start: latents ``(B, n)`` the first solve started from, as ``init``
        gave them (restarts and retries start elsewhere). With a reconstructor as ``init``, a
        row of zeros is a sample that fell back to :math:`z_0 = 0`.
    """

    x: torch.Tensor
    z: torch.Tensor
    objective: torch.Tensor
    residual: torch.Tensor
    gamma: torch.Tensor
    iterations: torch.Tensor
    history: list[torch.Tensor] = field(default_factory=list)
    evaluations: int = 0
    rejected_steps: int = 0
    step_shrink: torch.Tensor | None = None
    sample_evaluations: int = 0
    retried: torch.Tensor | None = None
    start: torch.Tensor | None = None


def noise_sigma(physics) -> float:
    """Standard deviation of ``physics.noise_model`` (a deepinv ``GaussianNoise``), else error."""
    noise = getattr(physics, "noise_model", None)
    # Only a GaussianNoise: PoissonGaussianNoise and RicianNoise have a sigma too, but not the
    # Gaussian residual the discrepancy principle assumes.
    sigma = getattr(noise, "sigma", None) if isinstance(noise, GaussianNoise) else None
    if sigma is None:
        raise ValueError(
            f"gamma='auto' needs a Gaussian noise level, but {type(physics).__name__}'s "
            f"noise_model is {type(noise).__name__}; use deepinv.physics.GaussianNoise(sigma) or "
            "give gamma as a number."
        )
    sigma = torch.as_tensor(sigma)
    if sigma.numel() != 1:
        raise ValueError("gamma='auto' needs one noise level for the batch, got a tensor of them.")
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"gamma='auto' needs a noise level > 0, got sigma={sigma}.")
    return sigma


class GlowReconstructor(Reconstructor):
    r"""Reconstruction by empirical risk minimisation in the latent space of a Glow.

    For each measurement :math:`y_i` (independently of the rest of the batch) it solves

    .. math::

        z_i^\star = \arg\min_z \|A(G(z)) - y_i\|^2 + \gamma R(z), \qquad \hat x_i = G(z_i^\star),

    with :math:`R(z) = \|z\|^2` (``"l2sq"``, the paper's choice), :math:`\|z\|` (``"l2"``),
    :math:`-\log p_G(G(z)) = \tfrac12\|z\|^2 + \log|\det \partial G/\partial z|` up to a constant
    (``"nll"``), or nothing (``None``), following :footcite:t:`asim2020invertible`. The solver
    is a batched L-BFGS with a guarded line search
    (:func:`~deepinv_glowprior.solvers.batched_lbfgs`) or Adam; steps to non-finite objectives
    are rejected, so :math:`\hat x` is never NaN.

    ``gamma="auto"`` applies the discrepancy principle: going down a grid (default
    :math:`\sigma^2 \cdot 10^{2}, \ldots, 10^{-3}`), warm-started, each sample keeps the largest
    :math:`\gamma` whose residual satisfies :math:`\|A(G(z)) - y\|^2 \le \tau\, m\, \sigma^2`
    (:math:`m` entries of :math:`y`, :math:`\sigma` from ``physics.noise_model``).

    A sample whose residual ends far above the noise level (``retry_misfit`` times
    :math:`m\sigma^2`) has not explained :math:`y`; usually a long early step has taken it into a
    local minimum. It is solved once more from its start with short first steps (those of the
    reference protocol) and keeps the better of the two solutions. A sample that looks stuck
    early (after a fifth of the iterations, its residual above :math:`100\, m\sigma^2` and
    fallen by less than half over the last tenth) starts that retry at once, beside its first
    attempt, which goes on: the same two solves, finished sooner.

    ``init`` can be a classical deepinv reconstructor :math:`R` (for instance
    :func:`~deepinv_glowprior.baselines.total_variation`), a warm start: each sample starts at
    :math:`z_0 = G^{-1}(\mathrm{clamp}(R(y), 0, 1))`, or at :math:`z_0 = 0` where that latent
    is atypical for the Glow (:math:`\|z_0\| > \sqrt n`, the radius of the bulk of
    :math:`\mathcal{N}(0, I_n)`; solves from large latents end lower) or :math:`R(y)` is not
    finite; misfit samples are retried from :math:`z = 0`. It pays where :math:`R(y)` is
    already close to the truth (CS with many measurements) and costs where the data leave pixels
    free, which keep :math:`R`'s guess (inpainting); see the user guide for measurements.

    Works under ``torch.no_grad()`` callers such as :func:`deepinv.test`.

    Results are always finite, but a ``UserWarning`` says when one is not to be trusted: ``y``
    has very few entries for the image size (:math:`m/n < 0.02`); a sample's objective did not
    decrease from its start (e.g. a huge ``gamma`` or ``lr``); the steps taken were on average
    16 or more times shorter than ``lr`` (``lr`` far too large); more than 10% of the trial
    points were non-finite; :math:`G(z)` left :math:`[0, 1]` by more than 1 before clamping
    (``y`` off-scale, e.g. not divided by 255); a sample fits ``y`` only through pixels of
    :math:`G(z)` outside [0, 1], so that :math:`\hat x = \mathrm{clamp}(G(z), 0, 1)` leaves a
    residual above :math:`100\, m\sigma^2` (without a known noise level: above 0.1% of
    :math:`\|y\|^2`) and over 10 times :math:`G(z)`'s (the warning names the samples; seen on
    strongly coloured photographs far from ``natural32``'s patches); or, where misfits are
    retried, a sample's residual is still above :math:`100\, m\sigma^2` after its retry (the
    warning names the samples; ``restarts`` rescues some). Well-posed problems at the defaults
    give none.

    :param Glow glow: a trained (ActNorm-initialised) Glow.
    :param float | str gamma: regularisation weight, or ``"auto"``.
    :param str | None regularizer: ``"l2sq"``, ``"l2"``, ``"nll"`` or ``None``.
    :param init: ``"zero"``, ``"random"`` (:math:`\mathcal{N}(0, \mathrm{init\_std}^2 I)`),
        ``"pinv"`` (:math:`G^{-1}(\mathrm{clamp}(A^\dagger y, 0, 1))`, falling back to zero with a
        warning when that latent is non-finite or huge), a deepinv
        :class:`~deepinv.models.Reconstructor` ``R`` (a warm start, see below), a latent tensor
        ``(B, n)`` or ``(n,)``, or a callable ``init(y, physics) -> z``.
    :param float init_std: standard deviation of random initialisations.
    :param int restarts: solves per sample; restarts after the first start from random latents,
        and each sample keeps its lowest objective.
    :param float | None retry_misfit: a sample whose residual ends above ``retry_misfit``
        :math:`\cdot\, m \sigma^2` (that many times the expected noise energy: it has not
        explained :math:`y`, typically a local minimum) is solved once more from its start, the
        first sixth of the iterations (50 of 300) at the reference protocol's short step 0.1
        (``damped_iter`` of :func:`~deepinv_glowprior.solvers.batched_lbfgs`), and keeps the
        solution with the lower objective. Only with L-BFGS, ``gamma=0`` (a larger one holds the
        residual above the noise level by itself), a ``GaussianNoise`` of one level
        :math:`\sigma > 0`, and a physics that acts on each image alone; ``None``: never. A
        sample that looks stuck after a fifth of the iterations (60 of 300) starts its retry
        then, beside its first attempt, rather than at the end (see above; ``stuck_iter`` and
        ``is_stuck`` of :func:`~deepinv_glowprior.solvers.batched_lbfgs`); not with
        ``max_iter < 50``, where a fifth says too little.
    :param str optimizer: ``"lbfgs"`` or ``"adam"``.
    :param float lr: initial step (L-BFGS, default 1) or learning rate (Adam, default 0.01).
    :param int max_iter: iterations per solve (default 300 for L-BFGS, 2000 for Adam).
    :param float tol: relative decrease at which a sample stops.
    :param float max_step: largest latent step of L-BFGS (default :math:`\sqrt{n}/2`;
        ``math.inf`` for none).
    :param str line_search: ``"armijo"`` (default) or ``"guard"`` (fixed step, guarded).
    :param int memory: L-BFGS curvature pairs per sample (default 100: the latent problems are
        ill-conditioned, and the two-loop recursion costs little next to one Glow pass).
    :param float tau: discrepancy-principle safety factor.
    :param Sequence[float] gamma_grid: grid for ``gamma="auto"``, in units of :math:`\sigma^2`.
    :param int seed: seed of random initialisations.
    :param bool batch_invariant: compute so that sample :math:`i`'s result is bit-for-bit the
        same alone as in any batch (default). Without it, batched kernels round differently for
        different batch sizes, and on under-determined problems (e.g. :math:`\gamma = 0`,
        :math:`m < n`) the optimiser's path amplifies those last-bit differences into visibly
        different reconstructions. How (:mod:`~deepinv_glowprior.batch_invariance`): on CPU,
        oneDNN convolutions in chunks of at most 15 samples, where a check of this model, thread
        count and dtype (once per process, about 40 single-sample passes) finds each sample's
        bits independent of its chunk; otherwise PyTorch's native convolutions (oneDNN, NNPACK
        and cuDNN switched off during the solve; on CPU a decode and backward pass then takes
        about 1.4x as long as in the chunks for ``mnist32``). ``physics.A`` (and
        ``physics.A_dagger`` for ``init="pinv"``, and ``A`` and ``A_adjoint`` for a
        reconstructor given as ``init``, whose own arithmetic must not mix samples) is applied
        sample by sample (unless the physics holds per-sample parameters), and a lone sample is
        decoded with a copy of itself for company. The kernel switches are torch's
        global backend flags, restored after the solve: other threads of the process running
        convolutions meanwhile get them too.
    :param bool progress: show progress bars.
    :param IterationCallback callback: called after each solver iteration with the iteration
        number, the best latents so far ``(B, n)`` and the single-sample Glow evaluations so far
        (:data:`~deepinv_glowprior.solvers.IterationCallback`), e.g. to plot PSNR against work;
        each restart (and each ``gamma="auto"`` grid value) counts from 1 again, while the retry
        of misfit samples counts on from the solve it follows.

    |sep|

    :Example:

    >>> import torch, deepinv as dinv
    >>> from deepinv_glowprior import Glow, GlowReconstructor
    >>> glow = Glow(img_size=(1, 8, 8), levels=2, steps=2, hidden_channels=8)
    >>> glow = glow.initialize(torch.rand(8, 1, 8, 8)).eval()
    >>> physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> x_hat = GlowReconstructor(glow, gamma=0.01, max_iter=20)(y, physics)
    >>> x_hat.shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        glow: Glow,
        gamma: float | str = 0.0,
        regularizer: str | None = "l2sq",
        init: str | torch.Tensor | Callable = "zero",
        init_std: float = 0.1,
        restarts: int = 1,
        retry_misfit: float | None = 3.0,
        optimizer: str = "lbfgs",
        lr: float | None = None,
        max_iter: int | None = None,
        tol: float = 1e-6,
        max_step: float | None = None,
        line_search: str = "armijo",
        memory: int = 100,
        tau: float = 1.0,
        gamma_grid: Sequence[float] | None = None,
        seed: int = 0,
        batch_invariant: bool = True,
        progress: bool = False,
        callback: IterationCallback | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(glow, Glow):
            raise TypeError(f"glow must be a deepinv_glowprior.Glow, got {type(glow).__name__}.")
        if not glow.is_initialized:
            raise ValueError(
                "The Glow is untrained (ActNorm not initialised); load a trained model with "
                "load_pretrained(...) or Glow.load(path), or train one first."
            )
        if gamma != "auto":
            gamma = check_nonnegative_number(gamma, name="gamma")
        if regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {regularizer!r}.")
        if isinstance(init, str) and init not in INITS:
            raise ValueError(
                f"init must be one of {INITS}, a deepinv Reconstructor, a tensor or a callable, "
                f"got {init!r}."
            )
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}.")
        if line_search not in ("armijo", "guard"):
            raise ValueError(f"line_search must be 'armijo' or 'guard', got {line_search!r}.")
        check_positive_int(restarts, name="restarts")
        if retry_misfit is not None:
            retry_misfit = check_nonnegative_number(
                retry_misfit, name="retry_misfit", allow_zero=False
            )
        check_positive_int(memory, name="memory")
        if max_iter is not None:
            check_positive_int(max_iter, name="max_iter")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}.")
        self.glow = glow
        self.gamma = gamma
        self.regularizer = regularizer
        self.init = init
        self.init_std = check_nonnegative_number(init_std, name="init_std")
        self.restarts = restarts
        self.retry_misfit = retry_misfit
        self.optimizer = optimizer
        self.lr = (
            _DEFAULTS[optimizer]["lr"]
            if lr is None
            else check_nonnegative_number(lr, name="lr", allow_zero=False)
        )
        self.max_iter = _DEFAULTS[optimizer]["max_iter"] if max_iter is None else max_iter
        self.tol = check_nonnegative_number(tol, name="tol")
        if max_step is None:
            self.max_step = 0.5 * math.sqrt(glow.latent_dim)
        elif max_step == math.inf:
            self.max_step = None  # no trust region, as in the reference protocol
        else:
            self.max_step = check_nonnegative_number(max_step, name="max_step", allow_zero=False)
        self.line_search = line_search
        self.memory = memory
        self.tau = check_nonnegative_number(tau, name="tau", allow_zero=False)
        grid = (
            (100, 30, 10, 3, 1, 0.3, 0.1, 0.03, 0.01, 0.001) if gamma_grid is None else gamma_grid
        )
        try:
            self.gamma_grid = sorted((float(g) for g in grid), reverse=True)
        except (TypeError, ValueError) as err:
            raise TypeError(f"gamma_grid must be a sequence of numbers, got {grid!r}.") from err
        if not self.gamma_grid or any(not (math.isfinite(g) and g >= 0) for g in self.gamma_grid):
            raise ValueError(f"gamma_grid must hold finite numbers >= 0, got {gamma_grid!r}.")
        self.seed = seed
        if not isinstance(batch_invariant, bool):
            raise TypeError(f"batch_invariant must be True or False, got {batch_invariant!r}.")
        self.batch_invariant = batch_invariant
        self._invariant = InvariantEvaluator(glow, glow._decode, glow.latent_dim)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {type(callback).__name__}.")
        self.callback = callback
        self.progress = progress
        self.last_solution: GlowSolution | None = None
        self._row_subsets = False

    @classmethod
    def from_preset(
        cls, glow: Glow, preset: str = "paper", task: str = "cs", **overrides
    ) -> GlowReconstructor:
        r"""The reference protocol of :footcite:t:`asim2020invertible`.

        ``task="cs"``: L-BFGS, lr 0.1, 30 steps x 20 iterations, :math:`z_0 = 0`,
        :math:`\gamma = 0`. ``"denoising"`` / ``"inpainting"``: lr 1, 20 x 20 iterations, gamma as
        given (the paper swept it; default 0). One deviation from the paper: a step to a
        non-finite or exploding objective is rejected and halved (``line_search="guard"``), since
        the unguarded protocol can diverge to NaN.
        """
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
        if task not in PAPER_TASKS:
            raise ValueError(f"task must be one of {PAPER_TASKS}, got {task!r}.")
        settings = {
            "gamma": 0.0,
            "regularizer": "l2sq",
            "init": "zero",
            "optimizer": "lbfgs",
            "line_search": "guard",
            "memory": 100,
            "tol": 1e-9,
            "max_step": float("inf"),
            "retry_misfit": None,
        }
        if task == "cs":
            settings.update(lr=0.1, max_iter=30 * 20)
        else:
            settings.update(lr=1.0, max_iter=20 * 20)
        settings.update(overrides)
        return cls(glow, **settings)

    # -- deepinv interface ------------------------------------------------------------------
    def forward(self, y: torch.Tensor, physics, **kwargs) -> torch.Tensor:
        """Reconstruct images from measurements ``y`` of ``physics``; ``(B, C, H, W)`` in [0, 1]."""
        return self.solve(y, physics).x

    def solve(self, y: torch.Tensor, physics) -> GlowSolution:
        """Like :meth:`forward`, returning the latents, objectives and history too.

        The result is also kept as ``self.last_solution``.
        """
        # Row subsets of the batch can be evaluated alone unless the physics holds per-sample
        # parameters (B, ...), which a subset of the samples would not match.
        self._row_subsets = self._check_inputs(y, physics)
        self._warn_if_few_measurements(y)
        # Gradients w.r.t. z only: cheaper, and the weights stay untouched.
        with self.glow.frozen(), torch.enable_grad(), self._kernels():
            solution = self._solve(y.detach(), physics)
        self.last_solution = solution
        return solution

    # -- internals ----------------------------------------------------------------------------
    def _check_inputs(self, y: torch.Tensor, physics) -> bool:
        """Validate ``y`` and ``physics``; return whether ``physics.A`` maps one image to one."""
        check_measurement_batch(y, physics)
        check_dtype_device(y, name="y", dtype=self.glow.dtype, device=self.glow.device)
        if isinstance(physics, torch.nn.Module):
            for tensor in list(physics.parameters()) + list(physics.buffers()):
                if tensor.device != self.glow.device:
                    raise ValueError(
                        f"physics holds tensors on {tensor.device} but the Glow is on "
                        f"{self.glow.device}; call physics.to('{self.glow.device}')."
                    )
        check_finite_tensor(y, name="y")
        return check_physics_output(y, physics, self.glow.img_size, model="the Glow")[0] == 1

    def _warn_if_few_measurements(self, y: torch.Tensor) -> None:
        m, n = y[0].numel(), self.glow.latent_dim
        if m < _FEW_MEASUREMENTS * n:
            warnings.warn(
                f"y holds m={m} value(s) per image for n={n} pixels (m/n = {m / n:.3g}): the data "
                "fix at most m directions of the latent, so the reconstruction mostly reflects "
                "the prior and the initialisation. Take more measurements, or read x_hat as a "
                "prior guess.",
                stacklevel=3,
            )

    def _regularization(self, z: torch.Tensor, logdet: torch.Tensor | None) -> torch.Tensor:
        if self.regularizer == "l2sq":
            return z.pow(2).sum(dim=1)
        if self.regularizer == "l2":
            return z.pow(2).sum(dim=1).add(1e-12).sqrt()
        if self.regularizer == "nll":
            return 0.5 * z.pow(2).sum(dim=1) + logdet
        return torch.zeros_like(z[:, 0])

    def _kernels(self) -> contextlib.AbstractContextManager[None]:
        """Kernels that compute each sample alone (see ``batch_invariant``)."""
        if not self.batch_invariant:
            return contextlib.nullcontext()
        return self._invariant.kernels()

    def _as_in_a_batch(
        self, transform: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], inputs: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """``transform(inputs)``, each row's result independent of the others when
        ``batch_invariant`` asks for it (see ``InvariantEvaluator``)."""
        if not self.batch_invariant:
            return transform(inputs)
        return self._invariant(transform, inputs)

    def _decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`G(z)` and its log-determinant, a lone sample decoded as in a batch."""
        return self._as_in_a_batch(self.glow._decode, z)

    def _residual(self, x: torch.Tensor, y: torch.Tensor, physics) -> torch.Tensor:
        """:math:`\\|A(x_i) - y_i\\|^2` per sample ``(B,)``."""
        return (self._per_sample(physics.A, x) - y).pow(2).flatten(1).sum(dim=1)

    def _per_sample(
        self, operator: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor
    ) -> torch.Tensor:
        """``operator(inputs)``, one sample at a time when ``batch_invariant`` asks for it."""
        if self.batch_invariant and inputs.shape[0] > 1:
            # Matrix products (e.g. compressed sensing) round differently for different batch
            # sizes, so the operator sees one sample at a time.
            try:
                outputs = [operator(inputs[i : i + 1]) for i in range(inputs.shape[0])]
            except RuntimeError:  # per-sample parameters (B, ...) that one sample cannot meet
                outputs = []
            if outputs and all(output.shape[0] == 1 for output in outputs):
                return torch.cat(outputs)
        return operator(inputs)

    def _terms(self, z: torch.Tensor, y: torch.Tensor, physics) -> tuple[torch.Tensor, ...]:
        x, logdet = self._decode(z)
        return self._residual(x, y, physics), self._regularization(z, logdet)

    def _run_solver(
        self,
        objective,
        z0: torch.Tensor,
        damped_iter: int = 0,
        callback=None,
        is_stuck: StuckTest | None = None,
    ) -> SolverResult:
        if self.optimizer == "adam":
            return batched_adam(
                objective,
                z0,
                max_iter=self.max_iter,
                lr=self.lr,
                tol=self.tol,
                row_subsets=self._row_subsets,
                progress=self.progress,
                callback=callback or self.callback,
            )
        return batched_lbfgs(
            objective,
            z0,
            max_iter=self.max_iter,
            lr=self.lr,
            memory=self.memory,
            tol=self.tol,
            line_search=self.line_search,
            max_step=self.max_step,
            damped_iter=damped_iter,
            damped_lr=_RETRY_DAMPED_LR,
            stuck_iter=self._stuck_iter,
            is_stuck=is_stuck,
            restart_damped_iter=self._retry_damped_iter,
            row_subsets=self._row_subsets,
            progress=self.progress,
            callback=callback or self.callback,
        )

    def _initial_latent(self, y: torch.Tensor, physics, restart: int) -> torch.Tensor:
        batch, dim = y.shape[0], self.glow.latent_dim
        device, dtype = self.glow.device, self.glow.dtype
        if restart > 0 or self.init == "random":
            generator = torch.Generator(device=device).manual_seed(self.seed + restart)
            # One draw shared by the batch, so a sample's start does not depend on its position.
            noise = torch.randn(1, dim, generator=generator, device=device, dtype=dtype)
            return self.init_std * noise.expand(batch, dim).clone()
        if isinstance(self.init, str) and self.init == "zero":
            return torch.zeros(batch, dim, device=device, dtype=dtype)
        if isinstance(self.init, str) and self.init == "pinv":
            return self._pinv_latent(y, physics)
        if isinstance(self.init, Reconstructor):
            return self._warm_latent(y, physics)
        z0 = self.init(y, physics) if callable(self.init) else self.init
        z0 = torch.as_tensor(z0).to(device=device, dtype=dtype)
        if z0.dim() == 1:
            z0 = z0.expand(batch, -1)
        if tuple(z0.shape) != (batch, dim):
            raise ValueError(
                f"init must give latents of shape ({batch}, {dim}), got {tuple(z0.shape)}."
            )
        check_finite_tensor(z0, name="init")
        return z0.clone()

    def _warm_latent(self, y: torch.Tensor, physics) -> torch.Tensor:
        """:math:`G^{-1}` of the ``init`` reconstructor's images, zero where an image is not
        finite or its latent is atypical (norm above :math:`\\sqrt n`)."""
        with torch.no_grad():
            x0 = self._warm_images(y, self._operators_per_sample(physics))
        broken = ~torch.isfinite(x0).flatten(1).all(dim=1)
        z0, unusable = self._encoded_start(
            x0.nan_to_num(0.0).clamp(0, 1), limit=math.sqrt(self.glow.latent_dim)
        )
        return torch.where((unusable | broken)[:, None], 0.0, z0)

    def _encoded_start(self, x0: torch.Tensor, limit: float) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`G^{-1}(x_0)` (each row as in a batch) and which rows are unusable as a start:
        a non-finite latent or one of norm above ``limit``."""
        with torch.no_grad():
            z0, _ = self._as_in_a_batch(self.glow._encode, x0)
        return z0, ~torch.isfinite(z0).all(dim=1) | (z0.norm(dim=1) > limit)

    def _operators_per_sample(self, physics):
        """``physics`` whose ``A`` and ``A_adjoint`` see one sample at a time when
        ``batch_invariant`` asks for it: a reconstructor given as ``init`` then runs on the whole
        batch (one TV solve, not one per sample) with products that do not depend on it."""
        if not self.batch_invariant:
            return physics
        per_sample = copy.copy(physics)  # shares the operator's tensors; only the methods differ
        per_sample.A = lambda x, **kwargs: self._per_sample(lambda r: physics.A(r, **kwargs), x)
        per_sample.A_adjoint = lambda y, **kwargs: self._per_sample(
            lambda r: physics.A_adjoint(r, **kwargs), y
        )
        return per_sample

    def _warm_images(self, y: torch.Tensor, physics) -> torch.Tensor:
        """The ``init`` reconstructor's images of ``y``, checked against the Glow's size."""
        x0 = self.init(y, physics)
        if not isinstance(x0, torch.Tensor) or tuple(x0.shape) != (len(y), *self.glow.img_size):
            shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
            raise ValueError(
                f"init ({type(self.init).__name__}) must return one image of the Glow's size "
                f"{self.glow.img_size} per measurement, shape ({len(y)}, "
                f"{', '.join(map(str, self.glow.img_size))}) here, got {shape}."
            )
        return x0.to(device=self.glow.device, dtype=self.glow.dtype)

    def _pinv_latent(self, y: torch.Tensor, physics) -> torch.Tensor:
        with torch.no_grad():
            x0 = self._per_sample(physics.A_dagger, y).clamp(0, 1)
        limit = 10 * math.sqrt(self.glow.latent_dim)
        z0, unsafe = self._encoded_start(x0, limit)
        if bool(unsafe.any()):
            warnings.warn(
                f"init='pinv' gave non-finite or huge latents (norm > {limit:.0f}) for "
                f"{int(unsafe.sum())} of {len(z0)} samples; starting those from z = 0.",
                stacklevel=4,
            )
            z0 = torch.where(unsafe[:, None], 0.0, z0)
        return z0

    def _solve(self, y: torch.Tensor, physics) -> GlowSolution:
        if self.gamma == "auto":
            return self._solve_discrepancy(y, physics)
        gamma = torch.full((y.shape[0],), float(self.gamma), device=y.device, dtype=y.dtype)
        noise_energy = self._retry_noise_energy(y, physics, gamma)
        is_stuck = None
        if noise_energy is not None and self._stuck_iter >= _STUCK_MIN_ITER:

            def is_stuck(residual: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
                return (residual > _STUCK_RESIDUAL * noise_energy) & (
                    residual > _STUCK_RATIO * earlier
                )

        best: GlowSolution | None = None
        first_start: torch.Tensor | None = None
        stuck = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
        for restart in range(self.restarts):
            z0 = self._initial_latent(y, physics, restart)
            if first_start is None:
                first_start = z0.clone()
            solution = self._solve_fixed_gamma(y, physics, gamma, z0, is_stuck=is_stuck)
            start = solution.history[0]
            no_decrease = start - solution.objective <= _NO_PROGRESS_RTOL * start.abs()
            stuck &= no_decrease & (start > 0)  # a start with objective 0 is already optimal
            best = solution if best is None else _keep_better(best, solution)
        if noise_energy is not None:
            best = self._retry_misfits(y, physics, gamma, best, noise_energy)
        best.start = first_start
        self._diagnose(best, y, physics, stuck, noise_energy)
        return best

    @property
    def _stuck_iter(self) -> int:
        return round(self.max_iter * _STUCK_FRACTION)

    @property
    def _retry_damped_iter(self) -> int:
        return round(self.max_iter * _RETRY_DAMPED_FRACTION)

    def _retry_noise_energy(self, y: torch.Tensor, physics, gamma: torch.Tensor) -> float | None:
        r""":math:`m\sigma^2`, the unit of the retry's thresholds, or ``None`` where retries
        (``retry_misfit``) do not apply."""
        # With gamma > 0 the regulariser itself holds the residual above the noise level.
        if (
            self.retry_misfit is None
            or self.optimizer != "lbfgs"
            or not self._row_subsets
            or bool((gamma > 0).any())
        ):
            return None
        try:
            sigma = noise_sigma(physics)
        except ValueError:  # no single known Gaussian noise level: no misfit threshold
            return None
        return y[0].numel() * sigma**2

    def _retry_misfits(
        self,
        y: torch.Tensor,
        physics,
        gamma: torch.Tensor,
        solution: GlowSolution,
        noise_energy: float,
    ) -> GlowSolution:
        """Solve the samples whose residual is far above the noise level again, damped at first
        (those retried early already had theirs)."""
        misfit = (solution.residual > self.retry_misfit * noise_energy) & ~solution.retried
        rows = misfit.nonzero().squeeze(1)
        if rows.numel() == 0:
            return solution
        callback = None
        if self.callback is not None:  # report full-batch latents, counting on from the solve
            done_iterations = len(solution.history) - 1
            done_evaluations = solution.sample_evaluations

            def callback(iteration: int, rows_z: torch.Tensor, evaluations: int) -> None:
                self.callback(
                    done_iterations + iteration,
                    solution.z.index_copy(0, rows, rows_z),
                    done_evaluations + evaluations,
                )

        if isinstance(self.init, Reconstructor):  # the warm start may be why they misfit
            z0 = torch.zeros_like(solution.z[rows])
        else:
            z0 = self._initial_latent(y, physics, 0)[rows]
        retry = self._solve_fixed_gamma(
            y[rows],
            physics,
            gamma[rows],
            z0,
            damped_iter=self._retry_damped_iter,
            callback=callback,
        )
        kept = _keep_better_rows(solution, retry, rows)
        kept.retried = solution.retried | misfit
        return kept

    def _solve_fixed_gamma(
        self,
        y: torch.Tensor,
        physics,
        gamma: torch.Tensor,
        z0: torch.Tensor,
        damped_iter: int = 0,
        callback: IterationCallback | None = None,
        is_stuck: StuckTest | None = None,
    ) -> GlowSolution:
        def objective(z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            rows = slice(None) if rows is None else rows
            residual, regularization = self._terms(z, y[rows], physics)
            return residual + gamma[rows] * regularization

        result = self._run_solver(objective, z0, damped_iter, callback, is_stuck)
        with torch.no_grad():
            x, _ = self._decode(result.z)
            residual, _ = self._terms(result.z, y, physics)
        non_finite = ~torch.isfinite(x.flatten(1)).all(dim=1)
        if bool(non_finite.any()):  # cannot happen with finite objectives; never return NaN
            warnings.warn("Non-finite reconstruction replaced by G(0).", stacklevel=4)
            zero_image, _ = self._decode(torch.zeros_like(result.z[:1]))
            x = torch.where(non_finite[:, None, None, None], zero_image, x)
        return GlowSolution(
            x=x.clamp(0, 1),
            z=result.z,
            objective=result.objective,
            residual=residual,
            gamma=gamma.clone(),
            iterations=result.iterations,
            history=result.history,
            evaluations=result.evaluations,
            sample_evaluations=result.sample_evaluations,
            rejected_steps=result.rejected_steps,
            step_shrink=result.step_shrink,
            retried=(
                result.restarted.clone()
                if result.restarted is not None
                else torch.zeros_like(gamma, dtype=torch.bool)
            ),
        )

    def _solve_discrepancy(self, y: torch.Tensor, physics) -> GlowSolution:
        sigma = noise_sigma(physics)
        target = self.tau * y[0].numel() * sigma**2
        batch = y.shape[0]
        decided = torch.zeros(batch, dtype=torch.bool, device=y.device)
        gamma = torch.full((batch,), self.gamma_grid[0] * sigma**2, device=y.device, dtype=y.dtype)
        z = start = self._initial_latent(y, physics, 0)
        solution = None
        total_iterations = torch.zeros(batch, dtype=torch.long, device=y.device)
        evaluations = sample_evaluations = 0
        for grid_value in self.gamma_grid:
            gamma = torch.where(decided, gamma, grid_value * sigma**2)
            candidate = self._solve_fixed_gamma(y, physics, gamma, z)
            total_iterations += candidate.iterations
            evaluations += candidate.evaluations
            sample_evaluations += candidate.sample_evaluations
            # Decided samples keep their solution: re-solving them would tie them to the batch.
            solution = candidate if solution is None else _take(solution, candidate, ~decided)
            z = solution.z
            decided |= solution.residual <= target
            if bool(decided.all()):
                break
        if not bool(decided.all()):
            warnings.warn(
                f"gamma='auto': {int((~decided).sum())} sample(s) kept a residual above "
                f"tau*m*sigma^2 = {target:.4g} down to the smallest gamma; using it.",
                stacklevel=3,
            )
        solution.iterations = total_iterations
        solution.evaluations = evaluations
        solution.sample_evaluations = sample_evaluations
        solution.start = start.clone()
        self._diagnose(solution, y, physics, None)
        return solution

    def _diagnose(
        self,
        solution: GlowSolution,
        y: torch.Tensor,
        physics,
        stuck: torch.Tensor | None,
        noise_energy: float | None = None,
    ) -> None:
        """Warn about finite results that should not be trusted (see the class docstring);
        ``noise_energy`` (:math:`m\\sigma^2`, where misfits are retried) flags the samples still
        far from ``y`` after their retry."""
        batch = solution.z.shape[0]
        self._warn_if_clamping_breaks_the_fit(solution, y, physics)
        if noise_energy is not None:
            left = solution.residual > _MISFIT_LEFT * noise_energy
            if bool(left.any()):
                warnings.warn(
                    f"{_named_samples(left)} still leave a residual "
                    f"above {_MISFIT_LEFT:g} times the noise energy m*sigma^2 after the retry, "
                    "so their reconstruction does not explain y: a local minimum, too few "
                    "iterations (see last_solution.iterations), or an image far from the Glow's "
                    "training data. restarts=4 (random starts, the lowest objective kept) "
                    "rescues some local minima; last_solution.residual holds every sample's "
                    "residual.",
                    stacklevel=4,
                )
        if stuck is not None and bool(stuck.any()):
            default_lr = _DEFAULTS[self.optimizer]["lr"]
            if self.lr > default_lr:
                cause = f"lr={self.lr:.3g} is probably far too large (default {default_lr:g})"
            elif self.gamma > 0:
                cause = (
                    f"gamma={self.gamma:.3g} probably outweighs the data term (try a smaller "
                    "gamma or gamma='auto')"
                )
            else:
                cause = "the start is a stationary point; try init='random' or restarts"
            warnings.warn(
                f"The objective did not decrease from its starting value for {int(stuck.sum())} "
                f"of {batch} sample(s), so their reconstruction is the start G(z0) whatever y "
                f"is: {cause}.",
                stacklevel=4,
            )
        moving = ~stuck if stuck is not None else torch.ones_like(solution.iterations, dtype=bool)
        halvings = 0.0
        if solution.step_shrink is not None and bool(moving.any()):
            halvings = float(solution.step_shrink[moving].sum()) / max(
                int(solution.iterations[moving].sum()), 1
            )
        trials = max(solution.evaluations * batch, 1)
        rejected = solution.rejected_steps
        if rejected > _MANY_REJECTED * trials:
            warnings.warn(
                f"{rejected} of {trials} trial points ({rejected / trials:.0%}) gave a non-finite "
                "objective (G(z) overflowed, or left the domain of physics.A) and were rejected; "
                "the result is finite, but the solver wasted those evaluations. Lower lr or "
                "max_step, or make physics.A finite for every image.",
                stacklevel=4,
            )
        elif halvings >= _MANY_HALVINGS:
            warnings.warn(
                f"The solver's steps were on average {2**halvings:.3g} times shorter than "
                f"lr={self.lr:.3g} (cut by the line search or max_step, costing "
                f"{solution.evaluations} evaluations): lr is far too large for this problem "
                f"(default {_DEFAULTS[self.optimizer]['lr']:g}).",
                stacklevel=4,
            )
        with torch.no_grad():
            x, _ = self._decode(solution.z)
        low, high = float(x.min()), float(x.max())
        if low < -_RANGE_MARGIN or high > 1 + _RANGE_MARGIN:
            warnings.warn(
                f"Before clamping to [0, 1], the reconstruction G(z) reaches values in "
                f"[{low:.3g}, {high:.3g}]: no image in [0, 1] that the Glow likes fits y. Check "
                "the scale of y (e.g. divide 8-bit data by 255) and the physics; if both are "
                "right, the images are far from the Glow's training data (or the solve stopped "
                "early: see last_solution.iterations) and x_hat is its best in-range guess.",
                stacklevel=4,
            )

    def _warn_if_clamping_breaks_the_fit(self, solution: GlowSolution, y: torch.Tensor, physics):
        """Name the samples that fit ``y`` only through pixels of :math:`G(z)` outside [0, 1]."""
        with torch.no_grad():
            clamped_residual = self._residual(solution.x, y, physics)
        try:
            sigma = noise_sigma(physics)
        except ValueError:  # no single known Gaussian noise level
            sigma = 0.0
        if sigma > 0:
            bar = torch.full_like(clamped_residual, _MISFIT_LEFT * y[0].numel() * sigma**2)
            unit = f"{_MISFIT_LEFT:g} times the noise energy m*sigma^2"
        else:
            bar = _CLAMPED_MISS * y.pow(2).flatten(1).sum(dim=1)
            unit = f"{_CLAMPED_MISS:.1%} of the energy of y"
        broken = (
            (bar > 0)
            & (clamped_residual > bar)
            & (clamped_residual > _CLAMPED_RATIO * solution.residual)
        )
        if not bool(broken.any()):
            return
        warnings.warn(
            f"{_named_samples(broken)} fit y only through pixels "
            f"of G(z) outside [0, 1]: clamped to [0, 1], x_hat leaves a residual above {unit}, "
            f"over {_CLAMPED_RATIO:g} times G(z)'s. Such images are probably far from the Glow's "
            "training data; do not trust them (a Glow trained on similar images, or more "
            "measurements, would help).",
            stacklevel=5,
        )


def _named_samples(flagged: torch.Tensor) -> str:
    """``"2 of 8 sample(s) (index 1, 5)"`` for a boolean mask ``(B,)``; at most 10 indices."""
    rows = flagged.nonzero().squeeze(1).tolist()
    shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
    return f"{len(rows)} of {flagged.numel()} sample(s) (index {shown})"


def _keep_better(current: GlowSolution, candidate: GlowSolution) -> GlowSolution:
    """Per sample, the solution with the lower objective."""
    return _take(current, candidate, candidate.objective < current.objective)


def _keep_better_rows(
    current: GlowSolution, candidate: GlowSolution, rows: torch.Tensor
) -> GlowSolution:
    """``current`` with its samples ``rows`` replaced by ``candidate``'s (a solve of those rows
    alone) where that has the lower objective; work counts add up, the history stays."""
    better = candidate.objective < current.objective[rows]
    replace = rows[better]

    def put(whole: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        return whole.index_copy(0, replace, part[better])

    iterations = current.iterations.index_add(0, rows, candidate.iterations)
    step_shrink = current.step_shrink
    if step_shrink is not None and candidate.step_shrink is not None:
        step_shrink = step_shrink.index_add(0, rows, candidate.step_shrink)
    return GlowSolution(
        x=put(current.x, candidate.x),
        z=put(current.z, candidate.z),
        objective=put(current.objective, candidate.objective),
        residual=put(current.residual, candidate.residual),
        gamma=current.gamma,
        iterations=iterations,
        history=current.history,
        evaluations=current.evaluations + candidate.evaluations,
        sample_evaluations=current.sample_evaluations + candidate.sample_evaluations,
        rejected_steps=current.rejected_steps + candidate.rejected_steps,
        step_shrink=step_shrink,
        retried=current.retried,
    )


def _take(current: GlowSolution, candidate: GlowSolution, mask: torch.Tensor) -> GlowSolution:
    """Per sample, ``candidate`` where ``mask`` holds and ``current`` elsewhere."""
    pick = lambda a, b: torch.where(mask.view(-1, *[1] * (a.dim() - 1)), b, a)  # noqa: E731
    return GlowSolution(
        x=pick(current.x, candidate.x),
        z=pick(current.z, candidate.z),
        objective=pick(current.objective, candidate.objective),
        residual=pick(current.residual, candidate.residual),
        gamma=pick(current.gamma, candidate.gamma),
        iterations=current.iterations + candidate.iterations,
        history=candidate.history,
        evaluations=current.evaluations + candidate.evaluations,
        sample_evaluations=current.sample_evaluations + candidate.sample_evaluations,
        rejected_steps=current.rejected_steps + candidate.rejected_steps,
        step_shrink=_add(current.step_shrink, candidate.step_shrink),
        retried=(
            None
            if current.retried is None or candidate.retried is None
            else current.retried | candidate.retried
        ),
    )


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None or b is None else a + b
