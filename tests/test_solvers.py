"""Tests of :mod:`deepinv_glowprior.solvers`: batched L-BFGS and Adam against closed forms, batch
independence, guarded steps around non-finite or exploding objectives, and input errors."""

from __future__ import annotations

import math

import pytest
import torch

from deepinv_glowprior.solvers import (
    SolverResult,
    _CurvatureMemory,
    _Evaluator,
    batched_adam,
    batched_lbfgs,
)

DOUBLE = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the tests share two cores with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_quadratics(
    batch: int, dim: int, seed: int = 0, max_condition: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-conditioned SPD matrices ``(B, n, n)`` (eigenvalues in [1, max_condition]) and ``b``."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(batch, dim, dim, generator=generator, dtype=DOUBLE)
    rotations, _ = torch.linalg.qr(gaussian)
    eigenvalues = 1 + (max_condition - 1) * torch.rand(
        batch, dim, generator=generator, dtype=DOUBLE
    )
    matrices = rotations @ torch.diag_embed(eigenvalues) @ rotations.transpose(1, 2)
    vectors = torch.randn(batch, dim, generator=generator, dtype=DOUBLE)
    return matrices, vectors


def quadratic(matrices: torch.Tensor, vectors: torch.Tensor):
    """Per-sample :math:`\\tfrac12 z^\\top A_i z - b_i^\\top z`, minimal at :math:`A_i^{-1}b_i`."""

    def objective(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.einsum("bi,bij,bj->b", z, matrices, z) - (vectors * z).sum(dim=1)

    return objective


def rosenbrock(z: torch.Tensor) -> torch.Tensor:
    """Chained Rosenbrock function per sample, minimised at all ones."""
    head, tail = z[:, :-1], z[:, 1:]
    return ((1 - head) ** 2 + 100 * (tail - head**2) ** 2).sum(dim=1)


def nan_outside_ball(target: torch.Tensor, value: float = math.nan):
    """``||z - target||^2`` inside the unit ball, ``value`` (NaN or inf) outside it."""

    def objective(z: torch.Tensor) -> torch.Tensor:
        inside = z.norm(dim=1) <= 1.0
        return torch.where(inside, ((z - target) ** 2).sum(dim=1), value)

    return objective


# -- L-BFGS ------------------------------------------------------------------------------------


def test_lbfgs_solves_batch_of_quadratics_to_closed_form():
    matrices, vectors = random_quadratics(6, 10, seed=1)
    expected = torch.linalg.solve(matrices, vectors)
    result = batched_lbfgs(
        quadratic(matrices, vectors),
        torch.zeros(6, 10, dtype=DOUBLE),
        max_iter=200,
        tol=1e-15,
        grad_tol=1e-11,
    )
    assert isinstance(result, SolverResult)
    assert result.z.dtype == DOUBLE
    torch.testing.assert_close(result.z, expected, atol=1e-6, rtol=0)
    assert bool(result.converged.all())
    optimum = quadratic(matrices, vectors)(expected)
    torch.testing.assert_close(result.objective, optimum, atol=1e-10, rtol=0)
    assert len(result.history) == int(result.iterations.max()) + 1
    assert result.rejected_steps == 0


def test_lbfgs_rosenbrock_float64():
    generator = torch.Generator().manual_seed(3)
    z0 = torch.cat(
        [
            torch.tensor([[-1.2, 1.0, -1.2, 1.0]], dtype=DOUBLE),
            torch.rand(3, 4, generator=generator, dtype=DOUBLE) * 2 - 1,
        ]
    )
    result = batched_lbfgs(rosenbrock, z0, max_iter=1000, tol=0.0, grad_tol=1e-12)
    torch.testing.assert_close(result.z, torch.ones_like(z0), atol=1e-5, rtol=0)
    assert bool((result.objective < 1e-10).all())
    # The objective of each sample never increases under the Armijo line search.
    history = torch.stack(result.history)
    assert bool((history[1:] <= history[:-1] + 1e-12).all())


def test_lbfgs_iteration_counts_are_per_sample():
    """An isotropic quadratic converges in a step or two; ill-conditioned ones need more."""
    dim = 12
    matrices, vectors = random_quadratics(4, dim, seed=2, max_condition=200.0)
    matrices[0] = torch.eye(dim, dtype=DOUBLE)
    result = batched_lbfgs(
        quadratic(matrices, vectors),
        torch.zeros(4, dim, dtype=DOUBLE),
        max_iter=300,
        tol=1e-15,
        grad_tol=1e-10,
    )
    iterations = result.iterations.tolist()
    assert len(set(iterations)) > 1, iterations
    assert iterations[0] < min(iterations[1:]), iterations
    torch.testing.assert_close(result.z, torch.linalg.solve(matrices, vectors), atol=1e-6, rtol=0)


@pytest.mark.parametrize("line_search", ["armijo", "guard"])
def test_lbfgs_batch_independence(line_search):
    generator = torch.Generator().manual_seed(4)
    matrices, vectors = random_quadratics(8, 6, seed=5, max_condition=50.0)
    offsets = torch.randn(8, 6, generator=generator, dtype=DOUBLE)

    def make_objective(index: slice):
        base = quadratic(matrices[index], vectors[index])
        # A non-quadratic term, so that the samples' curvature pairs genuinely differ.
        return lambda z: base(z) + 0.1 * ((z - offsets[index]) ** 4).sum(dim=1)

    z0 = 0.5 * torch.randn(8, 6, generator=generator, dtype=DOUBLE)
    options = {"max_iter": 100, "line_search": line_search, "max_step": 2.0}
    together = batched_lbfgs(make_objective(slice(None)), z0, **options)
    for i in range(8):
        alone = batched_lbfgs(make_objective(slice(i, i + 1)), z0[i : i + 1], **options)
        torch.testing.assert_close(alone.z[0], together.z[i], atol=1e-6, rtol=0)
        assert int(alone.iterations[0]) == int(together.iterations[i])


@pytest.mark.parametrize("line_search", ["armijo", "guard"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_lbfgs_rejects_non_finite_steps(line_search, value):
    """The minimiser lies where the objective is NaN/inf: iterates stay in the finite region."""
    target = torch.tensor([[3.0, 3.0], [-2.0, 4.0]], dtype=DOUBLE)
    result = batched_lbfgs(
        nan_outside_ball(target, value),
        torch.zeros(2, 2, dtype=DOUBLE),
        max_iter=50,
        lr=1.0,
        line_search=line_search,
    )
    assert bool(torch.isfinite(result.z).all())
    assert bool(torch.isfinite(result.objective).all())
    assert bool((result.z.norm(dim=1) <= 1.0 + 1e-12).all())
    assert result.rejected_steps > 0
    # It made progress towards the boundary point nearest to the target.
    start = ((target) ** 2).sum(dim=1)
    assert bool((result.objective < start - 1.0).all())
    for values in result.history:
        assert bool(torch.isfinite(values).all())


def test_lbfgs_guard_rejects_exploding_objective():
    """A finite but exploding value (1e12) beyond |z| > 1.5 is refused by the guard."""

    def objective(z: torch.Tensor) -> torch.Tensor:
        smooth = ((z - 2.0) ** 2).sum(dim=1)
        return torch.where(z.abs().amax(dim=1) > 1.5, torch.full_like(smooth, 1e12), smooth)

    z0 = torch.zeros(3, 1, dtype=DOUBLE)
    guarded = batched_lbfgs(objective, z0, max_iter=30, lr=1.0, line_search="guard")
    assert bool((guarded.objective < 1.0).all()), guarded.objective
    assert bool((guarded.z.abs() <= 1.5).all())
    for values in guarded.history:
        assert bool((values < 1e3).all())


def test_lbfgs_max_step_caps_each_step():
    target = torch.full((2, 4), 10.0, dtype=DOUBLE)
    result = batched_lbfgs(
        lambda z: ((z - target) ** 2).sum(dim=1),
        torch.zeros(2, 4, dtype=DOUBLE),
        max_iter=3,
        lr=1.0,
        max_step=0.5,
        tol=0.0,
    )
    # Three steps of at most 0.5 each.
    assert bool((result.z.norm(dim=1) <= 1.5 + 1e-9).all())
    assert bool((result.z.norm(dim=1) > 0).all())


# -- Adam -----------------------------------------------------------------------------------------


def test_adam_reaches_quadratic_minimum_and_keeps_best():
    matrices, vectors = random_quadratics(3, 5, seed=6)
    objective = quadratic(matrices, vectors)
    expected = torch.linalg.solve(matrices, vectors)
    result = batched_adam(objective, torch.zeros(3, 5, dtype=DOUBLE), max_iter=3000, lr=0.05)
    torch.testing.assert_close(result.z, expected, atol=1e-2, rtol=0)
    history = torch.stack(result.history)
    # The returned value is each sample's best over the run, and matches the returned latent.
    torch.testing.assert_close(result.objective, history.min(dim=0).values)
    torch.testing.assert_close(objective(result.z), result.objective)


def test_adam_keeps_best_iterate_when_oscillating():
    """With a large learning rate Adam oscillates; the best iterate, not the last, comes back."""
    target = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=DOUBLE)

    def objective(z):
        return ((z - target) ** 2).sum(dim=1)

    result = batched_adam(objective, torch.zeros(2, 2, dtype=DOUBLE), max_iter=60, lr=0.7)
    history = torch.stack(result.history)
    torch.testing.assert_close(result.objective, history.min(dim=0).values)
    assert bool((result.objective <= history[-1]).all())
    assert bool((history[1:] > history.min(dim=0).values).any()), "no oscillation to test"
    torch.testing.assert_close(objective(result.z), result.objective)


def test_adam_undoes_non_finite_steps():
    target = torch.tensor([[3.0, 0.0], [0.0, -3.0]], dtype=DOUBLE)
    result = batched_adam(
        nan_outside_ball(target), torch.zeros(2, 2, dtype=DOUBLE), max_iter=300, lr=0.3
    )
    assert result.rejected_steps > 0
    assert bool(torch.isfinite(result.z).all())
    assert bool(torch.isfinite(result.objective).all())
    assert bool((result.z.norm(dim=1) <= 1.0 + 1e-12).all())
    # Close to the boundary point nearest the target, (1, 0) and (0, -1): objective 4.
    torch.testing.assert_close(
        result.objective, torch.full((2,), 4.0, dtype=DOUBLE), atol=0.2, rtol=0
    )
    for values in result.history:
        assert bool(torch.isfinite(values).all())


def test_adam_batch_independence():
    matrices, vectors = random_quadratics(5, 4, seed=7)
    z0 = torch.zeros(5, 4, dtype=DOUBLE)
    together = batched_adam(quadratic(matrices, vectors), z0, max_iter=300, lr=0.05)
    for i in range(5):
        alone = batched_adam(
            quadratic(matrices[i : i + 1], vectors[i : i + 1]), z0[:1], max_iter=300, lr=0.05
        )
        torch.testing.assert_close(alone.z[0], together.z[i], atol=1e-6, rtol=0)


# -- errors ----------------------------------------------------------------------------------


def _sum_of_squares(z: torch.Tensor) -> torch.Tensor:
    return (z**2).sum(dim=1)


@pytest.mark.parametrize("solver", [batched_lbfgs, batched_adam])
@pytest.mark.parametrize("shape", [(4,), (2, 3, 4)])
def test_wrong_z0_rank(solver, shape):
    with pytest.raises(ValueError, match=r"\(B, n\)"):
        solver(_sum_of_squares, torch.zeros(shape))


@pytest.mark.parametrize("solver", [batched_lbfgs, batched_adam])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_objective_at_start(solver, value):
    def objective(z):
        return _sum_of_squares(z) + torch.tensor([0.0, value], dtype=z.dtype)

    with pytest.raises(FloatingPointError, match="starting point"):
        solver(objective, torch.zeros(2, 3))


@pytest.mark.parametrize("solver", [batched_lbfgs, batched_adam])
@pytest.mark.parametrize(
    "objective",
    [lambda z: (z**2).sum(), lambda z: z**2, lambda z: (z**2).sum(dim=1, keepdim=True)],
    ids=["scalar", "elementwise", "keepdim"],
)
def test_objective_with_wrong_shape(solver, objective):
    with pytest.raises(ValueError, match="one value per sample"):
        solver(objective, torch.ones(3, 2))


def test_unknown_line_search():
    with pytest.raises(ValueError, match="line_search"):
        batched_lbfgs(_sum_of_squares, torch.ones(2, 2), line_search="wolfe")


def rosenbrock_rows(scales: torch.Tensor):
    """Per-row Rosenbrock-like problems of different difficulty; also callable on row subsets."""

    def objective(z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        a = scales if rows is None else scales[rows]
        return ((1 - z[:, :-1]) ** 2 + a[:, None] * (z[:, 1:] - z[:, :-1] ** 2) ** 2).sum(1)

    return objective


@pytest.mark.parametrize("solver", [batched_lbfgs, batched_adam])
def test_row_subsets_give_the_same_result_for_less_work(solver):
    scales = torch.tensor([1.0, 5.0, 20.0, 100.0], dtype=torch.float64)
    objective = rosenbrock_rows(scales)
    z0 = torch.zeros(4, 6, dtype=torch.float64)
    options = {"max_iter": 300} if solver is batched_lbfgs else {"max_iter": 3000, "lr": 1e-2}
    full = solver(objective, z0, **options)
    subsets = solver(objective, z0, row_subsets=True, **options)
    torch.testing.assert_close(subsets.z, full.z, atol=1e-12, rtol=0)
    torch.testing.assert_close(subsets.iterations, full.iterations)
    assert full.sample_evaluations == 4 * full.evaluations
    assert subsets.sample_evaluations < full.sample_evaluations
    if solver is batched_lbfgs:
        assert bool(full.converged.all()), full.iterations
        torch.testing.assert_close(full.z, torch.ones_like(full.z), atol=1e-4, rtol=0)


def test_row_subsets_pass_the_rows_being_evaluated():
    seen = []

    def objective(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        seen.append(rows.tolist())
        assert z.shape == (len(rows), 2)
        return ((z - rows[:, None].to(z.dtype)) ** 2).sum(1)

    result = batched_lbfgs(objective, torch.zeros(3, 2), row_subsets=True, max_iter=50)
    torch.testing.assert_close(
        result.z, torch.tensor([[0.0, 0], [1, 1], [2, 2]]), atol=1e-4, rtol=0
    )
    assert seen[0] == [0, 1, 2]  # the start: every sample
    assert any(len(rows) < 3 for rows in seen)


def test_lbfgs_calls_carry_every_running_sample():
    """Samples run at their own pace: no call waits on another sample's line search, so the
    calls number the longest sample's own evaluations (the start included)."""
    scales = torch.tensor([1.0, 5.0, 20.0, 100.0], dtype=DOUBLE)
    objective = rosenbrock_rows(scales)
    per_sample = torch.zeros(4, dtype=torch.long)

    def counting(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        per_sample[rows] += 1
        return objective(z, rows)

    z0 = torch.zeros(4, 6, dtype=DOUBLE)
    result = batched_lbfgs(counting, z0, row_subsets=True, max_iter=300, lr=2.0)
    assert int(result.step_shrink.max()) > 0, "no line search halved a step: nothing to test"
    assert result.evaluations == int(per_sample.max())
    assert result.sample_evaluations == int(per_sample.sum())
    assert len(set(per_sample.tolist())) > 1, "every sample did the same work: nothing to test"
    torch.testing.assert_close(result.z, torch.ones_like(result.z), atol=1e-3, rtol=0)


@pytest.mark.parametrize("solver", [batched_lbfgs, batched_adam])
def test_callback_traces_the_best_iterate_and_the_work(solver):
    matrices, vectors = random_quadratics(3, 4, seed=2)
    trace = []

    def record(iteration: int, best_z: torch.Tensor, sample_evaluations: int) -> None:
        trace.append((iteration, best_z.clone(), sample_evaluations))

    options = {"max_iter": 40} if solver is batched_lbfgs else {"max_iter": 200, "lr": 0.1}
    z0 = torch.zeros(3, 4, dtype=DOUBLE)
    result = solver(quadratic(matrices, vectors), z0, callback=record, **options)
    assert [step[0] for step in trace] == list(range(1, len(trace) + 1))
    assert len(trace) == int(result.iterations.max())
    torch.testing.assert_close(trace[-1][1], result.z)
    assert trace[-1][2] == result.sample_evaluations
    work = [step[2] for step in trace]
    assert work == sorted(work) and work[0] > 3  # the start's evaluations are counted
    objective = quadratic(matrices, vectors)
    values = torch.stack([objective(step[1]) for step in trace])
    assert bool((values[1:] <= values[:-1] + 1e-12).all())  # the best iterate never gets worse


# -- damped first iterations ------------------------------------------------------------------


def test_lbfgs_damped_iterations_take_short_steps_then_converge():
    """On ||z - t||^2 the L-BFGS step from the second iteration on is exact; damped at 0.1 it
    covers a tenth of the way, and the pairs gathered meanwhile still serve the full steps."""
    target = torch.tensor([[3.0, -1.0, 2.0], [0.5, 0.5, -4.0]], dtype=DOUBLE)

    def objective(z: torch.Tensor) -> torch.Tensor:
        return ((z - target) ** 2).sum(dim=1)

    z0 = torch.zeros_like(target)
    damped = batched_lbfgs(objective, z0, max_iter=5, tol=0.0, damped_iter=5, damped_lr=0.1)
    # Four steps of a tenth of the way each, after a first one scaled down further (no
    # curvature pair yet) to at most a tenth.
    remaining = (damped.z - target).norm(dim=1) / target.norm(dim=1)
    assert bool((remaining >= 0.9**5 - 1e-9).all()), remaining
    assert bool((remaining <= 0.9**4 + 1e-9).all()), remaining
    plain = batched_lbfgs(objective, z0, max_iter=5, tol=0.0)
    assert bool(((plain.z - target).norm(dim=1) < 1e-6).all())
    finished = batched_lbfgs(objective, z0, max_iter=30, damped_iter=5, damped_lr=0.1)
    torch.testing.assert_close(finished.z, target, atol=1e-6, rtol=0)


def test_lbfgs_damped_iterations_ignore_max_step_and_armijo():
    """The damped phase is the reference protocol's fixed step: max_step does not cap it."""
    target = torch.full((1, 4), 100.0, dtype=DOUBLE)
    result = batched_lbfgs(
        lambda z: ((z - target) ** 2).sum(dim=1),
        torch.zeros(1, 4, dtype=DOUBLE),
        max_iter=3,
        max_step=0.01,
        tol=0.0,
        damped_iter=3,
        damped_lr=0.5,
    )
    assert float(result.z.norm()) > 3 * 0.01


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"damped_iter": -1}, "damped_iter"),
        ({"damped_iter": 2.0}, "damped_iter"),
        ({"damped_lr": 0.0}, "damped_lr"),
        ({"damped_lr": math.inf}, "damped_lr"),
    ],
)
def test_lbfgs_bad_damping(options, match):
    with pytest.raises(ValueError, match=match):
        batched_lbfgs(_sum_of_squares, torch.ones(1, 2), **options)


# -- second attempts for stuck samples ---------------------------------------------------------


def _always(value: bool):
    return lambda now, earlier: torch.full_like(now, value, dtype=torch.bool)


SHIFTS = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.3, -0.2, 0.1, 0.5]], dtype=DOUBLE)


