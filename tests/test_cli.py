"""Tests of the ``glowprior`` command: its help, its one-line user errors (exit status 2, no
traceback) and a short end-to-end training run on a folder of images, resumed once."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from deepinv_glowprior.cli import build_parser, main
from deepinv_glowprior.glow import Glow


@pytest.fixture(autouse=True)
def _one_thread_and_quiet():
    """One intra-op thread (the machine has two cores and other work) and no torch.lu chatter."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
    torch.set_num_threads(threads)


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """16 random grey 8x8 PNGs."""
    from skimage.io import imsave

    folder = tmp_path / "images"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 8, 8), generator=generator, dtype=torch.uint8).numpy()
    for i, image in enumerate(images):
        imsave(folder / f"img{i:02d}.png", image, check_contrast=False)
    return folder


def _train_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["train"]


def _tiny_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        *("--dataset", "folder", "--data-dir", str(data_dir), "--image-size", "8", "--grey"),
        *("--levels", "2", "--flow-steps", "2", "--hidden-channels", "8"),
        *("--batch-size", "8", "--warmup", "0", "--lr", "5e-3", "--eval-every", "0"),
        *("--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out)),
        *extra,
    ]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("glowprior train: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_train_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())  # help text is wrapped over several lines
    assert "torchrun" in flat and "resumes" in flat
    options = [a for a in _train_parser()._actions if a.option_strings]
    assert len(options) > 25
    for action in options:
        for option in action.option_strings:
            assert option in text, option
        assert action.help and action.help.strip(), f"{action.option_strings} has no help text"
        assert " ".join(action.help.split()) in flat, action.option_strings


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "folder"], "--data-dir"),
        (["--dataset", "folder", "--data-dir", "{tmp}/missing"], "does not exist"),
        (["--dataset", "folder", "--data-dir", "{tmp}", "--image-size", "8"], "no image"),
        (["--dataset", "folder", "--data-dir", "{images}", "--batch-size", "0"], "batch_size"),
        (["--dataset", "mnist", "--image-size", "30"], "--image-size must be 32"),
        (["--dataset", "folder", "--data-dir", "{images}", "--image-size", "12"], "divisible"),
        (["--dataset", "folder", "--data-dir", "{images}", "--lr", "-1"], "lr"),
        (["--dataset", "mnist", "--exclude-digits", "1,x"], "'x'"),
        (["--dataset", "folder", "--data-dir", "{images}", "--threads", "-1"], "--threads"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, image_dir, capsys, args, message):
    args = [a.format(tmp=tmp_path / "empty", images=image_dir) for a in args]
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert main(["train", *args, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert message in _one_error_line(captured.err)
    assert captured.out == ""
    assert not out.exists()  # nothing is created for a command that cannot run


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_user_error(image_dir, tmp_path, capsys):
    assert main(_tiny_args(image_dir, tmp_path / "out", "--device", "cuda")) == 2
    assert "CUDA is not available" in _one_error_line(capsys.readouterr().err)


def test_batch_larger_than_the_folder_is_a_user_error(image_dir, tmp_path, capsys):
    assert main(_tiny_args(image_dir, tmp_path / "out", "--batch-size", "32")) == 2
    assert "smaller batch_size" in _one_error_line(capsys.readouterr().err)


def test_interrupt_exits_130_with_one_line(image_dir, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("deepinv_glowprior.train.fit", interrupted)
    assert main(_tiny_args(image_dir, tmp_path / "out")) == 130
    assert capsys.readouterr().err.strip() == "glowprior train: interrupted"


def test_user_error_in_a_subprocess_has_no_traceback(tmp_path):
    script = Path(sys.executable).with_name("glowprior")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "deepinv_glowprior.cli"]
    missing = tmp_path / "missing"
    result = subprocess.run(
        [*command, "train", "--dataset", "folder", "--data-dir", str(missing), "--out", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert str(missing) in _one_error_line(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize(("extra", "expected"), [((), None), (("--no-channels-last",), False)])
def test_train_passes_the_weight_layout_to_fit(image_dir, tmp_path, monkeypatch, extra, expected):
    import deepinv_glowprior.train as train

    seen, real_fit = [], train.fit

    def recording_fit(glow, train_set, test_set, out_dir, config, **kwargs):
        seen.append(config.channels_last)
        return real_fit(glow, train_set, test_set, out_dir, config, **kwargs)

    monkeypatch.setattr(train, "fit", recording_fit)
    assert main([*_tiny_args(image_dir, tmp_path / "run", *extra), "--iterations", "1"]) == 0
    assert seen == [expected]


def test_train_end_to_end_then_resume(image_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = _tiny_args(image_dir, out, "--checkpoint-every", "2", "--sample-every", "2")
    assert main([*args, "--iterations", "4"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    last = json.loads(captured.out.strip().splitlines()[-1])
    log = [json.loads(line) for line in (out / "log.jsonl").open()]
    assert [entry["step"] for entry in log] == [2, 4]
    assert last == log[-1] and set(last) >= {"step", "train_bpd", "lr", "seconds"}
    for name in ("model.pt", "checkpoint.pt", "samples_000002.png", "samples_final.png"):
        assert (out / name).is_file(), name
    glow = Glow.load(out / "model.pt")
    assert glow.img_size == (1, 8, 8) and glow.is_initialized
    assert "--iterations 4" in torch.load(out / "model.pt", weights_only=True)["meta"]["command"]

    # the same command with another learning rate refuses to mix two runs
    assert main([*args, "--iterations", "6", "--lr", "1e-3"]) == 2
    assert "lr=" in _one_error_line(capsys.readouterr().err)

    # a larger --iterations continues the run
    assert main([*args, "--iterations", "6"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["step"] == 6
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").open()] == [2, 4, 6]
    meta = torch.load(out / "model.pt", weights_only=True)["meta"]
    assert [entry["step"] for entry in meta["history"]] == [2, 4, 6]
