"""PSNR against work: how soon each solver reaches the reference protocol's quality.

For each task of ``solver_speed.py``, the guarded reference protocol
(:meth:`GlowReconstructor.from_preset` ``"paper"``) and our solver (:class:`GlowReconstructor`
defaults; ``--ours-iter`` sets its ``max_iter``, 300 by default as in the class) solve the same
MNIST test digits. A callback decodes the best latents every ``--every`` iterations and records
the mean PSNR against the Glow passes (forward and backward of one image) spent so far. A
sample retried early (``retry_misfit``: found stuck, retried beside its first attempt) shows the
better of its two attempts; during the retry at the end, the retried samples show the retry's
latents, so the curve can dip before the better solution is kept. The decodes of the trace are
not counted as work.

For each task it prints and writes (``{out}_summary.csv``):

- the reference's final PSNR and its passes per image;
- the passes per image our solver needs to come within 0.1 dB of that PSNR (first traced point
  at or above it; empty when it never does), and their ratio to the reference's passes;
- the same in wall time (``time_ratio_at_equal_psnr``): the solve's seconds up to that traced
  point over the reference's whole solve, the trace's decodes excluded. Passes do not depend on
  the machine's load; seconds also count what a pass costs at the batch sizes each solver runs;
- where our solver stops: its PSNR and passes (at the defaults, what a user gets);
- the same ratio for the reference's own trace (``reference_ratio_at_own_psnr``): the share of
  its passes after which it is itself within the slack of its final PSNR. Where it is low the
  reference spends its last passes without gain; where ours is close to it, ours converges no
  faster than the reference, and only stopping sooner separates them;
- how much the ratio depends on which digits were drawn: its 5th and 95th percentiles over
  ``--resamples`` bootstrap draws of the digits (with replacement; the traces keep each digit's
  PSNR). A draw takes the batch's passes per image, since the solvers report work per batch;
- how much the slowest digits hold the ratio back (``ratio_slowest_10pct_done``, ``..._20pct``):
  the ratio if at every traced point the 10% (20%) of digits furthest below their own final PSNR
  were already at it, the passes unchanged. Rescuing slow digits sooner cannot do better.

The traces (with each digit's PSNR) go to ``{out}.csv`` and the plot to ``{out}.png``. Usage::

    OMP_NUM_THREADS=1 python benchmarks/solver_curves.py --num-images 8 \\
        --out docs/results/solver_curves

``--warm-start`` starts ours from total variation's reconstruction
(:class:`GlowReconstructor` with ``init`` a reconstructor), its lambda tuned per task on 32
validation digits.

``--merge`` solves nothing: it reads the traces of earlier runs (for instance two runs with
disjoint ``--tasks``, side by side on two cores) and writes their summary and plot together,
tasks in the benchmark's order::

    python benchmarks/solver_curves.py --merge a.csv,b.csv --out docs/results/solver_curves
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from solver_speed import GAMMA, PAPER_TASK, TASKS, load_glow_and_digits, measure  # noqa: E402

QUALITY_SLACK = 0.1  # dB below the reference's final PSNR that counts as reaching it
SLOWEST_FRACTIONS = (0.1, 0.2)  # shares of the digits counted as done in the slow-digit bound


def trace_solver(model, y, physics, x, every: int) -> list[tuple]:
    """``(iteration, passes per image, mean PSNR, per-digit PSNRs, seconds)`` every ``every``
    iterations and at the end; ``seconds`` is the solve's wall time so far without the trace's
    own decodes."""
    import time

    import deepinv as dinv
    import torch

    psnr = dinv.metric.PSNR()
    trace = []
    tracing_seconds = 0.0
    last = 0

    def record(iteration: int, best_z: torch.Tensor, sample_evaluations: int) -> None:
        nonlocal tracing_seconds, last
        last = iteration
        if iteration % every == 0:
            entered = time.perf_counter()
            solving = entered - start - tracing_seconds
            with torch.no_grad():
                x_hat = model.glow.decode(best_z).nan_to_num(0.0).clamp(0, 1)
            values = psnr(x_hat, x)
            passes = sample_evaluations / len(x)
            trace.append((iteration, passes, float(values.mean()), values.tolist(), solving))
            tracing_seconds += time.perf_counter() - entered

    model.callback = record
    start = time.perf_counter()
    solution = model.solve(y, physics)
    solving = time.perf_counter() - start - tracing_seconds
    # The end is what the solve returns, which after a retry of misfit samples need not be the
    # latents the callback saw last.
    if trace and trace[-1][0] == last:
        trace.pop()
    values = psnr(solution.x.nan_to_num(0.0).clamp(0, 1), x)
    passes = solution.sample_evaluations / len(x)
    trace.append((last, passes, float(values.mean()), values.tolist(), solving))
    return trace


def bootstrap_ratio(
    reference: list, ours: list, resamples: int, seed: int = 0
) -> tuple[float, float]:
    """5th and 95th percentiles of the equal-quality work ratio when the digits are redrawn.

    ``reference`` and ``ours`` are traces whose fourth entries are per-digit PSNRs. Each draw
    picks as many digits as there are, with replacement, and finds where our mean PSNR over them
    first comes within the slack of the reference's final mean over them; a draw that never gets
    there counts as an infinite ratio.
    """
    import numpy as np

    reference_final = np.asarray(reference[-1][3])
    ours_psnr = np.asarray([point[3] for point in ours])  # (points, digits)
    ours_passes = np.asarray([point[1] for point in ours])
    draws = np.random.default_rng(seed).integers(
        0, len(reference_final), (resamples, len(reference_final))
    )
    target = reference_final[draws].mean(axis=1) - QUALITY_SLACK  # (resamples,)
    reached = ours_psnr[:, draws].mean(axis=2) >= target  # (points, resamples)
    first = reached.argmax(axis=0)
    ratios = np.where(reached.any(axis=0), ours_passes[first] / reference[-1][1], np.inf)
    low = np.percentile(ratios, 5, method="lower")
    high = np.percentile(ratios, 95, method="higher")
    return float(low), float(high)


def ratio_if_slowest_done(reference: list, ours: list, fraction: float) -> float | None:
    """The equal-quality work ratio if, at every traced point of ``ours``, the ``fraction`` of
    digits furthest below their own final PSNR had already reached it (at least one digit; a
    digit above its final PSNR keeps its value). ``None`` if even then the mean never comes
    within the slack of the reference's final PSNR, or the traces have no per-digit PSNRs."""
    import numpy as np

    if any(len(point) < 4 for point in ours):
        return None
    per_digit = np.asarray([point[3] for point in ours])  # (points, digits)
    count = max(1, round(fraction * per_digit.shape[1]))
    shortfall = np.clip(per_digit[-1] - per_digit, 0.0, None)
    largest = -np.sort(-shortfall, axis=1)[:, :count]
    bound = per_digit.mean(axis=1) + largest.sum(axis=1) / per_digit.shape[1]
    reached = np.flatnonzero(bound >= reference[-1][2] - QUALITY_SLACK)
    return float(ours[reached[0]][1] / reference[-1][1]) if reached.size else None


