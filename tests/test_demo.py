"""Tests of :mod:`deepinv_glowprior.demo`, the README's main job (``make demo``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deepinv_glowprior.demo import DEMO_TASKS, format_table, run_demo


def test_format_table_aligns_columns_and_rounds():
    rows = [{"task": "CS", "Glow PSNR": 31.234}, {"task": "denoise", "Glow PSNR": 9.0}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["task", "Glow", "PSNR"]
    assert lines[1].split() == ["CS", "31.23"] and lines[2].split() == ["denoise", "9.00"]
    assert len({len(line) for line in lines}) == 1


@pytest.mark.parametrize("count", [0, -1, True, 2.0])
def test_run_demo_refuses_a_bad_image_count(count, tmp_path):
    with pytest.raises(ValueError, match="num_images must be a positive int"):
        run_demo(num_images=count, out=tmp_path / "demo.png")


def test_run_demo_refuses_a_folder_as_figure_path(tmp_path):
    with pytest.raises(IsADirectoryError, match="give a file name"):
        run_demo(num_images=1, out=tmp_path)


@pytest.mark.slow
def test_main_job_runs_cleanly_and_the_glow_beats_the_baselines_at_cs(tmp_path):
    """``glowprior demo`` on one digit, as ``make demo`` runs it: exit 0, a row per task, the
    figure written, no warning on stderr, and the Glow above the pseudo-inverse and the
    wavelet Lasso wherever measurements are compressed."""
    figure = tmp_path / "demo.png"
    result = subprocess.run(
        [sys.executable, "-m", "deepinv_glowprior.cli", "demo", "--num-images", "1"]
        + ["--out", str(figure), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert figure.stat().st_size > 0
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.strip().startswith("task")))
    columns = lines[header].split()
    assert columns[:2] == ["task", "measurement"]
    table = lines[header + 1 : header + 1 + len(DEMO_TASKS)]
    for (label, task, _, _), line in zip(DEMO_TASKS, table, strict=True):
        assert line.strip().startswith(label), line
        measurement, lasso, glow = (float(v) for v in line.strip()[len(label) :].split()[:3])
        if task == "cs":
            assert glow > lasso + 3 and glow > measurement + 3, line
        else:
            assert glow > measurement, line
