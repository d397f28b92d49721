"""Tests of :mod:`deepinv_glowprior.train`: exact resumption (after a crash, an interrupt and a
real SIGKILL), fault-safe checkpoints, output-folder checks, settings validation, the data order,
learning, determinism and data-parallel training with torch.distributed (gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from deepinv_glowprior.glow import CheckpointError, Glow
from deepinv_glowprior.train import (
    TrainConfig,
    batch_indices,
    evaluate_bits_per_dim,
    fit,
    learning_rate_factor,
    save_sample_grid,
)

TINY = {"img_size": (1, 8, 8), "levels": 2, "steps": 2, "hidden_channels": 8}


@pytest.fixture(autouse=True)
def _one_thread_and_quiet():
    """One intra-op thread (the machine has two cores and other work) and no torch.lu chatter."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
    torch.set_num_threads(threads)


class _Crash(Exception):
    """Raised from ``on_step`` to simulate a crash in the middle of a run."""


def _tiny_glow(seed: int = 0, **overrides) -> Glow:
    torch.manual_seed(seed)
    return Glow(**{**TINY, **overrides})


def _images(n: int = 32, seed: int = 0) -> torch.Tensor:
    """Random 8-bit images, values k / 255."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=generator).float() / 255


def _blocky_images(n: int = 32, seed: int = 0) -> torch.Tensor:
    """Images made of four constant 4x4 blocks: very redundant, so a Glow learns them quickly."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 2, 2, generator=generator)
    return torch.round(F.interpolate(low, size=(8, 8), mode="nearest") * 255) / 255


def _config(**overrides) -> TrainConfig:
    settings = {
        "iterations": 12,
        "batch_size": 8,
        "lr": 5e-3,
        "warmup": 2,
        "checkpoint_every": 4,
        "eval_every": 0,
        "eval_images": 8,
        "sample_every": 0,
        "progress": False,
        "device": "cpu",
    }
    return TrainConfig(**{**settings, **overrides})