def shifted_rosenbrock(z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """A different Rosenbrock problem per sample (row ``i`` shifted by ``SHIFTS[i]``)."""
    return rosenbrock(z - SHIFTS[slice(None) if rows is None else rows])


def test_lbfgs_second_attempt_is_a_fresh_damped_solve_beside_the_first():
    """A stuck sample's second attempt runs, bit for bit, the damped solve a fresh call would run
    from z0, while its first attempt goes on as if alone; the better of the two is kept."""
    z0 = torch.tensor([[-1.1, -0.6, -0.9, 0.3], [-1.3, 1.7, -1.6, 0.2]], dtype=DOUBLE)
    options = {"max_iter": 40, "tol": 0.0, "grad_tol": 0.0, "max_step": 0.5, "row_subsets": True}
    both = batched_lbfgs(
        shifted_rosenbrock,
        z0,
        stuck_iter=4,
        is_stuck=_always(True),
        restart_damped_iter=3,
        **options,
    )
    first = batched_lbfgs(shifted_rosenbrock, z0, **options)
    second = batched_lbfgs(shifted_rosenbrock, z0, damped_iter=3, **options)
    assert both.restarted.tolist() == [True, True]
    assert torch.equal(both.iterations, first.iterations + second.iterations)
    # The two attempts win one sample each here, so both halves of the choice are exercised.
    second_wins = second.objective < first.objective
    assert second_wins.tolist() == [True, False], (first.objective, second.objective)
    expected = torch.where(second_wins[:, None], second.z, first.z)
    torch.testing.assert_close(both.z, expected, atol=0, rtol=0)
    torch.testing.assert_close(
        both.objective, torch.minimum(first.objective, second.objective), atol=0, rtol=0
    )
    # The history is the first attempt's, kept at its last value while the second runs on.
    history, first_history = torch.stack(both.history), torch.stack(first.history)
    # The second attempt counts its iterations on from stuck_iter = 4.
    assert len(history) == 1 + int(torch.maximum(first.iterations, 4 + second.iterations).max())
    torch.testing.assert_close(history[: len(first_history)], first_history, atol=0, rtol=0)
    assert bool((history[len(first_history) :] == first_history[-1]).all())
    assert both.sample_evaluations == first.sample_evaluations + second.sample_evaluations - 2


def test_lbfgs_second_attempt_starts_from_its_own_sample():
    """Only the second sample is stuck: its second attempt (the batch's third row) starts from
    that sample's z0, value and gradient, and wins here."""
    z0 = torch.tensor([[1.0, 0.4, 0.1, 0.9], [-0.7, -0.2, -2.3, 0.6]], dtype=DOUBLE)
    options = {"max_iter": 40, "tol": 0.0, "grad_tol": 0.0, "max_step": 0.5, "row_subsets": True}
    first = batched_lbfgs(shifted_rosenbrock, z0, **options)
    second = batched_lbfgs(shifted_rosenbrock, z0, damped_iter=3, **options)
    both = batched_lbfgs(
        shifted_rosenbrock,
        z0,
        stuck_iter=4,
        is_stuck=lambda now, earlier: now == first.history[4][1],
        restart_damped_iter=3,
        **options,
    )
    assert both.restarted.tolist() == [False, True]
    assert float(second.objective[1]) < float(first.objective[1])
    torch.testing.assert_close(both.z[0], first.z[0], atol=0, rtol=0)
    torch.testing.assert_close(both.z[1], second.z[1], atol=0, rtol=0)


def test_lbfgs_second_attempt_only_where_is_stuck_says():
    """Only the samples ``is_stuck`` picks get a second attempt; it sees each sample's values
    after ``stuck_iter`` and ``stuck_iter // 2`` iterations, and the others run as without it."""
    z0 = torch.tensor([[-1.2, 1.0, 0.3], [0.4, -0.8, 1.5], [2.0, 2.0, -1.0]], dtype=DOUBLE)
    options = {"max_iter": 30, "tol": 0.0, "grad_tol": 0.0, "row_subsets": True}
    objective = lambda z, rows: rosenbrock(z)  # noqa: E731
    plain = batched_lbfgs(objective, z0, **options)
    history = torch.stack(plain.history)
    seen_now, seen_earlier = [], []

    def middle_is_stuck(now: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
        # Samples reach stuck_iter at their own pace: possibly in separate calls.
        seen_now.append(now.clone())
        seen_earlier.append(earlier.clone())
        return now == history[6, 1]

    result = batched_lbfgs(objective, z0, stuck_iter=6, is_stuck=middle_is_stuck, **options)
    assert result.restarted.tolist() == [False, True, False]
    keep = torch.tensor([True, False, True])
    torch.testing.assert_close(result.z[keep], plain.z[keep], atol=0, rtol=0)
    # The middle sample's second attempt (in the row after the samples') starts from its own z0.
    second = batched_lbfgs(objective, z0[1:2], damped_iter=0, **options)
    best = min(float(plain.objective[1]), float(second.objective[0]))
    assert float(result.objective[1]) == best
    assert result.iterations.tolist()[0::2] == plain.iterations.tolist()[0::2]
    assert int(result.iterations[1]) > int(plain.iterations[1])
    assert sorted(torch.cat(seen_now).tolist()) == sorted(history[6].tolist())
    assert sorted(torch.cat(seen_earlier).tolist()) == sorted(history[3].tolist())


def test_lbfgs_second_attempts_never_make_a_call_larger_than_the_batch():
    """Extra rows are evaluated in further calls, so a call holds no more memory than without
    second attempts."""
    z0 = torch.tensor([[-1.1, -0.6, -0.9, 0.3], [-1.3, 1.7, -1.6, 0.2]], dtype=DOUBLE)
    sizes = []

    def objective(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        sizes.append(len(rows))
        return shifted_rosenbrock(z, rows)

    options = {"max_iter": 20, "tol": 0.0, "grad_tol": 0.0, "row_subsets": True}
    result = batched_lbfgs(objective, z0, stuck_iter=4, is_stuck=_always(True), **options)
    assert max(sizes) == 2
    assert result.evaluations == len(sizes) > result.sample_evaluations / 2
    assert result.sample_evaluations == sum(sizes)


def test_lbfgs_calls_shrink_by_a_row_per_second_attempt():
    """Each second attempt's curvature pairs are paid for by one row less per call, so the solve
    holds no more memory than the batch alone; which rows go together changes no result."""
    shifts = torch.tensor([[0.0, 0.1], [0.3, -0.2], [-0.1, 0.4], [0.2, 0.2]], dtype=DOUBLE)
    # The last sample starts at its minimum and stops at once: four rows run after the retry.
    z0 = torch.tensor([[-1.1, -0.6], [-1.3, 1.7], [0.9, -0.8], [1.2, 1.2]], dtype=DOUBLE)
    sizes, retry_started_at = [], []

    def objective(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        sizes.append(len(rows))
        return rosenbrock(z - shifts[rows])

    def first_sample_stuck(now: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
        stuck = torch.zeros_like(now, dtype=torch.bool)
        if not retry_started_at:
            retry_started_at.append(len(sizes))
            stuck[0] = True
        return stuck

    options = {"max_iter": 30, "tol": 0.0, "grad_tol": 0.0, "row_subsets": True}
    result = batched_lbfgs(objective, z0, stuck_iter=6, is_stuck=first_sample_stuck, **options)
    before, after = sizes[: retry_started_at[0]], sizes[retry_started_at[0] :]
    assert max(before) == 4
    assert max(after) <= 3  # four rows still run, in two calls
    assert int(result.restarted.sum()) == 1
    assert int(result.iterations[3]) == 1
    # Each sample alone, without the retry's company: same bits for the samples not retried.
    for i in (1, 2, 3):
        alone = batched_lbfgs(
            lambda z, rows, i=i: rosenbrock(z - shifts[i : i + 1]), z0[i : i + 1], **options
        )
        torch.testing.assert_close(result.z[i], alone.z[0], atol=0, rtol=0)


@pytest.mark.parametrize(("rows", "expected"), [(5, [3, 2]), (4, [4]), (9, [3, 3, 3])])
def test_evaluator_splits_rows_into_equal_calls(rows, expected):
    """More rows than max_rows go as the fewest calls of equal size (37 rows of a 32-sample
    batch as 19 and 18, not 32 and 5: a smaller graph at a time)."""
    sizes = []

    def objective(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        sizes.append(len(rows))
        return (z**2).sum(dim=1) + rows

    evaluate = _Evaluator(objective, row_subsets=True, max_rows=4)
    z = torch.arange(rows * 2, dtype=DOUBLE).reshape(rows, 2)
    values, grad = evaluate(z, torch.arange(rows), z)
    assert sizes == expected
    torch.testing.assert_close(values, (z**2).sum(dim=1) + torch.arange(rows))
    torch.testing.assert_close(grad, 2 * z)
    assert (evaluate.count, evaluate.samples) == (len(expected), rows)


def test_lbfgs_second_attempts_reach_the_callback():
    """The callback's latents are the better attempt's, and its iterations count on."""
    z0 = torch.tensor([[-1.2, 1.0, -0.5, 0.3], [0.4, -0.8, 1.5, 0.0]], dtype=DOUBLE)
    trace = []
    result = batched_lbfgs(
        shifted_rosenbrock,
        z0,
        max_iter=20,
        tol=0.0,
        grad_tol=0.0,
        row_subsets=True,
        stuck_iter=4,
        is_stuck=_always(True),
        callback=lambda it, z, work: trace.append((it, z.clone(), work)),
    )
    assert [step[0] for step in trace] == list(range(1, len(trace) + 1))
    assert len(trace) > 20
    torch.testing.assert_close(trace[-1][1], result.z, atol=0, rtol=0)
    assert trace[-1][2] == result.sample_evaluations


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"stuck_iter": -1}, ValueError, "stuck_iter"),
        ({"restart_damped_iter": 1.5}, ValueError, "restart_damped_iter"),
        ({"stuck_iter": 5, "is_stuck": "yes"}, TypeError, "is_stuck"),
        ({"stuck_iter": 1, "is_stuck": _always(True)}, ValueError, "stuck_iter >= 2"),
        (
            {"stuck_iter": 2, "is_stuck": _always(True), "row_subsets": False},
            ValueError,
            "row_subsets=True",
        ),
        (
            {"stuck_iter": 2, "is_stuck": lambda now, earlier: torch.ones(3, dtype=torch.bool)},
            ValueError,
            "one boolean per sample",
        ),
    ],
)
def test_lbfgs_bad_second_attempt_options(options, error, match):
    options = {"row_subsets": True, **options}
    with pytest.raises(error, match=match):
        batched_lbfgs(
            lambda z, rows=None: rosenbrock(z), torch.zeros(2, 3), max_iter=5, tol=0.0, **options
        )


def textbook_direction(pairs: list[tuple[torch.Tensor, torch.Tensor]], grad: torch.Tensor):
    """Nocedal and Wright's two-loop recursion on one sample's pairs, oldest first."""
    q, alphas = grad.clone(), []
    for step, change in reversed(pairs):
        alphas.append((step @ q) / (step @ change))
        q -= alphas[-1] * change
    if pairs:
        step, change = pairs[-1]
        q *= (step @ change) / (change @ change)
    for (step, change), alpha in zip(pairs, reversed(alphas), strict=True):
        q += step * (alpha - (change @ q) / (step @ change))
    return -q


def test_curvature_memory_direction_is_the_textbook_two_loop_for_each_row():
    generator = torch.Generator().manual_seed(0)
    batch, dim, size = 5, 6, 4
    memory = _CurvatureMemory(size, torch.zeros(batch, dim, dtype=DOUBLE))
    kept: list[list] = [[] for _ in range(batch)]
    # Rows write at their own pace, past the ring's end, and some pairs are skipped.
    for iteration in range(11):
        rows = torch.tensor([row for row in range(batch) if (iteration + row) % 3 != 0])
        step = torch.randn(len(rows), dim, generator=generator, dtype=DOUBLE)
        change = step + 0.3 * torch.randn(len(rows), dim, generator=generator, dtype=DOUBLE)
        change[rows == 2] = -step[rows == 2]  # negative curvature: not kept
        memory.write(rows, step, change, torch.ones(len(rows), dtype=torch.bool))
        for index, row in enumerate(rows.tolist()):
            kept[row].append((step[index], change[index]) if row != 2 else None)
    rows = torch.tensor([3, 0, 4, 2])  # any order, any subset
    grad = torch.randn(len(rows), dim, generator=generator, dtype=DOUBLE)
    direction = memory.direction(grad, rows)
    for index, row in enumerate(rows.tolist()):
        pairs = [pair for pair in kept[row][-size:] if pair is not None]
        expected = textbook_direction(pairs, grad[index])
        torch.testing.assert_close(direction[index], expected)
