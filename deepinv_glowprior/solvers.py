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
    "StuckTest",
    "batched_adam",
    "batched_lbfgs",
]

BatchObjective = Callable[..., torch.Tensor]
"""Maps latents ``(B, n)`` to per-sample objective values ``(B,)``; with ``row_subsets=True``
it is called as ``objective(z, rows)`` with the latents of batch rows ``rows`` only."""

StuckTest = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Called as ``is_stuck(values, earlier_values)`` with the objective values ``(R,)`` of some
samples after iteration ``stuck_iter`` and after iteration ``stuck_iter // 2``; returns ``(R,)``
booleans, true for the samples that get a second attempt."""

IterationCallback = Callable[[int, torch.Tensor, int], None]
"""Called after each iteration as ``callback(iteration, best_z, sample_evaluations)``: the
iterations done (from 1), the best latents so far ``(B, n)`` (do not modify them) and the
objective-and-gradient evaluations of single samples so far, e.g. to trace convergence. Where
samples run at their own pace (:func:`batched_lbfgs`), iteration :math:`k` is reported once every
sample still running has finished it; faster samples may be further on."""

_ARMIJO_C1 = 1e-4
_EXPLOSION_FACTOR = 10.0


@dataclass
class SolverResult:
    r"""What a batched solver returns.

    :param torch.Tensor z: best latents found, ``(B, n)``.
    :param torch.Tensor objective: their objective values, ``(B,)``.
    :param torch.Tensor iterations: iterations each sample ran, ``(B,)`` (both attempts of a
        sample that L-BFGS gave a second one).
    :param torch.Tensor converged: whether each sample met the stopping rule, ``(B,)``.
    :param list history: objective values ``(B,)`` after each iteration (a sample that stopped
        keeps its last value; of the first attempts where L-BFGS made second ones).
    :param int evaluations: batched objective-and-gradient evaluations.
    :param int sample_evaluations: objective-and-gradient evaluations of single samples (with
        ``row_subsets``, samples that have stopped or accepted their step are not evaluated).
    :param int rejected_steps: trial steps rejected because the objective was not finite.
    :param torch.Tensor step_shrink: per sample ``(B,)``, how much shorter than ``lr`` the steps
        taken were, in halvings (:math:`\log_2` of the ratio) summed over iterations: the
        ``max_step`` cap and line-search halvings of L-BFGS (a failed line search counts in
        full), the learning-rate halvings of Adam. Many per iteration mean ``lr`` is too large.
    :param torch.Tensor restarted: per sample ``(B,)``, whether L-BFGS gave it a second attempt
        from :math:`z_0` after ``stuck_iter`` iterations (``None`` from Adam).
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
    restarted: torch.Tensor | None = None