def summarise(task: str, reference: list, ours: list, resamples: int = 0) -> dict:
    final_psnr, reference_work = reference[-1][2], reference[-1][1]
    bar = final_psnr - QUALITY_SLACK
    reached = [point for point in ours if point[2] >= bar]
    work = reached[0][1] if reached else None
    own_work = next(point[1] for point in reference if point[2] >= bar)  # its last point will do
    timed = all(len(point) > 4 for point in reference + ours)
    reference_seconds = reference[-1][4] if timed else None
    seconds = reached[0][4] if timed and reached else None
    low = high = None
    if resamples:
        low, high = bootstrap_ratio(reference, ours, resamples)
    return {
        "task": task,
        "reference_psnr": final_psnr,
        "reference_passes": reference_work,
        "ours_passes_to_reference": work,
        "ours_iterations_to_reference": reached[0][0] if reached else None,
        "work_ratio_at_equal_psnr": None if work is None else work / reference_work,
        "reference_ratio_at_own_psnr": own_work / reference_work,
        "ratio_p05": low,
        "ratio_p95": high,
        **{
            f"ratio_slowest_{round(100 * fraction)}pct_done": ratio_if_slowest_done(
                reference, ours, fraction
            )
            for fraction in SLOWEST_FRACTIONS
        },
        "ours_final_psnr": ours[-1][2],
        "ours_final_passes": ours[-1][1],
        "ours_best_psnr": max(point[2] for point in ours),
        "reference_seconds": reference_seconds,
        "ours_seconds_to_reference": seconds,
        "time_ratio_at_equal_psnr": None if seconds is None else seconds / reference_seconds,
    }