def _assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(
            a[name], b[name], atol=atol, rtol=0, msg=lambda message, name=name: f"{name}: {message}"
        )


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """12 uninterrupted steps (checkpoints at 4, 8, 12): the run every resumption must equal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        glow = _tiny_glow()
        history = fit(glow, _images(), None, tmp_path_factory.mktemp("reference"), _config())
        torch.set_num_threads(threads)
    return {k: v.clone() for k, v in glow.state_dict().items()}, history


# -- resumption -------------------------------------------------------------------------------
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, reference_run):
    weights, history = reference_run
    assert [entry["step"] for entry in history] == [4, 8, 12]
    steps_seen = []

    def crash_at_7(step: int, loss: float) -> None:
        steps_seen.append(step)
        if step == 7:
            raise _Crash

    with pytest.raises(_Crash):
        fit(_tiny_glow(), _images(), None, tmp_path, _config(), on_step=crash_at_7)
    assert steps_seen == list(range(1, 8))
    assert _checkpoint_step(tmp_path / "checkpoint.pt") == 4
    assert not (tmp_path / "model.pt").exists()

    resumed_steps = []
    glow = _tiny_glow()  # fresh model, same init seed: the checkpoint must overwrite everything
    resumed = fit(
        glow, _images(), None, tmp_path, _config(), on_step=lambda s, _: resumed_steps.append(s)
    )
    assert resumed_steps == list(range(5, 13))
    _assert_same_weights(glow.state_dict(), weights)
    assert [entry["step"] for entry in resumed] == [entry["step"] for entry in history]
    for ours, theirs in zip(resumed, history, strict=True):
        assert ours["train_bpd"] == pytest.approx(theirs["train_bpd"], abs=1e-6)
        assert ours["lr"] == pytest.approx(theirs["lr"])
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").open()] == [4, 8, 12]
    _assert_same_weights(Glow.load(tmp_path / "model.pt").state_dict(), weights)


def test_keyboard_interrupt_saves_a_checkpoint_that_resumes_exactly(tmp_path, reference_run):
    weights, _ = reference_run

    def interrupt_at_6(step: int, loss: float) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_tiny_glow(), _images(), None, tmp_path, _config(), on_step=interrupt_at_6)
    assert _checkpoint_step(tmp_path / "checkpoint.pt") == 6  # saved on the way out

    glow = _tiny_glow()
    history = fit(glow, _images(), None, tmp_path, _config())
    assert [entry["step"] for entry in history] == [4, 8, 12]
    _assert_same_weights(glow.state_dict(), weights)


def test_resume_to_more_iterations_equals_one_long_run(tmp_path, reference_run):
    weights, history = reference_run
    first = fit(_tiny_glow(), _images(), None, tmp_path, _config(iterations=8))
    assert [entry["step"] for entry in first] == [4, 8]
    assert (tmp_path / "model.pt").is_file()

    glow = _tiny_glow()
    longer = fit(glow, _images(), None, tmp_path, _config(iterations=12))
    assert [entry["step"] for entry in longer] == [4, 8, 12]
    assert longer[-1]["train_bpd"] == pytest.approx(history[-1]["train_bpd"], abs=1e-6)
    _assert_same_weights(glow.state_dict(), weights)


def test_learning_rate_schedule_warmup_then_cosine_decay():
    config = TrainConfig(iterations=100, warmup=10, decay_start=60)
    factors = [learning_rate_factor(step, config) for step in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert all(f == 1.0 for f in factors[9:61])
    assert factors[80] == pytest.approx(0.5) and factors[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[60:], factors[61:], strict=False))
    constant = TrainConfig(iterations=100, warmup=10)
    assert learning_rate_factor(99, constant) == 1.0


def test_decay_added_when_resuming_equals_one_run_with_that_decay(tmp_path):
    """A finished constant-lr run, resumed with a decay from its last step, ends where one run
    with that schedule from the start ends."""
    one_run = _tiny_glow()
    fit(one_run, _images(), None, tmp_path / "one", _config(iterations=12, decay_start=8))
    fit(_tiny_glow(), _images(), None, tmp_path / "two", _config(iterations=8))
    resumed = _tiny_glow()
    fit(resumed, _images(), None, tmp_path / "two", _config(iterations=12, decay_start=8))
    _assert_same_weights(resumed.state_dict(), one_run.state_dict())
    assert _max_difference(resumed.state_dict(), _tiny_glow().state_dict()) > 0


def test_decay_starting_before_the_checkpoint_is_refused(tmp_path):
    fit(_tiny_glow(), _images(), None, tmp_path, _config(iterations=8))
    with pytest.raises(ValueError, match="decay_start=4.*at or after step 8"):
        fit(_tiny_glow(), _images(), None, tmp_path, _config(iterations=12, decay_start=4))


def test_checkpoint_without_a_newer_setting_resumes_at_its_default(tmp_path):
    fit(_tiny_glow(), _images(), None, tmp_path, _config(iterations=4))
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["train_config"]["decay_start"]  # as written before decay_start existed
    torch.save(state, path)
    history = fit(_tiny_glow(), _images(), None, tmp_path, _config(iterations=8))
    assert [entry["step"] for entry in history] == [4, 8]


@pytest.mark.parametrize("decay_start", [-1, 12, 20])
def test_decay_start_out_of_range_is_refused(decay_start):
    with pytest.raises(ValueError, match="decay_start"):
        TrainConfig(iterations=12, decay_start=decay_start)


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", 1e-3), ("batch_size", 4), ("seed", 1), ("optimizer", "adamax"), ("warmup", 0)],
)
def test_resume_with_a_changed_setting_names_it(tmp_path, field, value):
    fit(_tiny_glow(), _images(), None, tmp_path, _config(iterations=4))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    steps = []
    with pytest.raises(ValueError, match=rf"\b{field}=") as info:
        fit(
            _tiny_glow(),
            _images(),
            None,
            tmp_path,
            _config(iterations=8, **{field: value}),
            on_step=lambda s, _: steps.append(s),
        )
    assert "checkpoint.pt" in str(info.value)
    assert steps == []
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_into_a_different_architecture_names_the_field(tmp_path):
    fit(_tiny_glow(), _images(), None, tmp_path, _config(iterations=4))
    with pytest.raises(CheckpointError, match="hidden_channels"):
        fit(_tiny_glow(hidden_channels=4), _images(), None, tmp_path, _config(iterations=8))


# A `glowprior train` whose every step prints its number and sleeps a little, so that the test
# knows exactly how far the killed process got and has time to kill it mid-run.
_SLOW_CLI = """
import sys, time
import deepinv_glowprior.train as train
from deepinv_glowprior import cli

