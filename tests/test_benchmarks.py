"""Tests of the figures the benchmark scripts compute (``benchmarks/`` is not a package)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import posterior as posterior_benchmark  # noqa: E402
import profile_decode  # noqa: E402
import solver_curves  # noqa: E402
import solver_speed  # noqa: E402
import warm_start_ood  # noqa: E402


def test_equal_quality_ratio_takes_the_first_point_within_the_slack():
    # (iteration, passes per image, PSNR)
    reference = [(100, 200.0, 20.0), (300, 600.0, 30.0)]
    ours = [(5, 10.0, 25.0), (10, 20.0, 29.95), (15, 30.0, 31.0), (300, 310.0, 33.0)]
    summary = solver_curves.summarise("cs0.1", reference, ours)
    assert summary["reference_psnr"] == 30.0 and summary["reference_passes"] == 600.0
    assert summary["ours_iterations_to_reference"] == 10  # 29.95 is within 0.1 dB
    assert summary["work_ratio_at_equal_psnr"] == pytest.approx(20.0 / 600.0)
    assert summary["ours_final_psnr"] == 33.0 and summary["ours_best_psnr"] == 33.0
    assert summary["ours_final_passes"] == 310.0
    assert summary["reference_ratio_at_own_psnr"] == 1.0  # only its last point is within 0.1 dB


def test_reference_ratio_at_own_psnr_finds_where_the_reference_stopped_gaining():
    reference = [(100, 150.0, 25.0), (200, 300.0, 29.92), (300, 600.0, 30.0)]
    ours = [(5, 100.0, 29.0), (10, 280.0, 30.0)]
    summary = solver_curves.summarise("denoise0.1", reference, ours)
    assert summary["reference_ratio_at_own_psnr"] == pytest.approx(0.5)
    assert summary["work_ratio_at_equal_psnr"] == pytest.approx(280.0 / 600.0)


def test_time_ratio_at_equal_quality_uses_the_seconds_of_the_same_point():
    # (iteration, passes per image, PSNR, per-digit PSNRs, seconds of solving so far)
    reference = [(100, 200.0, 20.0, [20.0], 40.0), (300, 600.0, 30.0, [30.0], 100.0)]
    ours = [(5, 10.0, 25.0, [25.0], 3.0), (10, 20.0, 29.95, [29.95], 8.0), (300, 310, 33, [33], 90)]
    summary = solver_curves.summarise("cs0.1", reference, ours)
    assert summary["reference_seconds"] == 100.0 and summary["ours_seconds_to_reference"] == 8.0
    assert summary["time_ratio_at_equal_psnr"] == pytest.approx(0.08)
    assert summary["work_ratio_at_equal_psnr"] == pytest.approx(20.0 / 600.0)


def test_timed_traces_survive_a_write_and_read(tmp_path):
    traces = {
        "hole": {
            "paper-guarded": [(600, 600.0, 20.0, [20.0, 20.0], 50.0)],
            "ours": [(5, 60.0, 20.0, [20.0, 20.0], 4.5), (10, 120.0, 21.0, [21.0, 21.0], 9.0)],
        }
    }
    solver_curves.write_outputs(traces, tmp_path / "t", 0)
    assert solver_curves.read_traces(tmp_path / "t.csv") == traces
    summary = (tmp_path / "t_summary.csv").read_text().splitlines()[1]
    assert summary.endswith(",50,4.5,0.09")


def test_equal_quality_ratio_is_empty_when_never_reached():
    summary = solver_curves.summarise(
        "hole", [(400, 400.0, 30.0)], [(5, 10.0, 20.0), (300, 320.0, 29.8), (310, 330.0, 25.0)]
    )
    assert summary["ours_passes_to_reference"] is None
    assert summary["work_ratio_at_equal_psnr"] is None
    # Where the solver stopped (the retry's dip included), and the best point on the way.
    assert (summary["ours_final_psnr"], summary["ours_final_passes"]) == (25.0, 330.0)
    assert summary["ours_best_psnr"] == 29.8


def test_bootstrap_interval_collapses_for_identical_digits_and_spans_different_ones():
    # (iteration, passes per image, mean PSNR, per-digit PSNRs)
    reference = [(600, 600.0, 30.0, [30.0, 30.0])]
    same = [(5, 60.0, 25.0, [25.0, 25.0]), (10, 120.0, 30.0, [30.0, 30.0])]
    assert solver_curves.bootstrap_ratio(reference, same, 200) == (0.2, 0.2)
    # Digit 1 lags: a draw of digit 0 twice reaches at 60 passes, of digit 1 twice at 180.
    reference = [(600, 600.0, 30.0, [30.0, 30.0])]
    apart = [
        (5, 60.0, 26.0, [30.0, 22.0]),
        (10, 120.0, 28.0, [30.0, 26.0]),
        (15, 180.0, 30.0, [30.0, 30.0]),
    ]
    low, high = solver_curves.bootstrap_ratio(reference, apart, 400)
    assert (low, high) == (0.1, 0.3)
    never = [(5, 60.0, 25.0, [25.0, 25.0])]
    assert solver_curves.bootstrap_ratio(reference, never, 50) == (float("inf"), float("inf"))


def test_slowest_digits_bound_counts_the_furthest_behind_as_done():
    # Ten digits: one lags far behind until the end, the others reach the bar at 120 passes.
    reference = [(600, 600.0, 30.0, [30.0] * 10)]
    ours = [
        (5, 60.0, 26.0, [28.0] * 9 + [8.0]),
        (10, 120.0, 28.0, [30.0] * 9 + [10.0]),
        (15, 180.0, 30.0, [30.0] * 10),
    ]
    assert solver_curves.summarise("cs0.1", reference, ours)["work_ratio_at_equal_psnr"] == 0.3
    # With the laggard (10% of the digits) at its final 30 dB the mean is 30 at 120 passes.
    assert solver_curves.ratio_if_slowest_done(reference, ours, 0.1) == pytest.approx(0.2)
    # With 20% done, one more digit at 28 of its final 30 dB: the mean is 28.4 at 60 passes.
    assert solver_curves.ratio_if_slowest_done(reference, ours, 0.2) == pytest.approx(0.2)
    assert solver_curves.ratio_if_slowest_done(reference, ours, 1.0) == pytest.approx(0.1)
    # A digit above its own final PSNR is not lowered, and an unreachable bar gives None.
    peaked = [(5, 60.0, 29.0, [31.0] + [27.0] * 9), (10, 120.0, 29.0, [29.0] * 10)]
    assert solver_curves.ratio_if_slowest_done(reference, peaked, 1.0) is None
    assert solver_curves.ratio_if_slowest_done(reference, [(5, 60.0, 25.0)], 0.1) is None


def _traces(reference_final: float, ours_psnr: list[float]) -> dict:
    return {
        "paper-guarded": [(600, 600.0, reference_final, [reference_final] * 2)],
        "ours": [(5 * (i + 1), 60.0 * (i + 1), p, [p, p]) for i, p in enumerate(ours_psnr)],
    }


def test_merge_combines_runs_and_matches_their_summaries(tmp_path, capsys):
    solver_curves.write_outputs({"cs0.1": _traces(30.0, [25.0, 30.0])}, tmp_path / "a", 50)
    solver_curves.write_outputs({"hole": _traces(20.0, [20.0, 21.0])}, tmp_path / "b", 50)
    merge = f"{tmp_path / 'b.csv'},{tmp_path / 'a.csv'}"  # tasks come out in TASKS' order
    assert (
        solver_curves.main(["--merge", merge, "--resamples", "50", "--out", str(tmp_path / "m")])
        == 0
    )
    assert "cs0.1: reference 30.00 dB" in capsys.readouterr().out
    merged = solver_curves.read_traces(tmp_path / "m.csv")
    assert list(merged) == ["cs0.1", "hole"] and merged["hole"]["ours"][0] == (
        5,
        60.0,
        20.0,
        [20.0, 20.0],
    )
    summary = (tmp_path / "m_summary.csv").read_text().splitlines()
    # ratio, its bootstrap interval, the slow-digit bounds; untimed: no seconds
    assert summary[1] == "cs0.1,30,600,120,10,0.2,1,0.2,0.2,0.2,0.2,30,120,30,,,"
    assert summary[2].startswith("hole,20,600,60,5,0.1,1,0.1,0.1,")
    assert (tmp_path / "m.png").stat().st_size > 0


def test_merge_refuses_a_task_in_two_files(tmp_path, capsys):
    solver_curves.write_outputs({"hole": _traces(20.0, [20.0])}, tmp_path / "a", 0)
    with pytest.raises(SystemExit):
        solver_curves.main(["--merge", f"{tmp_path / 'a.csv'},{tmp_path / 'a.csv'}"])
    assert "task hole appears in more than one file" in capsys.readouterr().err


@pytest.mark.parametrize("threshold", ["0", "-4096"])
def test_solver_speed_refuses_a_non_positive_mmap_threshold(threshold, capsys):
    with pytest.raises(SystemExit):
        solver_speed.main(["--malloc-mmap-threshold", threshold, "--tasks", "hole"])
    assert "positive number of bytes" in capsys.readouterr().err


def test_mean_spearman_skips_constant_maps_and_respects_the_mask():
    error = torch.arange(8.0).view(2, 1, 2, 2)
    std = torch.stack([error[0], torch.ones(1, 2, 2)])  # image 1: constant std, skipped
    assert posterior_benchmark._mean_spearman(std, error) == pytest.approx(1.0)
    reversed_std = torch.stack([error[0].flip(-1).flip(-2), error[1]])
    mask = torch.tensor([[[True, True], [False, False]]]).expand(2, 1, 2, 2)
    value = posterior_benchmark._mean_spearman(reversed_std, error, mask)
    assert value == pytest.approx(0.0)  # image 0 on its mask: -1, image 1: +1
    constant = torch.ones(2, 1, 2, 2)
    assert torch.isnan(torch.tensor(posterior_benchmark._mean_spearman(constant, error)))


def test_trace_ends_with_what_the_solve_returns():
    """After a retry of misfit samples the solve may keep latents the callback did not see last;
    the end takes the place of the callback's last iteration."""
    from types import SimpleNamespace

    class Model:
        glow = SimpleNamespace(decode=lambda z: time.sleep(0.3) or z.view(-1, 1, 2, 2))
        callback = None

        def solve(self, y, physics):
            self.callback(5, torch.zeros(2, 4), 16)  # a retry's latents, not the ones kept
            return SimpleNamespace(
                x=torch.full((2, 1, 2, 2), 0.5),
                # Both attempts of a sample retried early count: more than the callback saw.
                iterations=torch.tensor([9, 3]),
                sample_evaluations=20,
            )

    truth = torch.full((2, 1, 2, 2), 0.6)
    trace = solver_curves.trace_solver(Model(), None, None, truth, every=5)
    assert len(trace) == 1
    iteration, passes, mean_psnr, _, seconds = trace[0]
    assert (iteration, passes) == (5, 10.0)
    assert mean_psnr == pytest.approx(20.0, abs=1e-4)  # of x = 0.5, not of G(0) = 0
    assert 0.0 <= seconds < 0.25  # the trace's decode (0.3 s asleep) is not the solve's time


