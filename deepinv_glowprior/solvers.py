r"""Batched, guarded optimisers: many independent problems :math:`\min_{z_i} f_i(z_i)` at once.

Each sample of the batch has its own L-BFGS memory, step size, line search and stopping rule, so
sample :math:`i`'s result does not depend on what else is in the batch. A step whose objective is
non-finite (or, with ``line_search="guard"``, explodes) is rejected and retried with half the
step, so iterates stay where the generator is finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

__all__ = [
    "BatchObjective",
    "IterationCallback",
    "SolverResult",
    "batched_adam",
    "batched_lbfgs",
]

BatchObjective = Callable[..., torch.Tensor]
"""Maps latents ``(B, n)`` to per-sample objective values ``(B,)``; with ``row_subsets=True``
it is called as ``objective(z, rows)`` with the latents of batch rows ``rows`` only."""

IterationCallback = Callable[[int, torch.Tensor, int], None]
"""Called after each iteration as ``callback(iteration, best_z, sample_evaluations)``: the
iterations done (from 1), the best latents so far ``(B, n)`` (do not modify them) and the
objective-and-gradient evaluations of single samples so far, e.g. to trace convergence."""

_ARMIJO_C1 = 1e-4
_EXPLOSION_FACTOR = 10.0


@dataclass
class SolverResult:
    r"""What a batched solver returns.

    :param torch.Tensor z: best latents found, ``(B, n)``.
    :param torch.Tensor objective: their objective values, ``(B,)``.
    :param torch.Tensor iterations: iterations each sample ran, ``(B,)``.
    :param torch.Tensor converged: whether each sample met the stopping rule, ``(B,)``.
    :param list history: objective values ``(B,)`` after each iteration.
    :param int evaluations: batched objective-and-gradient evaluations.
    :param int sample_evaluations: objective-and-gradient evaluations of single samples (with
        ``row_subsets``, samples that have stopped or accepted their step are not evaluated).
    :param int rejected_steps: trial steps rejected because the objective was not finite.
    :param torch.Tensor step_shrink: per sample ``(B,)``, how much shorter than ``lr`` the steps
        taken were, in halvings (:math:`\log_2` of the ratio) summed over iterations: the
        ``max_step`` cap and line-search halvings of L-BFGS (a failed line search counts in
        full), the learning-rate halvings of Adam. Many per iteration mean ``lr`` is too large.
    """

    z: torch.Tensor
    objective: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    history: list[torch.Tensor] = field(default_factory=list)
    evaluations: int = 0
    rejected_steps: int = 0
    step_shrink: torch.Tensor | None = None
    sample_evaluations: int = 0


class _Evaluator:
    """Objective values and gradients of some rows of the batch, non-finite values as ``+inf``.

    With ``row_subsets`` only those rows are computed; otherwise the whole batch is, with the
    other rows at ``base`` (their current iterate).
    """

    def __init__(self, objective: BatchObjective, row_subsets: bool) -> None:
        self.objective = objective
        self.row_subsets = row_subsets
        self.count = 0
        self.samples = 0
        self.non_finite = 0

    def __call__(
        self, z: torch.Tensor, rows: torch.Tensor, base: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.row_subsets:
            values, grad = self._evaluate(z, rows)
        else:
            full = base.detach().clone()
            full[rows] = z
            values, grad = self._evaluate(full, None)
            values, grad = values[rows], grad[rows]
        finite = torch.isfinite(values) & torch.isfinite(grad).all(dim=1)
        self.non_finite += int((~finite).sum())
        return values.where(finite, torch.inf), grad.where(finite[:, None], 0.0)

    def _evaluate(
        self, z: torch.Tensor, rows: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.count += 1
        self.samples += z.shape[0]
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            values = self.objective(z) if rows is None else self.objective(z, rows)
            if values.shape != z.shape[:1]:
                raise ValueError(
                    f"The objective must return one value per sample, shape {tuple(z.shape[:1])},"
                    f" got {tuple(values.shape)}."
                )
            finite = torch.isfinite(values)
            (grad,) = torch.autograd.grad(values.where(finite, 0.0).sum(), z)
        return values.detach(), grad


def _two_loop_direction(
    grad: torch.Tensor,
    steps: torch.Tensor,
    grad_changes: torch.Tensor,
    rho: torch.Tensor,
    newest_first: list[int],
    initial_scale: torch.Tensor,
) -> torch.Tensor:
    """L-BFGS direction per sample; memory slots with ``rho == 0`` are skipped."""
    q = grad.clone()
    alphas = {}
    for slot in newest_first:
        alphas[slot] = rho[slot] * (steps[slot] * q).sum(dim=1)
        q -= alphas[slot][:, None] * grad_changes[slot]
    r = initial_scale[:, None] * q
    for slot in reversed(newest_first):
        beta = rho[slot] * (grad_changes[slot] * r).sum(dim=1)
        r += steps[slot] * (alphas[slot] - beta)[:, None]
    return -r


def _progress_bar(max_iter: int, progress: bool, desc: str):
    return tqdm(total=max_iter, disable=not progress, desc=desc, unit="it", leave=False)


def batched_lbfgs(
    objective: BatchObjective,
    z0: torch.Tensor,
    *,
    max_iter: int = 200,
    lr: float = 1.0,
    memory: int = 10,
    tol: float = 1e-7,
    grad_tol: float = 1e-7,
    line_search: str = "armijo",
    max_step: float | None = None,
    max_backtracks: int = 20,
    damped_iter: int = 0,
    damped_lr: float = 0.1,
    row_subsets: bool = False,
    progress: bool = False,
    callback: IterationCallback | None = None,
) -> SolverResult:
    r"""L-BFGS on each sample of a batch independently, with a guarded line search.

    The direction comes from the two-loop recursion on each sample's own curvature pairs
    :math:`(s_k, y_k)` (pairs with :math:`s_k^\top y_k \le 0` are skipped). The trial step
    :math:`t = \mathrm{lr}` (scaled by :math:`\min(1, 1/\|g\|_1)` while a sample has no
    curvature pair, as in ``torch.optim.LBFGS``), at most ``max_step`` long, is accepted when

    - ``"armijo"``: :math:`f(z + t d) \le f(z) + 10^{-4}\, t\, g^\top d` (sufficient decrease);
    - ``"guard"``: :math:`f(z + t d)` is finite and at most :math:`10\,(|f(z)| + 1)` (the
      reference protocol's fixed step, guarded against blow-ups);

    otherwise :math:`t` is halved. A sample stops when its relative decrease falls below ``tol``,
    its gradient's largest entry below ``grad_tol``, or no step is accepted twice in a row.

    The first ``damped_iter`` iterations take the short step ``damped_lr`` instead, with the
    ``"guard"`` rule and no ``max_step``: the reference protocol's slow start, which follows the
    descent path from :math:`z_0` more closely and can avoid a local minimum that long first
    steps run into. The curvature pairs gathered meanwhile are kept.

    :param objective: maps ``(B, n)`` latents to ``(B,)`` values; must be differentiable.
    :param torch.Tensor z0: starting latents ``(B, n)``.
    :param int max_iter: iterations (one direction and line search each).
    :param float lr: initial trial step.
    :param int memory: curvature pairs kept per sample.
    :param float tol: relative decrease below which a sample has converged.
    :param float grad_tol: gradient sup-norm below which a sample has converged.
    :param str line_search: ``"armijo"`` or ``"guard"``.
    :param float max_step: largest Euclidean step in latent space (``None``: no cap).
    :param int max_backtracks: step halvings before a line search gives up.
    :param int damped_iter: iterations at the short step ``damped_lr`` before the others.
    :param float damped_lr: the step of those iterations.
    :param bool row_subsets: call ``objective(z, rows)`` on the rows still searching only, so
        samples that stopped or accepted their step cost nothing (``rows`` indexes the batch).
    :param bool progress: show a progress bar.
    :param IterationCallback callback: called after each iteration (see
        :data:`IterationCallback`).
    :return: :class:`SolverResult`.

    :Example:

    >>> import torch
    >>> target = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    >>> result = batched_lbfgs(lambda z: ((z - target) ** 2).sum(1), torch.zeros(2, 2))
    >>> bool(torch.allclose(result.z, target, atol=1e-4))
    True
    """
    if line_search not in ("armijo", "guard"):
        raise ValueError(f"line_search must be 'armijo' or 'guard', got {line_search!r}.")
    if z0.dim() != 2:
        raise ValueError(f"z0 must have shape (B, n), got {tuple(z0.shape)}.")
    if isinstance(damped_iter, bool) or not isinstance(damped_iter, int) or damped_iter < 0:
        raise ValueError(f"damped_iter must be an int >= 0, got {damped_iter!r}.")
    if not (isinstance(damped_lr, (int, float)) and math.isfinite(damped_lr) and damped_lr > 0):
        raise ValueError(f"damped_lr must be a finite number > 0, got {damped_lr!r}.")
    evaluate = _Evaluator(objective, row_subsets)
    batch, dim = z0.shape
    z = z0.detach().clone()
    every_row = torch.arange(batch, device=z.device)
    f, g = evaluate(z, every_row, z)
    if not bool(torch.isfinite(f).all()):
        raise FloatingPointError(
            "The objective is not finite at the starting point; start from z = 0 or a smaller "
            "initialisation."
        )
    steps = z.new_zeros(memory, batch, dim)
    grad_changes = z.new_zeros(memory, batch, dim)
    rho = z.new_zeros(memory, batch)
    initial_scale = z.new_ones(batch)
    has_pairs = torch.zeros(batch, dtype=torch.bool, device=z.device)
    active = torch.ones(batch, dtype=torch.bool, device=z.device)
    converged = torch.zeros(batch, dtype=torch.bool, device=z.device)
    failures = torch.zeros(batch, dtype=torch.long, device=z.device)
    iterations = torch.zeros(batch, dtype=torch.long, device=z.device)
    step_shrink = torch.zeros_like(f)
    history = [f.clone()]
    best_z, best_f = z.clone(), f.clone()
    bar = _progress_bar(max_iter, progress, "L-BFGS")
    for iteration in range(max_iter):
        damped = iteration < damped_iter
        step, rule = (damped_lr, "guard") if damped else (lr, line_search)
        newest_first = [(iteration - 1 - k) % memory for k in range(min(iteration, memory))]
        direction = _two_loop_direction(g, steps, grad_changes, rho, newest_first, initial_scale)
        slope = (g * direction).sum(dim=1)
        not_descent = ~(slope < 0)
        direction[not_descent] = -g[not_descent]
        slope = torch.where(not_descent, -(g * g).sum(dim=1), slope)
        t = torch.full_like(f, step)
        first_order = ~has_pairs | not_descent
        t = torch.where(first_order, step * torch.clamp(1.0 / g.abs().sum(dim=1), max=1.0), t)
        nominal = t.clone()
        if max_step is not None and not damped:
            t = torch.minimum(t, max_step / direction.norm(dim=1).clamp_min(1e-30))

        pending = active.clone()
        z_next, f_next, g_next = z.clone(), f.clone(), g.clone()
        for _ in range(max_backtracks + 1):
            rows = pending.nonzero().squeeze(1)
            trial = z[rows] + t[rows, None] * direction[rows]
            f_trial, g_trial = evaluate(trial, rows, z)
            f_now = f[rows]
            if rule == "armijo":
                ok = f_trial <= f_now + _ARMIJO_C1 * t[rows] * slope[rows]
            else:
                ok = torch.isfinite(f_trial) & (f_trial <= _EXPLOSION_FACTOR * (f_now.abs() + 1))
            accepted = rows[ok]
            z_next[accepted], f_next[accepted], g_next[accepted] = (
                trial[ok],
                f_trial[ok],
                g_trial[ok],
            )
            pending[accepted] = False
            t = torch.where(pending, 0.5 * t, t)
            if not bool(pending.any()):
                break
        moved = active & ~pending
        step_shrink += torch.where(active, torch.log2(nominal / t), 0.0)
        failures = torch.where(moved, 0, failures + (active & pending).long())

        s = z_next - z
        y = g_next - g
        curvature = (s * y).sum(dim=1)
        store = moved & (curvature > 1e-10 * s.norm(dim=1) * y.norm(dim=1))
        slot = iteration % memory
        steps[slot] = torch.where(store[:, None], s, 0.0)
        grad_changes[slot] = torch.where(store[:, None], y, 0.0)
        rho[slot] = torch.where(store, 1.0 / curvature.where(store, 1.0), 0.0)
        initial_scale = torch.where(
            store, curvature / (y * y).sum(dim=1).clamp_min(1e-30), initial_scale
        )
        has_pairs |= store
        # A failed line search clears that sample's memory: its curvature model was wrong.
        reset = active & pending
        rho[:, reset] = 0.0
        has_pairs &= ~reset
        initial_scale = torch.where(reset, 1.0, initial_scale)

        decrease = (f - f_next).abs() <= tol * f.abs().clamp_min(1.0)
        flat = g_next.abs().amax(dim=1) <= grad_tol
        done = moved & (decrease | flat) | (failures >= 2)
        z, f, g = z_next, f_next, g_next
        iterations += active.long()
        improved = f < best_f
        best_z[improved], best_f[improved] = z[improved], f[improved]
        if callback is not None:
            callback(iteration + 1, best_z, evaluate.samples)
        converged |= done
        active &= ~done
        history.append(f.clone())
        bar.update(1)
        bar.set_postfix(active=int(active.sum()), objective=f"{float(f.mean()):.4g}")
        if not bool(active.any()):
            break
    bar.close()
    return SolverResult(
        z=best_z,
        objective=best_f,
        iterations=iterations,
        converged=converged,
        history=history,
        evaluations=evaluate.count,
        rejected_steps=evaluate.non_finite,
        step_shrink=step_shrink,
        sample_evaluations=evaluate.samples,
    )


def batched_adam(
    objective: BatchObjective,
    z0: torch.Tensor,
    *,
    max_iter: int = 2000,
    lr: float = 1e-2,
    tol: float = 1e-7,
    patience: int = 20,
    betas: tuple[float, float] = (0.9, 0.999),
    row_subsets: bool = False,
    progress: bool = False,
    callback: IterationCallback | None = None,
) -> SolverResult:
    r"""Adam on each sample independently, keeping each sample's best iterate.

    A step to a non-finite objective is undone and that sample's learning rate halved. A sample
    stops after ``patience`` consecutive iterations whose relative improvement of its best value
    is below ``tol``.

    :param objective: maps ``(B, n)`` latents to ``(B,)`` values.
    :param torch.Tensor z0: starting latents ``(B, n)``.
    :param int max_iter: iterations.
    :param float lr: learning rate.
    :param float tol: relative improvement counted as progress.
    :param int patience: iterations without progress before a sample stops.
    :param tuple betas: Adam's moment decay rates.
    :param bool row_subsets: call ``objective(z, rows)`` on the samples still running only.
    :param bool progress: show a progress bar.
    :param IterationCallback callback: called after each iteration (see
        :data:`IterationCallback`).
    :return: :class:`SolverResult`.
    """
    if z0.dim() != 2:
        raise ValueError(f"z0 must have shape (B, n), got {tuple(z0.shape)}.")
    evaluate = _Evaluator(objective, row_subsets)
    batch = z0.shape[0]
    z = z0.detach().clone()
    f, g = evaluate(z, torch.arange(batch, device=z.device), z)
    if not bool(torch.isfinite(f).all()):
        raise FloatingPointError("The objective is not finite at the starting point.")
    beta1, beta2 = betas
    first_moment, second_moment = torch.zeros_like(z), torch.zeros_like(z)
    step_size = torch.full_like(f, lr)
    best_z, best_f = z.clone(), f.clone()
    stale = torch.zeros(batch, dtype=torch.long, device=z.device)
    active = torch.ones(batch, dtype=torch.bool, device=z.device)
    iterations = torch.zeros(batch, dtype=torch.long, device=z.device)
    step_shrink = torch.zeros_like(f)
    history = [f.clone()]
    bar = _progress_bar(max_iter, progress, "Adam")
    for iteration in range(1, max_iter + 1):
        first_moment = torch.where(
            active[:, None], beta1 * first_moment + (1 - beta1) * g, first_moment
        )
        second_moment = torch.where(
            active[:, None], beta2 * second_moment + (1 - beta2) * g * g, second_moment
        )
        corrected = (first_moment / (1 - beta1**iteration)) / (
            (second_moment / (1 - beta2**iteration)).sqrt() + 1e-8
        )
        trial = torch.where(active[:, None], z - step_size[:, None] * corrected, z)
        rows = active.nonzero().squeeze(1)
        f_trial, g_trial = f.clone(), g.clone()
        f_trial[rows], g_trial[rows] = evaluate(trial[rows], rows, z)
        finite = torch.isfinite(f_trial)
        step_size = torch.where(active & ~finite, 0.5 * step_size, step_size)
        step_shrink += torch.where(active, torch.log2(lr / step_size), 0.0)
        keep = active & finite
        z = torch.where(keep[:, None], trial, z)
        f = torch.where(keep, f_trial, f)
        g = torch.where(keep[:, None], g_trial, g)
        progress_made = f < best_f - tol * best_f.abs().clamp_min(1.0)
        improved = f < best_f
        best_z[improved], best_f[improved] = z[improved], f[improved]
        if callback is not None:
            callback(iteration, best_z, evaluate.samples)
        stale = torch.where(progress_made, 0, stale + 1)
        iterations += active.long()
        active &= stale < patience
        history.append(f.clone())
        bar.update(1)
        if not bool(active.any()):
            break
    bar.close()
    converged = stale >= patience
    return SolverResult(
        z=best_z,
        objective=best_f,
        iterations=iterations,
        converged=converged,
        history=history,
        evaluations=evaluate.count,
        rejected_steps=evaluate.non_finite,
        step_shrink=step_shrink,
        sample_evaluations=evaluate.samples,
    )