class _Evaluator:
    """Objective values and gradients of some rows of the batch, non-finite values as ``+inf``.

    With ``row_subsets`` only those rows are computed, in as few calls of the objective as hold
    at most ``max_rows`` rows each, of equal sizes (a call's autograd graph is what holds memory);
    otherwise the whole batch is, with the other rows at ``base`` (their current iterate).
    """

    def __init__(
        self, objective: BatchObjective, row_subsets: bool, max_rows: int | None = None
    ) -> None:
        self.objective = objective
        self.row_subsets = row_subsets
        self.max_rows = max_rows
        self.count = 0
        self.samples = 0
        self.non_finite = 0

    def __call__(
        self, z: torch.Tensor, rows: torch.Tensor, base: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.row_subsets:
            # Equal pieces: e.g. 37 rows with max_rows 32 go as 19 and 18, holding less than 32.
            count = -(-z.shape[0] // (self.max_rows or z.shape[0]))
            size = -(-z.shape[0] // count)
            pieces = [
                self._evaluate(z[start : start + size], rows[start : start + size])
                for start in range(0, z.shape[0], size)
            ]
            values = torch.cat([piece[0] for piece in pieces])
            grad = torch.cat([piece[1] for piece in pieces])
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


class _CurvatureMemory:
    """Each sample's last ``size`` L-BFGS curvature pairs :math:`(s_k, y_k)`.

    Samples write their pairs at their own pace (one slot per iteration they finish, in a ring),
    so a sample's direction depends on its own history only. Slots with ``rho == 0`` (a pair
    skipped or cleared) contribute nothing.
    """

    def __init__(self, size: int, like: torch.Tensor) -> None:
        batch, dim = like.shape
        self.size, self.dim = size, dim
        self.steps = like.new_zeros(size, batch, dim)
        self.grad_changes = like.new_zeros(size, batch, dim)
        self.rho = like.new_zeros(size, batch)
        self.written = torch.zeros(batch, dtype=torch.long, device=like.device)
        self.initial_scale = like.new_ones(batch)
        self.has_pairs = torch.zeros(batch, dtype=torch.bool, device=like.device)

    def direction(self, grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The two-loop recursion for batch rows ``rows`` with gradients ``grad`` ``(R, n)``."""
        written = self.written[rows]
        depth = min(int(written.max()), self.size) if rows.numel() else 0
        # Each row's pairs, newest first, gathered once: the loops below only take views, so a
        # call pays a few hundred small operations instead of a gather per pair and loop.
        back = torch.arange(depth, device=grad.device)[:, None]
        slots = (written - 1 - back) % self.size
        steps = self.steps[slots, rows]
        grad_changes = self.grad_changes[slots, rows]
        rhos = torch.where(back < written, self.rho[slots, rows], 0.0)
        q = grad.clone()
        alphas = []
        for step, grad_change, rho in zip(steps, grad_changes, rhos, strict=True):
            alphas.append(rho * (step * q).sum(dim=1))
            q -= alphas[-1][:, None] * grad_change
        r = self.initial_scale[rows, None] * q
        for index in reversed(range(depth)):
            beta = rhos[index] * (grad_changes[index] * r).sum(dim=1)
            r += steps[index] * (alphas[index] - beta)[:, None]
        return -r

    def write(
        self, rows: torch.Tensor, step: torch.Tensor, grad_change: torch.Tensor, moved: torch.Tensor
    ) -> None:
        """Record the iteration just finished by ``rows``; a pair is kept when it has positive
        curvature, and a sample whose line search failed (``~moved``) forgets all its pairs."""
        curvature = (step * grad_change).sum(dim=1)
        keep = moved & (curvature > 1e-10 * step.norm(dim=1) * grad_change.norm(dim=1))
        slot = self.written[rows] % self.size
        self.steps[slot, rows] = torch.where(keep[:, None], step, 0.0)
        self.grad_changes[slot, rows] = torch.where(keep[:, None], grad_change, 0.0)
        self.rho[slot, rows] = torch.where(keep, 1.0 / curvature.where(keep, 1.0), 0.0)
        scale = curvature / (grad_change * grad_change).sum(dim=1).clamp_min(1e-30)
        self.initial_scale[rows] = torch.where(keep, scale, self.initial_scale[rows])
        self.has_pairs[rows] |= keep
        self.written[rows] += 1
        forget = rows[~moved]
        self.rho[:, forget] = 0.0
        self.has_pairs[forget] = False
        self.initial_scale[forget] = 1.0

    def grow(self, count: int) -> None:
        """Room for ``count`` more samples, appended to the batch, with no pairs yet."""
        self.steps = torch.cat([self.steps, self.steps.new_zeros(self.size, count, self.dim)], 1)
        self.grad_changes = torch.cat(
            [self.grad_changes, self.grad_changes.new_zeros(self.size, count, self.dim)], 1
        )
        self.rho = torch.cat([self.rho, self.rho.new_zeros(self.size, count)], 1)
        self.written = torch.cat([self.written, self.written.new_zeros(count)])
        self.initial_scale = torch.cat([self.initial_scale, self.initial_scale.new_ones(count)])
        self.has_pairs = torch.cat([self.has_pairs, self.has_pairs.new_zeros(count)])


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
    stuck_iter: int = 0,
    is_stuck: StuckTest | None = None,
    restart_damped_iter: int = 0,
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

    Samples run at their own pace: each call of ``objective`` evaluates one trial point of every
    sample still running, whether it starts an iteration or backtracks, so the samples whose
    line search needs no halving go on while others halve, and calls stay large. Each sample's
    sequence of trial points is the same as if it ran alone (bit for bit, when the objective
    computes each row independently of the others).

    The first ``damped_iter`` iterations take the short step ``damped_lr`` instead, with the
    ``"guard"`` rule and no ``max_step``: the reference protocol's slow start, which follows the
    descent path from :math:`z_0` more closely and can avoid a local minimum that long first
    steps run into. The curvature pairs gathered meanwhile are kept.

    With ``is_stuck`` (and ``row_subsets``), a sample that has run ``stuck_iter`` iterations is
    tested once: ``is_stuck(f_k, f_{k/2})`` on its objective values after iterations
    :math:`k` = ``stuck_iter`` and :math:`k/2`. For a stuck sample (typically one in a local
    minimum whose objective has almost stopped falling) a second attempt starts from
    :math:`z_0`, without curvature pairs, with ``restart_damped_iter`` damped iterations, as an
    extra row of the calls, while the first attempt goes on; the sample keeps the better of the
    two (the best iterate of either). The second attempt counts its iterations on from
    ``stuck_iter`` (up to ``stuck_iter + max_iter``); ``history`` follows the first. Once
    :math:`k` second attempts keep curvature pairs, a call of ``objective`` holds at most
    :math:`B - k` rows (at least one): the solve then holds no more memory than without them,
    as long as one row of the objective's autograd graph outweighs one row of pairs
    (:math:`2 \cdot \mathrm{memory} \cdot n` floats; for a Glow, every flow step's activations).

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
    :param int stuck_iter: iterations after which ``is_stuck`` is asked.
    :param StuckTest is_stuck: which samples get a second attempt (see :data:`StuckTest`);
        ``None``: none.
    :param int restart_damped_iter: damped iterations at the start of a second attempt.
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
    for name, value in (("stuck_iter", stuck_iter), ("restart_damped_iter", restart_damped_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    if is_stuck is not None and not callable(is_stuck):
        raise TypeError(f"is_stuck must be callable or None, got {type(is_stuck).__name__}.")
    if is_stuck is not None and stuck_iter < 2:
        raise ValueError(f"is_stuck needs stuck_iter >= 2, got {stuck_iter}.")
    if is_stuck is not None and not row_subsets:
        raise ValueError(
            "is_stuck needs row_subsets=True: a second attempt is evaluated as an extra row of "
            "the sample it retries."
        )
    batch = z0.shape[0]
    # A call's autograd graph holds the memory; second attempts add rows, and their curvature
    # pairs are paid for by calls of fewer rows (see second_attempts).
    evaluate = _Evaluator(objective, row_subsets, max_rows=batch)
    check_stuck = is_stuck is not None and 0 < stuck_iter < max_iter
    # Rows 0..B-1 are the samples; a stuck sample's second attempt takes the next free row.
    rows_total = 2 * batch if check_stuck else batch
    sample_of = torch.arange(rows_total, device=z0.device) % batch
    second_row = torch.full((batch,), -1, dtype=torch.long, device=z0.device)
    next_free = batch
    start = z0.detach().clone()
    every_row = torch.arange(batch, device=start.device)
    f0, g0 = evaluate(start, every_row, start)
    if not bool(torch.isfinite(f0).all()):
        raise FloatingPointError(
            "The objective is not finite at the starting point; start from z = 0 or a smaller "
            "initialisation."
        )
    # The rows of second attempts are filled in when they start; the latent-sized ones (like
    # the curvature pairs) are only allocated then.
    z, g = start.clone(), g0.clone()
    f = torch.cat([f0, f0.new_zeros(rows_total - batch)])
    pairs = _CurvatureMemory(memory, start)
    active = torch.zeros(rows_total, dtype=torch.bool, device=z.device)
    active[:batch] = max_iter > 0
    converged = torch.zeros_like(active)
    failures = torch.zeros(rows_total, dtype=torch.long, device=z.device)
    iterations = torch.zeros_like(failures)
    backtracks = torch.zeros_like(failures)
    step_shrink = torch.zeros_like(f)
    direction, slope = torch.zeros_like(z), torch.zeros_like(f)
    t, nominal = torch.zeros_like(f), torch.zeros_like(f)
    # A second attempt counts its iterations on from stuck_iter, so its limits move with it.
    damped_until = torch.full_like(iterations, damped_iter)
    iteration_limit = torch.full_like(iterations, max_iter)
    trace = f.new_empty(max_iter + (stuck_iter if check_stuck else 0) + 1, rows_total)
    trace[0] = f
    best_z, best_f = z.clone(), f.clone()

    def start_iteration(rows: torch.Tensor) -> None:
        """Direction and first trial step of the next iteration of ``rows``."""
        damped = iterations[rows] < damped_until[rows]
        step = torch.full_like(f[rows], lr).masked_fill(damped, damped_lr)
        grad = g[rows]
        along = pairs.direction(grad, rows)
        along_slope = (grad * along).sum(dim=1)
        not_descent = ~(along_slope < 0)
        along[not_descent] = -grad[not_descent]
        along_slope = torch.where(not_descent, -(grad * grad).sum(dim=1), along_slope)
        first_order = ~pairs.has_pairs[rows] | not_descent
        trial_step = torch.where(
            first_order, step * torch.clamp(1.0 / grad.abs().sum(dim=1), max=1.0), step
        )
        nominal[rows] = trial_step
        if max_step is not None:
            capped = torch.minimum(trial_step, max_step / along.norm(dim=1).clamp_min(1e-30))
            trial_step = torch.where(damped, trial_step, capped)
        direction[rows], slope[rows], t[rows] = along, along_slope, trial_step
        backtracks[rows] = 0

    def finish_iteration(rows: torch.Tensor, moved: torch.Tensor, z_next, f_next, g_next) -> None:
        """Take the step of ``rows`` (or stay, where ``~moved``), learn and test for stopping."""
        step_shrink[rows] += torch.log2(nominal[rows] / t[rows])
        failures[rows] = torch.where(moved, 0, failures[rows] + 1)
        pairs.write(rows, z_next - z[rows], g_next - g[rows], moved)
        f_now = f[rows]
        decrease = (f_now - f_next).abs() <= tol * f_now.abs().clamp_min(1.0)
        flat = g_next.abs().amax(dim=1) <= grad_tol
        done = moved & (decrease | flat) | (failures[rows] >= 2)
        z[rows], f[rows], g[rows] = z_next, f_next, g_next
        iterations[rows] += 1
        trace[iterations[rows], rows] = f_next
        improved = f_next < best_f[rows]
        best_z[rows[improved]], best_f[rows[improved]] = z_next[improved], f_next[improved]
        converged[rows] |= done
        active[rows] = ~done & (iterations[rows] < iteration_limit[rows])
        if check_stuck:
            second_attempts(rows[(rows < batch) & (iterations[rows] == stuck_iter)])
        start_iteration(rows[active[rows]])

    def second_attempts(rows: torch.Tensor) -> None:
        """Start a second attempt, from z0 and damped, for the samples ``rows`` that ``is_stuck``
        picks; their first attempts go on."""
        nonlocal next_free, z, g, direction, best_z
        if rows.numel() == 0:
            return
        stuck = is_stuck(f[rows], trace[stuck_iter // 2, rows]).to(torch.bool).reshape(-1)
        if stuck.shape != rows.shape:
            raise ValueError(
                f"is_stuck must return one boolean per sample, shape {tuple(rows.shape)}, got "
                f"{tuple(stuck.shape)}."
            )
        samples = rows[stuck]
        if samples.numel() == 0:
            return
        new = torch.arange(next_free, next_free + samples.numel(), device=z.device)
        next_free += samples.numel()
        # One row less per call for each attempt's pairs: a row of a call's graph (every flow
        # step's activations) outweighs a row of pairs, so the solve holds no more than before.
        evaluate.max_rows = max(1, 2 * batch - next_free)
        z, best_z = torch.cat([z, start[samples]]), torch.cat([best_z, start[samples]])
        g = torch.cat([g, g0[samples]])
        direction = torch.cat([direction, torch.zeros_like(start[samples])])
        sample_of[new], second_row[samples] = samples, new
        f[new], best_f[new] = f0[samples], f0[samples]
        pairs.grow(samples.numel())
        iterations[new] = stuck_iter
        trace[stuck_iter, new] = f0[samples]
        damped_until[new] = stuck_iter + restart_damped_iter
        iteration_limit[new] = stuck_iter + max_iter
        active[new] = True
        start_iteration(new)

    def best_of_attempts() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample, the better attempt's best latents and value, and which rows it has."""
        z_best, f_best = best_z[:batch].clone(), best_f[:batch].clone()
        samples = (second_row >= 0).nonzero().squeeze(1)
        seconds = second_row[samples]
        better = best_f[seconds] < f_best[samples]
        z_best[samples[better]], f_best[samples[better]] = (
            best_z[seconds[better]],
            best_f[seconds[better]],
        )
        return z_best, f_best, samples

    reported = 0
    start_iteration(every_row[active[:batch]])
    bar = _progress_bar(trace.shape[0] - 1, progress, "L-BFGS")
    # Each call evaluates one trial of every running row, whether it starts an iteration or
    # backtracks: no call waits on the line searches of a few.
    while bool(active.any()):
        rows = active.nonzero().squeeze(1)
        trial = z[rows] + t[rows, None] * direction[rows]
        f_trial, g_trial = evaluate(trial, sample_of[rows], z[:batch])
        f_now = f[rows]
        guard_ok = torch.isfinite(f_trial) & (f_trial <= _EXPLOSION_FACTOR * (f_now.abs() + 1))
        if line_search == "armijo":
            armijo_ok = f_trial <= f_now + _ARMIJO_C1 * t[rows] * slope[rows]
            ok = torch.where(iterations[rows] < damped_until[rows], guard_ok, armijo_ok)
        else:
            ok = guard_ok
        t[rows] = torch.where(ok, t[rows], 0.5 * t[rows])
        backtracks[rows] += (~ok).long()
        finished = ok | (backtracks[rows] > max_backtracks)
        moved = ok[finished]
        finish_rows = rows[finished]
        finish_iteration(
            finish_rows,
            moved,
            torch.where(moved[:, None], trial[finished], z[finish_rows]),
            torch.where(moved, f_trial[finished], f[finish_rows]),
            torch.where(moved[:, None], g_trial[finished], g[finish_rows]),
        )
        # Iteration k is complete once every row still running has finished it.
        complete = int(iterations[active].min()) if bool(active.any()) else int(iterations.max())
        for iteration in range(reported + 1, complete + 1):
            if callback is not None:
                callback(iteration, best_of_attempts()[0], evaluate.samples)
            bar.update(1)
        reported = max(reported, complete)
        bar.set_postfix(active=int(active.sum()), objective=f"{float(f[:batch].mean()):.4g}")
    bar.close()
    z_best, f_best, retried = best_of_attempts()
    seconds = second_row[retried]
    # A sample's iterations and step shrink add up over its attempts.
    total_iterations = iterations[:batch].clone()
    total_iterations[retried] += iterations[seconds] - stuck_iter
    total_shrink = step_shrink[:batch].clone()
    total_shrink[retried] += step_shrink[seconds]
    total_converged = converged[:batch].clone()
    total_converged[retried] |= converged[seconds]
    restarted = torch.zeros(batch, dtype=torch.bool, device=z.device)
    restarted[retried] = True
    # The history follows the first attempts, as long as any row ran; a sample that stopped
    # keeps its final value.
    first_iterations = iterations[:batch]
    last = int(iterations.max())
    steps_taken = torch.arange(last + 1, device=z.device)[:, None]
    final_values = trace[first_iterations, every_row]
    history = torch.where(steps_taken <= first_iterations, trace[: last + 1, :batch], final_values)
    return SolverResult(
        z=z_best,
        objective=f_best,
        iterations=total_iterations,
        converged=total_converged,
        history=list(history.clone()),
        evaluations=evaluate.count,
        rejected_steps=evaluate.non_finite,
        step_shrink=total_shrink,
        sample_evaluations=evaluate.samples,
        restarted=restarted,
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