def test_profile_shares_sum_to_one_and_times_are_positive():
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    z = torch.randn(3, 8, requires_grad=True)
    shares, profiled, unprofiled = profile_decode._profile(
        lambda latents: conv(latents.reshape(-1, 2, 2, 2)), z, repeats=3
    )
    assert set(shares) == {*profile_decode.GROUPS, "other"}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["convolutions"] > 0
    assert profiled > 0 and unprofiled > 0


def test_cache_ratio_times_blocks_that_compute_the_inverses_once(decoding_weights_built):
    from deepinv_glowprior.glow import Glow

    glow = Glow(img_size=(1, 8, 8), levels=2, steps=2, hidden_channels=8)
    glow.initialize(torch.rand(4, 1, 8, 8)).requires_grad_(False)
    z = torch.randn(2, glow.latent_dim, requires_grad=True)
    ratio = profile_decode._cache_ratio(lambda latents: glow.decode(latents), glow, z, 4, block=2)
    assert 0 < ratio < float("inf")
    convolutions = sum(type(m).__name__ == "Invertible1x1Conv" for m in glow.modules())
    # Two cached blocks of three passes: the inverses computed once per block.
    assert len(decoding_weights_built) == 2 * convolutions


def test_compile_ratio_times_the_compiled_decode_against_the_eager_one():
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    z = torch.randn(3, 8, requires_grad=True)
    ratio, compile_seconds, difference = profile_decode._compile_ratio(
        lambda latents: conv(latents.reshape(-1, 2, 2, 2)), z, repeats=4, block=2, backend="eager"
    )
    assert 0 < ratio < float("inf")
    assert compile_seconds > 0
    assert difference == 0.0  # the eager backend runs the same kernels