_fit = train.fit

def fit(*args, **kwargs):
    def on_step(step, loss):
        print(f"step {step}", flush=True)
        time.sleep(0.02)
    return _fit(*args, on_step=on_step, **kwargs)

train.fit = fit
sys.exit(cli.main(sys.argv[1:]))
"""


def _write_image_folder(folder: Path, count: int = 16, seed: int = 0) -> Path:
    from skimage.io import imsave

    folder.mkdir(parents=True, exist_ok=True)
    images = (_images(count, seed)[:, 0] * 255).round().to(torch.uint8).numpy()
    for i, image in enumerate(images):
        imsave(folder / f"img{i:02d}.png", image, check_contrast=False)
    return folder


def test_sigkill_then_same_command_resumes(tmp_path):
    data_dir = _write_image_folder(tmp_path / "images")
    out, every, iterations = tmp_path / "run", 10, 60
    script = tmp_path / "slow_cli.py"
    script.write_text(_SLOW_CLI)
    command = [
        sys.executable,
        str(script),
        "train",
        *("--dataset", "folder", "--data-dir", str(data_dir), "--image-size", "8", "--grey"),
        *("--levels", "2", "--flow-steps", "2", "--hidden-channels", "8"),
        *("--iterations", str(iterations), "--batch-size", "8", "--warmup", "0"),
        *("--checkpoint-every", str(every), "--sample-every", "0", "--eval-every", "0"),
        *("--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 120
    try:
        while not (out / "checkpoint.pt").exists():
            assert process.poll() is None, f"training ended early: {process.communicate()}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, stderr
    done = [int(m) for m in re.findall(r"^step (\d+)$", stdout, flags=re.M)]
    saved = _checkpoint_step(out / "checkpoint.pt")
    assert done and done == list(range(1, done[-1] + 1))
    assert done[-1] < iterations, "the process finished before it was killed"
    assert saved % every == 0 and saved >= every
    assert 0 <= done[-1] - saved <= every, "more than one checkpoint interval was lost"
    assert not (out / "model.pt").exists()
    kept_log = [json.loads(line) for line in (out / "log.jsonl").open()]

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    steps = [int(m) for m in re.findall(r"^step (\d+)$", rerun.stdout, flags=re.M)]
    assert steps == list(range(saved + 1, iterations + 1)), "did not resume at the checkpoint"
    log = [json.loads(line) for line in (out / "log.jsonl").open()]
    assert [entry["step"] for entry in log] == list(range(every, iterations + 1, every))
    assert log[: len(kept_log)] == kept_log  # the history before the kill is kept as it was
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["step"] == iterations
    glow = Glow.load(out / "model.pt")
    assert glow.img_size == (1, 8, 8) and glow.is_initialized


# -- faults and unusable output folders ---------------------------------------------------------
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, reference_run):
    def torn_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    def break_disk_at_5(step: int, loss: float) -> None:
        if step == 5:
            monkeypatch.setattr("deepinv_glowprior.glow.torch.save", torn_save)

    with pytest.raises(OSError, match="No space left"):
        fit(_tiny_glow(), _images(), None, tmp_path, _config(), on_step=break_disk_at_5)
    assert _checkpoint_step(tmp_path / "checkpoint.pt") == 4
    assert Glow.load(tmp_path / "checkpoint.pt").is_initialized
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "log.jsonl"]

    monkeypatch.undo()  # the disk is fixed: the run resumes from step 4 as if nothing happened
    glow = _tiny_glow()
    fit(glow, _images(), None, tmp_path, _config())
    _assert_same_weights(glow.state_dict(), reference_run[0])


def test_output_path_under_a_file_fails_before_training(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    out = blocker / "sub"
    glow, steps = _tiny_glow(), []
    with pytest.raises(PermissionError, match=re.escape(str(out))):
        fit(glow, _images(), None, out, _config(), on_step=lambda s, _: steps.append(s))
    assert steps == [] and not glow.is_initialized


def test_read_only_output_folder_fails_before_training(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 0o555 does not stop root from writing")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        glow, steps = _tiny_glow(), []
        with pytest.raises(PermissionError, match=re.escape(str(read_only))):
            fit(glow, _images(), None, read_only, _config(), on_step=lambda s, _: steps.append(s))
        assert steps == [] and not glow.is_initialized
    finally:
        read_only.chmod(0o755)


def test_full_disk_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "deepinv_glowprior.train.shutil.disk_usage",
        lambda path: SimpleNamespace(total=10**9, used=10**9 - 1024, free=1024),
    )
    glow, steps = _tiny_glow(), []
    with pytest.raises(OSError, match="free") as info:
        fit(glow, _images(), None, tmp_path, _config(), on_step=lambda s, _: steps.append(s))
    assert str(tmp_path) in str(info.value)
    assert steps == [] and not glow.is_initialized
    assert not (tmp_path / "checkpoint.pt").exists()


# -- settings and data order ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": -1e-3}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"iterations": True}, "iterations"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"warmup": -1}, "warmup"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_train_config_rejects_bad_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_train_config_rejects_a_non_boolean_channels_last():
    with pytest.raises(TypeError, match="channels_last"):
        TrainConfig(channels_last="yes")


def test_channels_last_defaults_to_the_cpu_only():
    assert TrainConfig().memory_format(torch.device("cpu")) == torch.channels_last
    assert TrainConfig().memory_format(torch.device("cuda")) == torch.contiguous_format
    forced = TrainConfig(channels_last=True).memory_format(torch.device("cuda"))
    assert forced == torch.channels_last


def _convolution_weights(glow: Glow) -> list[torch.Tensor]:
    """The weights whose layouts differ: several input channels and a kernel wider than 1."""
    weights = [m.weight for m in glow.modules() if isinstance(m, torch.nn.Conv2d)]
    return [w for w in weights if w.shape[1] > 1 and w.shape[2] > 1]


@pytest.mark.parametrize(("setting", "expected"), [(None, True), (True, True), (False, False)])
def test_channels_last_holds_during_training_and_is_undone_after(tmp_path, setting, expected):
    glow, layouts = _tiny_glow(), []
    weights = _convolution_weights(glow)
    assert weights

    def record(step: int, loss: float) -> None:
        layouts.append(
            [
                (w.is_contiguous(memory_format=torch.channels_last), w.is_contiguous())
                for w in weights
            ]
        )

    config = _config(iterations=3, channels_last=setting)
    fit(glow, _images(), None, tmp_path, config, on_step=record)
    assert layouts == [[(expected, not expected)] * len(weights)] * 3
    assert all(w.is_contiguous() for w in weights)


def test_channels_last_trains_the_same_model(tmp_path):
    """The layout changes the order of floating-point sums only, not the training."""
    runs = {}
    for setting in (True, False):
        glow = _tiny_glow()
        history = fit(
            glow, _images(), None, tmp_path / str(setting), _config(channels_last=setting)
        )
        runs[setting] = glow.state_dict(), history
    _assert_same_weights(runs[True][0], runs[False][0], atol=1e-4)
    for with_layout, without in zip(runs[True][1], runs[False][1], strict=True):
        assert with_layout["train_bpd"] == pytest.approx(without["train_bpd"], rel=1e-5)


def test_batch_indices_are_deterministic_epoch_permutations():
    size, batch = 22, 4  # 5 steps per epoch; 2 images left out of each epoch
    first = batch_indices(3, size, batch, seed=7)
    assert torch.equal(first, batch_indices(3, size, batch, seed=7))
    assert not torch.equal(
        torch.cat([batch_indices(s, size, batch, seed=7) for s in range(5)]),
        torch.cat([batch_indices(s, size, batch, seed=8) for s in range(5)]),
    )
    for epoch in range(3):
        seen = torch.cat([batch_indices(epoch * 5 + p, size, batch, seed=7) for p in range(5)])
        assert seen.numel() == 20 and seen.unique().numel() == 20  # no repeats within an epoch
        assert 0 <= int(seen.min()) and int(seen.max()) < size
    epochs = [
        torch.cat([batch_indices(e * 5 + p, size, batch, 7) for p in range(5)]) for e in (0, 1)
    ]
    assert not torch.equal(epochs[0], epochs[1])  # each epoch has its own order


@pytest.mark.parametrize("world_size", [2, 4])
def test_batch_indices_shares_partition_the_global_batch(world_size):
    for step in (0, 1, 9):
        whole = batch_indices(step, 40, 8, seed=3)
        shares = [batch_indices(step, 40, 8, 3, rank, world_size) for rank in range(world_size)]
        assert all(share.numel() == 8 // world_size for share in shares)
        assert torch.equal(torch.cat(shares), whole)  # disjoint, and their union is the batch


def test_batch_indices_rejects_a_dataset_smaller_than_a_batch():
    with pytest.raises(ValueError, match="fewer than one batch"):
        batch_indices(0, 7, 8, seed=0)
    with pytest.raises(ValueError, match="empty"):
        fit(_tiny_glow(), torch.empty(0, 1, 8, 8), None, "/nonexistent", _config())


# -- learning, evaluation and samples -------------------------------------------------------------
def test_training_lowers_bits_per_dim(tmp_path):
    data = _blocky_images(32)
    glow = _tiny_glow()
    glow.initialize(data[:8])
    before = evaluate_bits_per_dim(glow, data, 32, seed=0)
    config = _config(iterations=30, warmup=0, lr=1e-2, checkpoint_every=10, eval_images=32)
    history = fit(glow, data, data, tmp_path, config)
    after = evaluate_bits_per_dim(glow, data, 32, seed=0)
    assert after < before - 0.5, (before, after)
    assert history[-1]["train_bpd"] < history[0]["train_bpd"]
    assert history[-1]["test_bpd"] == pytest.approx(after, abs=1e-4)


def test_evaluate_bits_per_dim_is_seeded():
    data = _images(16)
    glow = _tiny_glow()
    glow.initialize(data[:8])
    glow.train()
    a = evaluate_bits_per_dim(glow, data, 12, batch_size=5, seed=3)
    assert a == evaluate_bits_per_dim(glow, data, 12, batch_size=5, seed=3)
    assert a != evaluate_bits_per_dim(glow, data, 12, batch_size=5, seed=4)
    assert glow.training  # the mode is restored
    manual = glow.bits_per_dim(data[:12], generator=torch.Generator().manual_seed(3)).mean()
    assert a == pytest.approx(float(manual), abs=1e-4)


@pytest.mark.parametrize(("num", "shape"), [(16, (37, 37)), (8, (37, 19))])
def test_save_sample_grid_writes_a_png(tmp_path, num, shape):
    from skimage.io import imread

    glow = _tiny_glow()
    glow.initialize(_images(8))
    path = save_sample_grid(glow, tmp_path / "grid.png", temperature=0.7, num=num, seed=0)
    image = imread(path)
    # nrow = floor(sqrt(num)) tiles of 8 px with 1 px padding; torchvision saves grey as RGB
    assert image.shape[:2] == shape
    again = imread(save_sample_grid(glow, tmp_path / "again.png", 0.7, num=num, seed=0))
    assert (image == again).all()


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    def run(name: str, init_seed: int, data_seed: int) -> dict:
        glow = _tiny_glow(init_seed)
        fit(glow, _images(), None, tmp_path / name, _config(iterations=6, seed=data_seed))
        return glow.state_dict()

    a, b = run("a", 0, 0), run("b", 0, 0)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _max_difference(a, run("c", 1, 1)) > 1e-3
    assert _max_difference(a, run("d", 0, 1)) > 1e-3  # the config seed alone changes the run


# -- data-parallel training -----------------------------------------------------------------------
DDP_STEPS = 6


def _bin_centres(self: Glow, x: torch.Tensor, generator=None, noise=None) -> torch.Tensor:
    """Dequantisation without noise: makes the loss a pure function of the images."""
    return (self.quantize(x) + 0.5) / 2**self.config.n_bits


def _ddp_config() -> TrainConfig:
    return _config(iterations=DDP_STEPS, checkpoint_every=DDP_STEPS)


def _train_once(out_dir: Path, noise: str) -> dict:
    original = Glow.dequantize
    if noise == "centres":
        Glow.dequantize = _bin_centres
    try:
        glow = _tiny_glow()
        fit(glow, _images(), None, out_dir, _ddp_config(), resume=False)
    finally:
        Glow.dequantize = original
    return glow.state_dict()


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", UserWarning)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for noise in ("uniform", "centres"):
            weights = _train_once(Path(out_dir) / noise, noise)
            torch.save(weights, Path(out_dir) / f"{noise}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_weights(tmp_path_factory) -> dict:
    """Weights of both ranks after 2-process training (global batch 8), for both noise kinds."""
    out = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(
        _ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 180
    while not context.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("2-process training did not finish within 180 s")
    weights = {
        (noise, rank): torch.load(out / f"{noise}_rank{rank}.pt", weights_only=True)
        for noise in ("uniform", "centres")
        for rank in (0, 1)
    }
    return {"out": out, **weights}


def test_distributed_replicas_hold_identical_weights(ddp_weights):
    for noise in ("uniform", "centres"):
        rank0, rank1 = ddp_weights[noise, 0], ddp_weights[noise, 1]
        for name in rank0:
            assert torch.equal(rank0[name], rank1[name]), (noise, name)
        assert _max_difference(rank0, _tiny_glow().state_dict()) > 1e-3  # it did train


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, ddp_weights):
    """Sharding, gradient averaging and ActNorm's start are exact: with the dequantisation noise
    taken out, 2 x 4 images per step give the weights of 1 x 8 up to float reduction order."""
    single = _train_once(tmp_path / "single", "centres")
    _assert_same_weights(ddp_weights["centres", 0], single, atol=1e-5)


def test_two_processes_match_one_process_with_dequantisation_noise(tmp_path, ddp_weights):
    single = _train_once(tmp_path / "single", "uniform")
    _assert_same_weights(ddp_weights["uniform", 0], single, atol=1e-4)


def test_distributed_run_writes_one_model_and_log(ddp_weights):
    out = ddp_weights["out"] / "uniform"
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "log.jsonl",
        "model.pt",
        "samples_final.png",
    ]
    _assert_same_weights(Glow.load(out / "model.pt").state_dict(), ddp_weights["uniform", 0])
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").open()] == [DDP_STEPS]