def plot(traces: dict, summaries: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    from deepinv_glowprior.experiments import save_figure

    tasks = list(traces)
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 3.2), squeeze=False)
    for axis, task, summary in zip(axes[0], tasks, summaries, strict=True):
        for method, style in (("paper-guarded", "C0-"), ("ours", "C3-")):
            points = traces[task][method]
            axis.plot([p[1] for p in points], [p[2] for p in points], style, label=method)
        axis.axhline(summary["reference_psnr"], color="gray", ls=":", lw=1)
        axis.axvline(summary["ours_final_passes"], color="C3", ls="--", lw=0.8)
        if summary["ours_passes_to_reference"] is not None:
            axis.plot(summary["ours_passes_to_reference"], summary["reference_psnr"], "ko", ms=4)
        interval = ""
        if summary["ratio_p05"] is not None:
            interval = f" [{_fmt(summary['ratio_p05'])}, {_fmt(summary['ratio_p95'])}]"
        axis.set_title(f"{task}: ratio {_fmt(summary['work_ratio_at_equal_psnr'])}{interval}")
        axis.set_xlabel("Glow passes per image")
        low = min(p[2] for m in traces[task].values() for p in m[len(m) // 10 :])
        axis.set_ylim(max(low - 1, summary["reference_psnr"] - 10), None)
    axes[0][0].set_ylabel("mean PSNR (dB)")
    axes[0][0].legend(fontsize=8)
    save_figure(figure, path)


def read_traces(path: Path) -> dict:
    """The traces a run wrote to ``{out}.csv``: ``{task: {method: [(iteration, passes, mean PSNR,
    per-digit PSNRs)]}}``, in the file's order."""
    traces: dict = {}
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            digits = [float(v) for k, v in row.items() if k.startswith("psnr_digit_")]
            point = (int(row["iteration"]), float(row["passes"]), float(row["psnr"]), digits)
            if row.get("seconds"):
                point += (float(row["seconds"]),)
            traces.setdefault(row["task"], {}).setdefault(row["method"], []).append(point)
    for task, methods in traces.items():
        if sorted(methods) != ["ours", "paper-guarded"]:
            raise ValueError(f"{path}: task {task} needs traces of ours and paper-guarded.")
    return traces


def _cell(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def _fmt(value) -> str:
    return "never" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument(
        "--first-image", type=int, default=0, help="index of the first test digit (held-out runs)"
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"subset of {list(TASKS)}")
    parser.add_argument("--ours-iter", type=int, default=300, help="our max_iter")
    parser.add_argument(
        "--warm-start",
        action="store_true",
        help="ours starts from total variation's reconstruction (its lambda tuned per task on "
        "validation digits)",
    )
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap draws (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/solver_curves")
    parser.add_argument("--merge", help="comma-separated trace CSVs of earlier runs to combine")
    args = parser.parse_args(argv)
    if args.merge:
        traces = {}
        for path in args.merge.split(","):
            if not Path(path).is_file():
                parser.error(f"--merge: no file {path}")
            for task, methods in read_traces(Path(path)).items():
                if task in traces:
                    parser.error(f"--merge: task {task} appears in more than one file")
                traces[task] = methods
        # The tasks in the benchmark's order, whichever file held them.
        order = list(TASKS) + sorted(set(traces) - set(TASKS))
        traces = {task: traces[task] for task in order if task in traces}
        return write_outputs(traces, Path(args.out), args.resamples, announce=True)
    tasks = args.tasks.split(",")
    if unknown := sorted(set(tasks) - set(TASKS)):
        parser.error(f"unknown tasks {unknown}; choose from {list(TASKS)}")

    import torch

    from deepinv_glowprior import GlowReconstructor

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    glow, x = load_glow_and_digits(args.num_images, args.first_image)
    traces = {}
    for task in tasks:
        kind, physics, y = measure(task, glow, x)
        gamma = GAMMA[kind]
        init = tuned_total_variation(task, physics, glow) if args.warm_start else "zero"
        models = {
            "paper-guarded": GlowReconstructor.from_preset(
                glow, "paper", task=PAPER_TASK[kind], gamma=gamma
            ),
            "ours": GlowReconstructor(glow, gamma=gamma, max_iter=args.ours_iter, init=init),
        }
        traces[task] = {
            name: trace_solver(model, y, physics, x, args.every) for name, model in models.items()
        }
        if args.warm_start:
            warm = int(models["ours"].last_solution.start.any(dim=1).sum())
            print(
                f"{task:>10}: {warm} of {len(y)} digits start from total variation's latent "
                f"(the start took {init.seconds:.1f} s, within our seconds)"
            )
        print_summary(summarise(task, *_pair(traces[task]), args.resamples))
    return write_outputs(traces, Path(args.out), args.resamples)


def tuned_total_variation(task: str, physics, glow, num_images: int = 32):
    """:func:`total_variation` with the lambda of :func:`warm_start_lambda` on the first
    ``num_images`` MNIST validation digits (never the test digits), printing its table. Timed
    (:func:`_timed`)."""
    import torch

    from deepinv_glowprior.baselines import total_variation
    from deepinv_glowprior.data import mnist

    validation = mnist("val")
    images = torch.stack([validation[i] for i in range(num_images)]).to(glow.dtype)
    lam, table = warm_start_lambda(physics, glow, images)
    scores = ", ".join(f"{value:g}: {score:.2f} ({warm} warm)" for value, score, warm in table)
    print(
        f"{task:>10}: warm start from total variation, lambda {lam:g} "
        f"(validation PSNR and digits starting warm, of {num_images}: {scores})"
    )
    return _timed(total_variation(lam))


def warm_start_lambda(physics, glow, images, seed: int = 0) -> tuple[float, list]:
    """The lambda of :data:`LAMBDA_GRID` for a warm start from TV, chosen on validation
    ``images``: the best mean PSNR among the lambdas whose TV images start at least half of them
    warm (a typical latent, see ``GlowReconstructor``'s ``init``), or the best mean PSNR if none
    does. Converged TV at its PSNR-best lambda leaves faint texture in the black background of a
    digit that the Glow finds atypical, so such a start would fall back to z = 0 almost
    everywhere. Returns the lambda and ``(lambda, PSNR, images starting warm)`` per lambda."""
    import torch

    from deepinv_glowprior import GlowReconstructor
    from deepinv_glowprior.baselines import total_variation, tune_lambda

    _, table = tune_lambda(total_variation, physics, images, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # tune_lambda's y: the warm starts are counted on it
        y = physics(images)
    rows = []
    for lam, score in table:
        start = GlowReconstructor(glow, init=total_variation(lam))._initial_latent(y, physics, 0)
        rows.append((lam, score, int(start.any(dim=1).sum())))
    typical = [row for row in rows if 2 * row[2] >= len(images)] or rows
    return max(typical, key=lambda row: row[1])[0], rows


def _timed(reconstructor):
    """``reconstructor`` as a deepinv Reconstructor that also adds up the seconds its calls take
    (``seconds``), so the warm start's share of the solve is known without running it twice."""
    from deepinv.models import Reconstructor

    class Timed(Reconstructor):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.seconds = reconstructor, 0.0

        def forward(self, y, physics, **kwargs):
            started = time.perf_counter()
            try:
                return self.inner(y, physics, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

    return Timed()


def _pair(methods: dict) -> tuple[list, list]:
    return methods["paper-guarded"], methods["ours"]


def print_summary(summary: dict) -> None:
    print(
        f"{summary['task']:>10}: reference {summary['reference_psnr']:.2f} dB after "
        f"{summary['reference_passes']:.0f} passes/image; ours reaches it "
        f"(-{QUALITY_SLACK} dB) after {_fmt(summary['ours_passes_to_reference'])} passes: "
        f"ratio {_fmt(summary['work_ratio_at_equal_psnr'])} (digits redrawn: "
        f"{_fmt(summary['ratio_p05'])}-{_fmt(summary['ratio_p95'])}; the reference itself: "
        f"{_fmt(summary['reference_ratio_at_own_psnr'])}); ours stops at "
        f"{summary['ours_final_psnr']:.2f} dB after {summary['ours_final_passes']:.0f} passes"
        + (
            f"; time ratio at equal quality {_fmt(summary['time_ratio_at_equal_psnr'])}"
            if summary["reference_seconds"] is not None
            else ""
        ),
        flush=True,
    )


def _write_table(path: Path, table: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows([{k: _cell(v) for k, v in row.items()} for row in table])


def write_outputs(traces: dict, out: Path, resamples: int, announce: bool = False) -> int:
    """Write the traces under ``out``, then summarise every task of the written file (printing
    each if ``announce``; the file's rounding, so ``--merge`` of it gives the same summary) and
    write the summary and plot."""
    rows = [
        {"task": task, "method": name, "iteration": it, "passes": work, "psnr": value}
        | {"seconds": timing[0] if timing else None}
        | {f"psnr_digit_{i}": digit for i, digit in enumerate(digits)}
        for task, methods in traces.items()
        for name, points in methods.items()
        for it, work, value, digits, *timing in points
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_table(out.with_suffix(".csv"), rows)
    traces = read_traces(out.with_suffix(".csv"))
    summaries = [summarise(task, *_pair(methods), resamples) for task, methods in traces.items()]
    for summary in summaries if announce else ():
        print_summary(summary)
    _write_table(Path(f"{out}_summary.csv"), summaries)
    plot(traces, summaries, out.with_suffix(".png"))
    print(f"traces: {out.with_suffix('.csv')}, summary: {out}_summary.csv, plot: {out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