def test_digits_can_start_past_the_first_ones_for_held_out_runs():
    from deepinv_glowprior.data import mnist

    _, digits = solver_speed.load_glow_and_digits(2, first_image=32)
    test = mnist("test")
    assert torch.equal(digits, torch.stack([test[32], test[33]]))
    with pytest.raises(ValueError, match="not all in the"):
        solver_speed.load_glow_and_digits(2, first_image=len(test) - 1)
    with pytest.raises(ValueError, match="first_image >= 0"):
        solver_speed.load_glow_and_digits(1, first_image=-1)


def test_warm_start_lambda_is_the_best_typical_one_on_validation_digits(capsys):
    import deepinv as dinv

    from deepinv_glowprior import GlowReconstructor
    from deepinv_glowprior.baselines import LAMBDA_GRID, total_variation
    from deepinv_glowprior.data import mnist
    from deepinv_glowprior.tasks import make_physics

    glow, _ = solver_speed.load_glow_and_digits(1)
    physics = make_physics("cs", glow.img_size, seed=0, ratio=0.5)
    timed = solver_curves.tuned_total_variation("cs0.5", physics, glow, num_images=2)
    chosen = timed.inner
    assert chosen.lam in LAMBDA_GRID
    assert f"lambda {chosen.lam:g}" in capsys.readouterr().out
    images = mnist("val")
    images = torch.stack([images[0], images[1]])
    torch.manual_seed(0)
    y = physics(images)
    assert timed.seconds == 0
    assert torch.equal(timed(y, physics), chosen(y, physics)) and timed.seconds > 0

    def warm(lam: float) -> int:
        model = GlowReconstructor(glow, init=total_variation(lam))
        return int(model._initial_latent(y, physics, 0).any(dim=1).sum())

    def score(lam: float) -> float:
        return float(dinv.metric.PSNR()(total_variation(lam)(y, physics), images).mean())

    # No lambda of the grid that starts as many digits warm does better, measured the same way.
    typical = [lam for lam in LAMBDA_GRID if warm(lam) >= 1]
    assert chosen.lam in typical or not typical
    assert all(score(chosen.lam) >= score(lam) for lam in typical)


@pytest.mark.parametrize(
    "name",
    [
        "solver_curves",
        "solver_curves_heldout",
        "solver_curves_warm_tv",
        "solver_curves_warm_tv_heldout",
    ],
)
def test_committed_curve_summaries_are_what_their_committed_traces_give(name, tmp_path):
    """The docs' equal-quality ratios come from the committed traces, not from an older run."""
    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    traces = solver_curves.read_traces(results / f"{name}.csv")
    summaries = [
        solver_curves.summarise(task, *solver_curves._pair(methods), resamples=2000)
        for task, methods in traces.items()
    ]
    solver_curves._write_table(tmp_path / "summary.csv", summaries)
    assert (tmp_path / "summary.csv").read_text() == (results / f"{name}_summary.csv").read_text()


@pytest.mark.slow  # tunes TV over the grid and solves twice: about half a minute
def test_warm_start_table_compares_both_starts_on_the_same_measurements():
    from deepinv_glowprior import Glow
    from deepinv_glowprior.baselines import LAMBDA_GRID

    torch.manual_seed(0)
    glow = Glow(img_size=(1, 32, 32), levels=2, steps=1, hidden_channels=4)
    glow = glow.initialize(torch.rand(8, 1, 32, 32)).eval()
    row = warm_start_ood.measure(glow, "mnist", 0.5, num_images=2, seed=0)
    assert row["tv_lambda"] in LAMBDA_GRID and row["tv_lambda_psnr_best"] in LAMBDA_GRID
    assert 0 <= row["warm_images"] <= 2 and 0 <= row["validation_warm"] <= 2
    assert row["zero_passes_per_image"] > 0 and row["warm_passes_per_image"] > 0
    assert row["tv_residual_over_noise_median"] >= 0
    if row["warm_images"] == 0:  # every sample fell back to z = 0: the same solve
        assert row["warm_psnr"] == row["zero_psnr"]
