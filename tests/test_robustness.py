"""Robustness of every public entry point: bad input (one table of cases), accepted edge cases,
property-based tests of invertibility and of reconstructions, numerical faults that must warn,
and determinism.

The tables below are also the source of ``docs/robustness.rst``: regenerate that page with
``python tests/test_robustness.py`` after changing them (a test checks it lists every case).

Devices: these tests run without a GPU. A tensor "on another device" is a ``meta`` tensor, and a
model "on the GPU" is a CPU model whose ``Glow.device`` is monkeypatched to ``cuda:0``; asking for
CUDA where there is none is checked for real (skipped on machines that have CUDA).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import deepinv as dinv
import pytest
import torch
from helpers import smooth_images
from hypothesis import given, settings
from hypothesis import strategies as st

from deepinv_glowprior import CheckpointError, Glow, GlowPrior, GlowReconstructor, pretrained
from deepinv_glowprior.cli import main
from deepinv_glowprior.pretrained import export_run, load_pretrained, model_card
from deepinv_glowprior.tasks import compressed_sensing as cs_physics
from deepinv_glowprior.tasks import make_physics
from deepinv_glowprior.train import TrainConfig, fit

TINY = {"img_size": (1, 8, 8), "levels": 2, "steps": 2, "hidden_channels": 8}
IMG = TINY["img_size"]
N = math.prod(IMG)
DOC_PAGE = Path(__file__).resolve().parents[1] / "docs" / "robustness.rst"
# normflows' LU convolution calls deprecated torch functions: not ours to warn about
TORCH_CHATTER = (".*torch.lu.*", ".*lu_unpack.*", "Converting a tensor with requires_grad")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in TORCH_CHATTER:
            warnings.filterwarnings("ignore", message=message)
        yield


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the tests share two cores with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seeded_and_quiet():
    torch.manual_seed(0)
    with quiet():
        yield


# -- the shared context ---------------------------------------------------------------------------
def blob_images(n: int, seed: int = 0) -> torch.Tensor:
    """Two Gaussian blobs per 8x8 image plus a little noise, in [0, 1]."""
    return smooth_images(n, seed)


def train_tiny_glow(steps: int = 80) -> Glow:
    """The tiny Glow trained briefly on blob images (a second or two)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(0)
        data = blob_images(256)
        glow = Glow(**TINY)
        glow.initialize(data[:64])
        optimizer = torch.optim.Adam(glow.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(1)
        for _ in range(steps):
            batch = data[torch.randint(0, len(data), (32,), generator=generator)]
            loss = glow.bits_per_dim(batch, generator=generator).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return glow.eval()


@dataclass(frozen=True)
class Context:
    """What the cases need: a trained tiny Glow, prepared files under ``tmp``, a monkeypatch."""

    glow: Glow
    tmp: Path
    monkeypatch: pytest.MonkeyPatch | None = None

    @property
    def prior(self) -> GlowPrior:
        return GlowPrior(self.glow)

    def x(self, n: int = 2) -> torch.Tensor:
        return self.glow.sample(n, 0.5, generator=torch.Generator().manual_seed(n))

    def file(self, name: str) -> Path:
        return self.tmp / "files" / name


def _write_files(glow: Glow, folder: Path) -> None:
    """Checkpoints good and bad, run folders and an image folder, for the cases below."""
    folder.mkdir(parents=True)
    model = glow.save(folder / "model.pt")
    data = model.read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "empty.pt").write_bytes(b"")
    (folder / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 10)
    torch.save([1, 2, 3], folder / "list.pt")
    payload = glow.checkpoint_payload()
    torch.save({**payload, "config": {**payload["config"], "levels": 0}}, folder / "bad_cfg.pt")
    torch.save({**payload, "config": {**payload["config"], "depth": 3}}, folder / "new_key.pt")
    nan_state = {k: v.clone() for k, v in payload["state_dict"].items()}
    next(v for v in nan_state.values() if v.is_floating_point()).fill_(math.nan)
    torch.save({**payload, "state_dict": nan_state}, folder / "nan_weights.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        wider = Glow(**{**TINY, "hidden_channels": 16}).initialize(blob_images(8))
        bigger = Glow(**{**TINY, "img_size": (1, 16, 16)})
    wider.save(folder / "wider.pt")
    bigger.save(folder / "bigger.pt")
    torch.save({**payload, "state_dict": wider.state_dict()}, folder / "foreign_weights.pt")
    # training output folders
    for name in ("corrupt_run", "foreign_run", "unfinished_run", "run_without_log"):
        (folder / name).mkdir()
    (folder / "corrupt_run" / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    glow.save(folder / "foreign_run" / "checkpoint.pt")
    glow.save(folder / "unfinished_run" / "checkpoint.pt")
    glow.save(folder / "run_without_log" / "model.pt")
    # a folder of 16 grey 8x8 PNGs for the command line
    from skimage.io import imsave

    images = folder / "images"
    images.mkdir()
    pixels = torch.randint(0, 256, (16, 8, 8), generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(pixels.to(torch.uint8).numpy()):
        imsave(images / f"img{i:02d}.png", image, check_contrast=False)


def make_context(tmp: Path) -> Context:
    glow = train_tiny_glow()
    _write_files(glow, tmp / "files")
    return Context(glow=glow, tmp=tmp)


@pytest.fixture(scope="module")
def base_context(tmp_path_factory) -> Context:
    with quiet():
        return make_context(tmp_path_factory.mktemp("robustness"))


@pytest.fixture
def ctx(base_context, monkeypatch) -> Context:
    return replace(base_context, monkeypatch=monkeypatch)


# -- helpers used by the cases --------------------------------------------------------------------
def on_gpu(ctx: Context) -> None:
    """Pretend the Glow lives on cuda:0 (no GPU here): its ``device`` property says so."""
    ctx.monkeypatch.setattr(Glow, "device", property(lambda self: torch.device("cuda", 0)))


def denoising(sigma: float = 0.1) -> dinv.physics.Denoising:
    return dinv.physics.Denoising(
        dinv.physics.GaussianNoise(sigma, rng=torch.Generator().manual_seed(0))
    )


def compressed_sensing(m: int, img_size=IMG, sigma: float = 0.01) -> dinv.physics.Physics:
    physics = dinv.physics.CompressedSensing(
        m=m, img_size=img_size, rng=torch.Generator().manual_seed(1)
    )
    physics.noise_model = dinv.physics.GaussianNoise(sigma, rng=torch.Generator().manual_seed(1))
    return physics


class _QuarterSizeImages(dinv.models.Reconstructor):
    """A warm start that returns images of the wrong size."""

    def forward(self, y, physics, **kwargs):
        return torch.zeros(len(y), 1, 4, 4)


class _DenoisingWithStrayBuffer(dinv.physics.Denoising):
    """A physics holding one tensor on another device ('meta' stands in for a GPU)."""

    def __init__(self) -> None:
        super().__init__(dinv.physics.GaussianNoise(0.1))
        self.register_buffer("stray", torch.empty(3, device="meta"))


def reconstruct(y_of: Callable[[Context], torch.Tensor], physics=denoising, **options):
    """A case calling ``GlowReconstructor(glow, **options)(y, physics)``."""

    def call(ctx: Context) -> None:
        GlowReconstructor(ctx.glow, max_iter=3, **options)(y_of(ctx), physics())

    return call


def fit_call(data: Callable[[], torch.Tensor], *, test=None, run: str | None = None, **kwargs):
    """A case calling ``fit`` on a tiny fresh Glow, in ``run`` (a prepared folder) or a new one."""

    def call(ctx: Context) -> None:
        torch.manual_seed(0)
        out = ctx.file(run) if run else Path(tempfile.mkdtemp(dir=ctx.tmp)) / "out"
        config = TrainConfig(
            iterations=2,
            batch_size=8,
            checkpoint_every=2,
            eval_every=0,
            sample_every=0,
            progress=False,
            device="cpu",
        )
        arguments = {"glow": Glow(**TINY), "config": config, **kwargs}
        fit(arguments["glow"], data(), test() if test else None, out, arguments["config"])

    return call


def zoo(damage: str, device: str = "cpu", name: str = "tiny"):
    """A case loading from a model zoo in a temporary folder, damaged as asked."""

    def call(ctx: Context) -> None:
        folder = ctx.tmp / "zoo" / damage
        folder.mkdir(parents=True, exist_ok=True)
        weights = ctx.glow.save(folder / "tiny.pt")
        entry = {
            "name": "tiny",
            "dataset": "blobs",
            "filename": "tiny.pt",
            "sha256": pretrained._sha256(weights),
            "config": {**ctx.glow.checkpoint_payload()["config"], "img_size": list(IMG)},
            "test_bits_per_dim": 5.0,
            "test_bits_per_content_dim": 5.0,
            "test_images": 8,
            "command": "glowprior train",
            "seed": 0,
            "iterations": 80,
            "train_minutes": 0.1,
        }
        registry = folder / "registry.json"
        registry.write_text(json.dumps({"tiny": entry}))
        if damage == "missing":
            weights.unlink()
        elif damage == "corrupted":
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0xFF
            weights.write_bytes(bytes(data))
        elif damage == "registry":
            registry.write_text('{"tiny": {"name": "tiny", ')
        ctx.monkeypatch.setattr(pretrained, "WEIGHTS_DIR", folder)
        ctx.monkeypatch.setattr(pretrained, "REGISTRY_FILE", registry)
        load_pretrained(name, device=device)

    return call


class CommandFailed(Exception):
    """``glowprior`` exited with status 2 and printed exactly one line, without a traceback."""


def command(*args: str):
    """A case running ``glowprior ARGS`` in-process; ``{files}`` is the prepared folder."""

    def call(ctx: Context) -> None:
        argv = [arg.format(files=ctx.tmp / "files", tmp=ctx.tmp) for arg in args]
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            status = main(argv)
        lines = err.getvalue().strip().splitlines()
        assert status == 2, (status, err.getvalue())
        assert len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
        assert lines[0].startswith(f"glowprior {argv[0]}: error: "), lines[0]
        raise CommandFailed(lines[0])

    return call


def tiny_train_args(out: str, *extra: str) -> tuple[str, ...]:
    return (
        "train",
        *("--dataset", "folder", "--data-dir", "{files}/images", "--image-size", "8", "--grey"),
        *("--levels", "2", "--flow-steps", "2", "--hidden-channels", "8", "--batch-size", "8"),
        *("--iterations", "2", "--device", "cpu", "--threads", "1", "--no-progress"),
        *("--out", out, *extra),
    )


# -- the table of bad inputs ----------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One bad input: ``call(ctx)`` must raise ``error`` with a message matching ``match``."""

    id: str
    entry: str
    bad: str
    error: type[BaseException]
    match: str
    call: Callable[[Context], object]
    needs_no_cuda: bool = False


def rand(*shape: int, **kwargs) -> Callable[[Context], torch.Tensor]:
    return lambda ctx: torch.rand(*shape, **kwargs)


def full(value: float, *shape: int) -> Callable[[Context], torch.Tensor]:
    return lambda ctx: torch.full(shape, value)


def meta(*shape: int) -> Callable[[Context], torch.Tensor]:
    return lambda ctx: torch.empty(*shape, device="meta")


def with_nan(make: Callable[[Context], torch.Tensor]) -> Callable[[Context], torch.Tensor]:
    def bad(ctx: Context) -> torch.Tensor:
        x = make(ctx).clone()
        x.view(-1)[5] = math.nan
        return x

    return bad


def glow_method(name: str, make_input, **kwargs) -> Callable[[Context], object]:
    return lambda ctx: getattr(ctx.glow, name)(make_input(ctx), **kwargs)


def prior_method(name: str, make_input) -> Callable[[Context], object]:
    return lambda ctx: getattr(ctx.prior, name)(make_input(ctx))


def gpu_then(call: Callable[[Context], object]) -> Callable[[Context], object]:
    def run(ctx: Context) -> object:
        on_gpu(ctx)
        return call(ctx)

    return run


def measured(ctx: Context, n: int = 2) -> torch.Tensor:
    return denoising()(ctx.x(n))


# fmt: off
def _forward_on_gpu(ctx: Context) -> None:
    y, model = measured(ctx), GlowReconstructor(ctx.glow, max_iter=3)
    on_gpu(ctx)
    model(y, denoising())


RANGE = r"in \[0, 1\]"
SHAPE = "do not match the physics or the Glow's image size"
BAD_INPUTS: list[Case] = [
    # Glow.encode: the full set of image checks
    Case("encode-rank-3", "Glow.encode", "x of shape (1, 8, 8), no batch dimension", ValueError,
         "4 dimensions .* x.unsqueeze", glow_method("encode", rand(1, 8, 8))),
    Case("encode-channels", "Glow.encode", "x with 3 channels for a 1-channel model", ValueError,
         "3 channels but the model expects 1", glow_method("encode", rand(2, 3, 8, 8))),
    Case("encode-size", "Glow.encode", "x of 16x16 for an 8x8 model", ValueError,
         "spatial size .* resize or crop", glow_method("encode", rand(2, 1, 16, 16))),
    Case("encode-float64", "Glow.encode", "float64 x for a float32 model", TypeError,
         r"convert with x.to\(torch.float32\)",
         glow_method("encode", rand(2, 1, 8, 8, dtype=torch.float64))),
    Case("encode-uint8", "Glow.encode", "8-bit integer images", TypeError, "x.float.. / 255",
         glow_method("encode", lambda ctx: torch.zeros(2, 1, 8, 8, dtype=torch.uint8))),
    Case("encode-nan", "Glow.encode", "one NaN pixel", ValueError, "1 NaN or infinite",
         glow_method("encode", with_nan(rand(2, 1, 8, 8)))),
    Case("encode-inf", "Glow.encode", "all pixels +inf", ValueError, "NaN or infinite",
         glow_method("encode", full(math.inf, 2, 1, 8, 8))),
    Case("encode-above-1", "Glow.encode", "pixels in [0, 255]", ValueError, f"{RANGE}.*/ 255",
         glow_method("encode", lambda ctx: 255 * torch.rand(2, 1, 8, 8))),
    Case("encode-below-0", "Glow.encode", "pixels in [-1, 1]", ValueError, RANGE,
         glow_method("encode", lambda ctx: 2 * torch.rand(2, 1, 8, 8) - 1)),
    Case("encode-empty", "Glow.encode", "empty batch (0, 1, 8, 8)", ValueError, "empty batch",
         glow_method("encode", rand(0, 1, 8, 8))),
    Case("encode-numpy", "Glow.encode", "a NumPy array", TypeError, "must be a torch.Tensor",
         glow_method("encode", lambda ctx: torch.rand(2, 1, 8, 8).numpy())),
    Case("encode-meta-input", "Glow.encode", "x on another device (meta)", ValueError,
         "x is on meta but the model is on cpu", glow_method("encode", meta(2, 1, 8, 8))),
    Case("encode-model-on-gpu", "Glow.encode", "model on cuda:0 (monkeypatched), x on cpu",
         ValueError, r"x is on cpu but the model is on cuda:0; move one of them",
         gpu_then(glow_method("encode", rand(2, 1, 8, 8)))),
    # Glow.decode
    Case("decode-rank-1", "Glow.decode", "z of shape (64,)", ValueError, r"shape \(B, 64\)",
         glow_method("decode", lambda ctx: torch.randn(N))),
    Case("decode-size", "Glow.decode", "z of shape (2, 65)", ValueError, r"shape \(B, 64\)",
         glow_method("decode", lambda ctx: torch.randn(2, N + 1))),
    Case("decode-image", "Glow.decode", "an image batch instead of latents", ValueError,
         r"one flat latent per image", glow_method("decode", rand(2, 1, 8, 8))),
    Case("decode-empty", "Glow.decode", "empty batch (0, 64)", ValueError, "empty batch",
         glow_method("decode", lambda ctx: torch.randn(0, N))),
    Case("decode-nan", "Glow.decode", "one NaN entry", ValueError, "z holds 1 NaN",
         glow_method("decode", with_nan(lambda ctx: torch.randn(2, N)))),
    Case("decode-float64", "Glow.decode", "float64 z", TypeError, "model's parameters",
         glow_method("decode", lambda ctx: torch.randn(2, N, dtype=torch.float64))),
    Case("decode-list", "Glow.decode", "a Python list", TypeError, "must be a torch.Tensor",
         glow_method("decode", lambda ctx: [0.0] * N)),
    Case("decode-meta-input", "Glow.decode", "z on another device (meta)", ValueError,
         "z is on meta but the model is on cpu", glow_method("decode", meta(2, N))),
    # Glow.log_prob, bits_per_dim, sample, initialize
    Case("log-prob-channels", "Glow.log_prob", "x with 3 channels", ValueError, "3 channels",
         glow_method("log_prob", rand(2, 3, 8, 8))),
    Case("log-prob-nan", "Glow.log_prob", "one NaN pixel", ValueError, "NaN or infinite",
         glow_method("log_prob", with_nan(rand(2, 1, 8, 8)))),
    Case("log-prob-above-1", "Glow.log_prob", "pixels in [0, 2]", ValueError, RANGE,
         glow_method("log_prob", lambda ctx: 2 * torch.rand(2, 1, 8, 8))),
    Case("bpd-size", "Glow.bits_per_dim", "x of 8x16", ValueError, "spatial size",
         glow_method("bits_per_dim", rand(2, 1, 8, 16))),
    Case("bpd-int", "Glow.bits_per_dim", "int64 images", TypeError, "floating dtype",
         glow_method("bits_per_dim", lambda ctx: torch.ones(2, 1, 8, 8, dtype=torch.long))),
    Case("bpd-noise-shape", "Glow.bits_per_dim", "noise of another shape", ValueError,
         r"noise must be a tensor of the shape of x.*torch.rand_like",
         glow_method("bits_per_dim", rand(2, 1, 8, 8), noise=torch.rand(3, 1, 8, 8))),
    Case("bpd-noise-range", "Glow.bits_per_dim", "noise outside [0, 1) (Gaussian)", ValueError,
         r"noise must hold uniform values in \[0, 1\)",
         glow_method("bits_per_dim", rand(2, 1, 8, 8), noise=torch.randn(2, 1, 8, 8))),
    Case("sample-zero", "Glow.sample", "num_samples=0", ValueError, "positive int",
         lambda ctx: ctx.glow.sample(0)),
    Case("sample-float-count", "Glow.sample", "num_samples=2.0", ValueError, "positive int",
         lambda ctx: ctx.glow.sample(2.0)),
    Case("sample-negative-temperature", "Glow.sample", "temperature=-1", ValueError,
         "temperature must be a finite number >= 0", lambda ctx: ctx.glow.sample(2, -1.0)),
    Case("sample-nan-temperature", "Glow.sample", "temperature=NaN", ValueError,
         "temperature must be a finite number", lambda ctx: ctx.glow.sample(2, math.nan)),
    Case("initialize-one-image", "Glow.initialize",
         "one image for a model whose coarsest level is 1x1 (no spread for ActNorm)", ValueError,
         "batch of several images",
         lambda ctx: Glow(img_size=(2, 4, 4), levels=2, steps=1, hidden_channels=8).initialize(
             torch.rand(1, 2, 4, 4))),
    Case("initialize-above-1", "Glow.initialize", "pixels in [0, 255]", ValueError, RANGE,
         lambda ctx: Glow(**TINY).initialize(255 * torch.rand(4, 1, 8, 8))),
    Case("initialize-rank", "Glow.initialize", "a single image (1, 8, 8)", ValueError,
         "4 dimensions", lambda ctx: Glow(**TINY).initialize(torch.rand(1, 8, 8))),
    # Glow construction
    Case("glow-indivisible-size", "Glow(...)", "12x12 images with 3 levels", ValueError,
         r"divisible by 2\*\*levels = 8.*pad the images or use fewer levels",
         lambda ctx: Glow(img_size=(1, 12, 12), levels=3)),
    Case("glow-rank-2-size", "Glow(...)", "img_size=(8, 8)", ValueError,
         r"three positive ints \(C, H, W\)", lambda ctx: Glow(img_size=(8, 8))),
    Case("glow-unknown-coupling", "Glow(...)", "coupling='sigmoid'", ValueError,
         "coupling must be one of", lambda ctx: Glow(**TINY, coupling="sigmoid")),
    # Glow.load and Glow.load_weights
    Case("load-missing", "Glow.load", "a path that does not exist", FileNotFoundError,
         "No checkpoint at .* check the path", lambda ctx: Glow.load(ctx.file("nope.pt"))),
    Case("load-folder", "Glow.load", "a folder", FileNotFoundError, "No checkpoint at",
         lambda ctx: Glow.load(ctx.file(""))),
    Case("load-none", "Glow.load", "path=None", TypeError, r"file path \(str or pathlib.Path\)",
         lambda ctx: Glow.load(None)),
    Case("load-truncated", "Glow.load", "the first half of a checkpoint", CheckpointError,
         "truncated, corrupted .* Re-download or re-train",
         lambda ctx: Glow.load(ctx.file("truncated.pt"))),
    Case("load-empty-file", "Glow.load", "an empty file", CheckpointError, "truncated",
         lambda ctx: Glow.load(ctx.file("empty.pt"))),
    Case("load-garbage", "Glow.load", "a text file", CheckpointError, "not a torch checkpoint",
         lambda ctx: Glow.load(ctx.file("garbage.pt"))),
    Case("load-foreign-pickle", "Glow.load", "a torch file holding a list", CheckpointError,
         "not a deepinv-glowprior Glow checkpoint .* Glow.save",
         lambda ctx: Glow.load(ctx.file("list.pt"))),
    Case("load-invalid-config", "Glow.load", "a config with levels=0", CheckpointError,
         "invalid Glow config .*levels", lambda ctx: Glow.load(ctx.file("bad_cfg.pt"))),
    Case("load-unknown-config-key", "Glow.load", "a config with an unknown field", CheckpointError,
         "invalid Glow config .*depth", lambda ctx: Glow.load(ctx.file("new_key.pt"))),
    Case("load-foreign-weights", "Glow.load", "weights of a wider model under this config",
         CheckpointError, "do not fit this architecture",
         lambda ctx: Glow.load(ctx.file("foreign_weights.pt"))),
    Case("load-nan-weights", "Glow.load", "weights holding NaN (a diverged run)", CheckpointError,
         "NaN or infinite values .* earlier checkpoint",
         lambda ctx: Glow.load(ctx.file("nan_weights.pt"))),
    Case("load-unknown-device", "Glow.load", "map_location='gpu0'", ValueError,
         "'gpu0' is not a device; use 'cpu' or 'cuda'",
         lambda ctx: Glow.load(ctx.file("model.pt"), map_location="gpu0")),
    Case("load-cuda-without-cuda", "Glow.load", "map_location='cuda' on a machine without CUDA",
         ValueError, "CUDA is not available here; use 'cpu'",
         lambda ctx: Glow.load(ctx.file("model.pt"), map_location="cuda"), needs_no_cuda=True),
    Case("load-weights-other-width", "Glow.load_weights", "a checkpoint with hidden_channels=16",
         CheckpointError, "saved with hidden_channels=16 .* Glow.load",
         lambda ctx: Glow(**TINY).load_weights(ctx.file("wider.pt"))),
    Case("load-weights-other-size", "Glow.load_weights", "a checkpoint of 16x16 images",
         CheckpointError, r"img_size=\(1, 16, 16\)",
         lambda ctx: Glow(**TINY).load_weights(ctx.file("bigger.pt"))),
    Case("load-weights-truncated", "Glow.load_weights", "a truncated checkpoint",
         CheckpointError, "truncated",
         lambda ctx: Glow(**TINY).load_weights(ctx.file("truncated.pt"))),
    Case("load-weights-int-path", "Glow.load_weights", "path=3", TypeError, "file path",
         lambda ctx: Glow(**TINY).load_weights(3)),
    # GlowPrior
    Case("prior-not-glow", "GlowPrior(...)", "a torch.nn.Linear", TypeError,
         "deepinv_glowprior.Glow", lambda ctx: GlowPrior(torch.nn.Linear(2, 2))),
    Case("prior-untrained", "GlowPrior(...)", "an untrained Glow", ValueError, "untrained",
         lambda ctx: GlowPrior(Glow(**TINY))),
    Case("prior-fn-rank", "GlowPrior.fn", "x of shape (1, 8, 8)", ValueError, "4 dimensions",
         prior_method("fn", rand(1, 8, 8))),
    Case("prior-fn-channels", "GlowPrior.fn", "x with 3 channels", ValueError, "3 channels",
         prior_method("fn", rand(2, 3, 8, 8))),
    Case("prior-fn-float64", "GlowPrior.fn", "float64 x", TypeError, "model's parameters",
         prior_method("fn", rand(2, 1, 8, 8, dtype=torch.float64))),
    Case("prior-fn-nan", "GlowPrior.fn", "one NaN pixel", ValueError, "NaN or infinite",
         prior_method("fn", with_nan(rand(2, 1, 8, 8)))),
    Case("prior-fn-empty", "GlowPrior.fn", "empty batch", ValueError, "empty batch",
         prior_method("fn", rand(0, 1, 8, 8))),
    Case("prior-fn-meta-input", "GlowPrior.fn", "x on another device (meta)", ValueError,
         "x is on meta", prior_method("fn", meta(2, 1, 8, 8))),
    Case("prior-grad-numpy", "GlowPrior.grad", "a NumPy array", TypeError,
         "must be a torch.Tensor",
         prior_method("grad", lambda ctx: torch.rand(2, 1, 8, 8).numpy())),
    Case("prior-grad-size", "GlowPrior.grad", "x of 16x16", ValueError, "spatial size",
         prior_method("grad", rand(2, 1, 16, 16))),
    Case("prior-grad-inf", "GlowPrior.grad", "all pixels -inf", ValueError, "NaN or infinite",
         prior_method("grad", full(-math.inf, 2, 1, 8, 8))),
    # GlowReconstructor construction
    Case("rec-negative-gamma", "GlowReconstructor(...)", "gamma=-0.1", ValueError,
         "gamma must be >= 0", lambda ctx: GlowReconstructor(ctx.glow, gamma=-0.1)),
    Case("rec-nan-gamma", "GlowReconstructor(...)", "gamma=NaN", ValueError,
         "gamma must be finite", lambda ctx: GlowReconstructor(ctx.glow, gamma=math.nan)),
    Case("rec-inf-gamma", "GlowReconstructor(...)", "gamma=inf", ValueError,
         "gamma must be finite", lambda ctx: GlowReconstructor(ctx.glow, gamma=math.inf)),
    Case("rec-string-gamma", "GlowReconstructor(...)", "gamma='large'", TypeError,
         "gamma must be a number", lambda ctx: GlowReconstructor(ctx.glow, gamma="large")),
    Case("rec-bool-gamma", "GlowReconstructor(...)", "gamma=True", TypeError,
         "gamma must be a number", lambda ctx: GlowReconstructor(ctx.glow, gamma=True)),
    Case("rec-zero-lr", "GlowReconstructor(...)", "lr=0", ValueError, "lr must be > 0",
         lambda ctx: GlowReconstructor(ctx.glow, lr=0.0)),
    Case("rec-nan-lr", "GlowReconstructor(...)", "lr=NaN", ValueError, "lr must be finite",
         lambda ctx: GlowReconstructor(ctx.glow, lr=math.nan)),
    Case("rec-zero-max-iter", "GlowReconstructor(...)", "max_iter=0", ValueError,
         "max_iter must be a positive int", lambda ctx: GlowReconstructor(ctx.glow, max_iter=0)),
    Case("rec-bool-max-iter", "GlowReconstructor(...)", "max_iter=True", ValueError,
         "max_iter must be a positive int", lambda ctx: GlowReconstructor(ctx.glow, max_iter=True)),
    Case("rec-zero-restarts", "GlowReconstructor(...)", "restarts=0", ValueError,
         "restarts must be a positive int", lambda ctx: GlowReconstructor(ctx.glow, restarts=0)),
    Case("rec-string-seed", "GlowReconstructor(...)", "seed='a'", TypeError,
         "seed must be an int", lambda ctx: GlowReconstructor(ctx.glow, seed="a")),
    Case("rec-unknown-regularizer", "GlowReconstructor(...)", "regularizer='l1'", ValueError,
         "regularizer must be one of", lambda ctx: GlowReconstructor(ctx.glow, regularizer="l1")),
    Case("rec-unknown-optimizer", "GlowReconstructor(...)", "optimizer='sgd'", ValueError,
         "optimizer must be one of", lambda ctx: GlowReconstructor(ctx.glow, optimizer="sgd")),
    Case("rec-unknown-init", "GlowReconstructor(...)", "init='ones'", ValueError,
         "init must be one of", lambda ctx: GlowReconstructor(ctx.glow, init="ones")),
    Case("rec-negative-max-step", "GlowReconstructor(...)", "max_step=-1", ValueError,
         "max_step must be > 0", lambda ctx: GlowReconstructor(ctx.glow, max_step=-1.0)),
    Case("rec-negative-gamma-grid", "GlowReconstructor(...)", "gamma_grid=(1, -1)", ValueError,
         "gamma_grid must hold finite numbers >= 0",
         lambda ctx: GlowReconstructor(ctx.glow, gamma_grid=(1.0, -1.0))),
    Case("rec-string-gamma-grid", "GlowReconstructor(...)", "gamma_grid='abc'", TypeError,
         "gamma_grid must be a sequence of numbers",
         lambda ctx: GlowReconstructor(ctx.glow, gamma_grid="abc")),
    Case("rec-untrained", "GlowReconstructor(...)", "an untrained Glow", ValueError,
         "untrained .* load_pretrained", lambda ctx: GlowReconstructor(Glow(**TINY))),
    Case("rec-not-glow", "GlowReconstructor(...)", "a torch.nn.Linear", TypeError,
         "deepinv_glowprior.Glow", lambda ctx: GlowReconstructor(torch.nn.Linear(2, 2))),
    Case("rec-unknown-preset-task", "GlowReconstructor.from_preset", "task='deblur'", ValueError,
         "task must be one of", lambda ctx: GlowReconstructor.from_preset(ctx.glow, task="deblur")),
    # GlowReconstructor.forward / solve
    Case("forward-numpy-y", "GlowReconstructor.forward", "y as a NumPy array", TypeError,
         "y must be a torch.Tensor", reconstruct(lambda ctx: measured(ctx).numpy())),
    Case("forward-empty-y", "GlowReconstructor.forward", "empty batch y (0, 1, 8, 8)",
         ValueError, "non-empty batch", reconstruct(rand(0, 1, 8, 8))),
    Case("forward-rank-1-y", "GlowReconstructor.forward", "y of shape (64,)", ValueError,
         "non-empty batch", reconstruct(rand(N))),
    Case("forward-rank-3-y", "GlowReconstructor.forward", "y of shape (1, 8, 8)", ValueError,
         rf"\(B, 1, 8, 8\); the measurements {SHAPE}", reconstruct(lambda ctx: measured(ctx)[0])),
    Case("forward-nan-y", "GlowReconstructor.forward", "y with one NaN", ValueError,
         "y holds 1 NaN or infinite", reconstruct(with_nan(measured))),
    Case("forward-inf-y", "GlowReconstructor.forward", "y of +inf", ValueError,
         "y holds 128 NaN or infinite", reconstruct(full(math.inf, 2, 1, 8, 8))),
    Case("forward-float64-y", "GlowReconstructor.forward", "float64 y, float32 model", TypeError,
         r"y has dtype torch.float64 .* y.to\(torch.float32\)",
         reconstruct(lambda ctx: measured(ctx).double())),
    Case("forward-uint8-y", "GlowReconstructor.forward", "8-bit integer y", TypeError,
         "floating dtype", reconstruct(lambda ctx: (255 * measured(ctx)).to(torch.uint8))),
    Case("forward-meta-y", "GlowReconstructor.forward", "y on another device (meta)", ValueError,
         "y is on meta but the model is on cpu", reconstruct(meta(2, 1, 8, 8))),
    Case("forward-meta-physics", "GlowReconstructor.forward",
         "physics holding a tensor on another device (meta)", ValueError,
         r"physics holds tensors on meta .* physics.to\('cpu'\)",
         reconstruct(measured, physics=_DenoisingWithStrayBuffer)),
    Case("forward-model-on-gpu", "GlowReconstructor.forward",
         "model on cuda:0 (monkeypatched), y and physics on cpu", ValueError,
         "y is on cpu but the model is on cuda:0", lambda ctx: _forward_on_gpu(ctx)),
    Case("forward-physics-other-size", "GlowReconstructor.forward",
         "CS physics built for 16x16 images, model of 8x8", ValueError,
         r"Glow's image size|Build the physics",
         reconstruct(lambda ctx: torch.randn(2, 64),
                     physics=lambda: compressed_sensing(64, img_size=(1, 16, 16)))),
    Case("forward-y-of-other-physics", "GlowReconstructor.forward",
         "y of a CS with m=16 given with a CS of m=32", ValueError, SHAPE,
         reconstruct(lambda ctx: compressed_sensing(16)(ctx.x()),
                     physics=lambda: compressed_sensing(32))),
    Case("forward-denoising-other-size", "GlowReconstructor.forward",
         "16x16 y for denoising with an 8x8 model", ValueError, SHAPE,
         reconstruct(rand(2, 1, 16, 16))),
    Case("forward-not-physics", "GlowReconstructor.forward", "physics=object()", TypeError,
         "deepinv Physics with an A method", reconstruct(measured, physics=object)),
    Case("forward-auto-without-noise", "GlowReconstructor.forward",
         "gamma='auto' with a noiseless physics (ZeroNoise)", ValueError,
         "needs a Gaussian noise level.*ZeroNoise",
         reconstruct(measured, gamma="auto",
                     physics=lambda: dinv.physics.Denoising(dinv.physics.ZeroNoise()))),
    Case("forward-auto-zero-noise", "GlowReconstructor.forward",
         "gamma='auto' with sigma=0", ValueError, "noise level > 0",
         reconstruct(measured, physics=lambda: denoising(0.0), gamma="auto")),
    Case("forward-init-shape", "GlowReconstructor.forward", "init latent of shape (3, 64)",
         ValueError, r"init must give latents of shape \(2, 64\)",
         reconstruct(measured, init=torch.zeros(3, N))),
    Case("forward-init-nan", "GlowReconstructor.forward", "init latent holding NaN",
         ValueError, "init holds", reconstruct(measured, init=torch.full((N,), math.nan))),
    Case("forward-warm-start-size", "GlowReconstructor.forward",
         "init a reconstructor returning 4x4 images for an 8x8 Glow", ValueError,
         r"init \(_QuarterSizeImages\) must return one image of the Glow's size",
         reconstruct(measured, init=_QuarterSizeImages())),
    # tasks.make_physics
    Case("physics-unknown-task", "tasks.make_physics", "task='deblur'", ValueError,
         "task must be 'cs', 'denoising' or 'inpainting'",
         lambda ctx: make_physics("deblur", IMG)),
    Case("physics-negative-sigma", "tasks.make_physics", "denoising sigma=-0.1", ValueError,
         "sigma must be >= 0", lambda ctx: make_physics("denoising", IMG, sigma=-0.1)),
    Case("physics-nan-sigma", "tasks.make_physics", "denoising sigma=NaN", ValueError,
         "sigma must be finite", lambda ctx: make_physics("denoising", IMG, sigma=math.nan)),
    Case("physics-inf-sigma", "tasks.make_physics", "denoising sigma=inf", ValueError,
         "sigma must be finite", lambda ctx: make_physics("denoising", IMG, sigma=math.inf)),
    Case("physics-string-sigma", "tasks.make_physics", "denoising sigma='0.1'", TypeError,
         "sigma must be a number", lambda ctx: make_physics("denoising", IMG, sigma="0.1")),
    Case("physics-inpainting-negative-sigma", "tasks.make_physics", "inpainting sigma=-1",
         ValueError, "sigma must be >= 0",
         lambda ctx: make_physics("inpainting", IMG, sigma=-1.0)),
    Case("physics-inpainting-hole", "tasks.make_physics", "inpainting side_fraction=1.5",
         ValueError, r"side_fraction must be in \(0, 1\)",
         lambda ctx: make_physics("inpainting", IMG, side_fraction=1.5)),
    Case("physics-cs-negative-noise", "tasks.make_physics", "cs noise_norm=-1", ValueError,
         "noise_norm must be >= 0",
         lambda ctx: make_physics("cs", IMG, ratio=0.5, noise_norm=-1.0)),
    Case("physics-cs-nan-noise", "tasks.make_physics", "cs noise_norm=NaN", ValueError,
         "noise_norm must be finite",
         lambda ctx: make_physics("cs", IMG, ratio=0.5, noise_norm=math.nan)),
    Case("physics-cs-ratio-zero", "tasks.make_physics", "cs ratio=0", ValueError,
         r"ratio m/n must be in \(0, 1\]", lambda ctx: make_physics("cs", IMG, ratio=0.0)),
    Case("physics-cs-ratio-above-1", "tasks.make_physics", "cs ratio=1.5", ValueError,
         r"ratio m/n must be in \(0, 1\]", lambda ctx: make_physics("cs", IMG, ratio=1.5)),
    Case("physics-cs-no-ratio", "tasks.make_physics", "cs without ratio", TypeError,
         r"needs \['ratio'\]", lambda ctx: make_physics("cs", IMG)),
    Case("physics-cs-integer-dtype", "tasks.compressed_sensing", "dtype=torch.int64", ValueError,
         "dtype must be a floating torch.dtype",
         lambda ctx: cs_physics(IMG, ratio=0.5, dtype=torch.int64)),
    Case("physics-unknown-setting", "tasks.make_physics", "cs with sigma=0.1", TypeError,
         r"takes ratio, noise_norm and got unknown \['sigma'\]",
         lambda ctx: make_physics("cs", IMG, ratio=0.5, sigma=0.1)),
    Case("physics-rank-2-size", "tasks.make_physics", "img_size=(8, 8)", ValueError,
         "img_size must be three positive ints", lambda ctx: make_physics("cs", (8, 8), ratio=1)),
    Case("physics-unknown-device", "tasks.make_physics", "device='gpu0'", ValueError,
         "not a device", lambda ctx: make_physics("denoising", IMG, device="gpu0", sigma=0.1)),
    # the model zoo
    Case("zoo-unknown-name", "load_pretrained", "name='nope'", KeyError,
         "Unknown pretrained model 'nope'; available: tiny", zoo("none", name="nope")),
    Case("zoo-card-unknown-name", "model_card", "name='imagenet'", KeyError,
         "Unknown pretrained model 'imagenet'", lambda ctx: model_card("imagenet")),
    Case("zoo-name-not-string", "load_pretrained", "name=None", TypeError,
         "name must be a model name", lambda ctx: load_pretrained(None)),
    Case("zoo-missing-weights", "load_pretrained", "registry entry whose file is gone",
         FileNotFoundError, "missing .* reinstall the package", zoo("missing")),
    Case("zoo-corrupted-weights", "load_pretrained", "weights with one flipped byte", OSError,
         r"corrupted \(sha256 .* reinstall", zoo("corrupted")),
    Case("zoo-damaged-registry", "load_pretrained", "a truncated registry.json", ValueError,
         "registry .* is damaged", zoo("registry")),
    Case("zoo-unknown-device", "load_pretrained", "device='tpu'", ValueError,
         "not a device", zoo("none", device="tpu")),
    Case("zoo-cuda-without-cuda", "load_pretrained", "device='cuda' without CUDA", ValueError,
         "CUDA is not available here", zoo("none", device="cuda"), needs_no_cuda=True),
    Case("export-missing-run", "export_run", "a run folder that does not exist",
         FileNotFoundError, "does not exist; pass the --out folder",
         lambda ctx: export_run(ctx.file("missing_run"), "x", "mnist", None)),
    Case("export-unfinished-run", "export_run", "a run with a checkpoint but no model.pt",
         FileNotFoundError, "training has not finished. Run the same",
         lambda ctx: export_run(ctx.file("unfinished_run"), "x", "mnist", None)),
    Case("export-incomplete-run", "export_run", "a run without log.jsonl and samples",
         FileNotFoundError, "lacks log.jsonl, samples_final.png",
         lambda ctx: export_run(ctx.file("run_without_log"), "x", "mnist", None)),
    Case("export-bad-name", "export_run", "name='../evil'", ValueError,
         "letters, digits.*names the weights file",
         lambda ctx: export_run(ctx.file("run_without_log"), "../evil", "mnist", None)),
    # training settings and data
    Case("config-zero-iterations", "TrainConfig", "iterations=0", ValueError,
         "iterations must be a positive int", lambda ctx: TrainConfig(iterations=0)),
    Case("config-float-batch", "TrainConfig", "batch_size=1.5", ValueError,
         "batch_size must be a positive int", lambda ctx: TrainConfig(batch_size=1.5)),
    Case("config-nan-lr", "TrainConfig", "lr=NaN", ValueError, "lr must be a finite number",
         lambda ctx: TrainConfig(lr=math.nan)),
    Case("config-negative-lr", "TrainConfig", "lr=-1", ValueError, "lr must be a finite number",
         lambda ctx: TrainConfig(lr=-1.0)),
    Case("config-zero-lr", "TrainConfig", "lr=0", ValueError, "must be > 0",
         lambda ctx: TrainConfig(lr=0.0)),
    Case("config-unknown-optimizer", "TrainConfig", "optimizer='sgd'", ValueError,
         "'adam' or 'adamax'", lambda ctx: TrainConfig(optimizer="sgd")),
    Case("config-unknown-device", "TrainConfig", "device='tpu'", ValueError,
         "'auto', 'cpu' or 'cuda'", lambda ctx: TrainConfig(device="tpu")),
    Case("config-string-progress", "TrainConfig", "progress='no'", TypeError,
         "progress must be True or False", lambda ctx: TrainConfig(progress="no")),
    Case("fit-not-glow", "fit", "glow=None", TypeError, "glow must be a deepinv_glowprior.Glow",
         fit_call(lambda: torch.rand(16, 1, 8, 8), glow=None)),
    Case("fit-config-dict", "fit", "config as a dict", TypeError,
         r"config must be a TrainConfig.*TrainConfig\(\*\*settings\)",
         fit_call(lambda: torch.rand(16, 1, 8, 8), config={"iterations": 2})),
    Case("fit-empty-data", "fit", "an empty training set", ValueError, "train_set is empty",
         fit_call(lambda: torch.rand(0, 1, 8, 8))),
    Case("fit-smaller-than-batch", "fit", "4 images for a batch of 8", ValueError,
         "fewer than one batch of 8; use a smaller batch_size",
         fit_call(lambda: torch.rand(4, 1, 8, 8))),
    Case("fit-channels", "fit", "3-channel images for a 1-channel model", ValueError,
         r"train_set\[0\] has 3 channels", fit_call(lambda: torch.rand(16, 3, 8, 8))),
    Case("fit-rank", "fit", "items of shape (8, 8), no channel axis", ValueError,
         r"image tensor \(C, H, W\)", fit_call(lambda: torch.rand(16, 8, 8))),
    Case("fit-above-1", "fit", "pixels in [0, 255]", ValueError, f"{RANGE}.*/ 255",
         fit_call(lambda: 255 * torch.rand(16, 1, 8, 8))),
    Case("fit-uint8", "fit", "8-bit integer images", TypeError, "floating dtype",
         fit_call(lambda: torch.zeros(16, 1, 8, 8, dtype=torch.uint8))),
    Case("fit-nan", "fit", "NaN images", ValueError, "NaN or infinite",
         fit_call(lambda: torch.full((16, 1, 8, 8), math.nan))),
    Case("fit-test-set-size", "fit", "test images of 16x16", ValueError,
         r"test_set\[0\] has spatial size",
         fit_call(lambda: torch.rand(16, 1, 8, 8), test=lambda: torch.rand(4, 1, 16, 16))),
    Case("fit-empty-test-set", "fit", "an empty test set", ValueError,
         "test_set is empty .*pass None",
         fit_call(lambda: torch.rand(16, 1, 8, 8), test=lambda: torch.rand(0, 1, 8, 8))),
    Case("fit-corrupted-checkpoint", "fit", "a truncated checkpoint.pt to resume from",
         CheckpointError, "truncated.*To resume nothing, delete it.*--no-resume",
         fit_call(lambda: torch.rand(16, 1, 8, 8), run="corrupt_run")),
    Case("fit-foreign-checkpoint", "fit", "a Glow.save file as checkpoint.pt", CheckpointError,
         "not a training checkpoint .* another --out",
         fit_call(lambda: torch.rand(16, 1, 8, 8), run="foreign_run")),
    # the command line: exit status 2 and one line on stderr, never a traceback
    Case("cli-demo-unknown-model", "glowprior demo", "--model nope", CommandFailed,
         "^glowprior demo: error: Unknown pretrained model 'nope'; available:",
         command("demo", "--model", "nope", "--out", "{tmp}/demo.png")),
    Case("cli-demo-no-images", "glowprior demo", "--num-images 0", CommandFailed,
         "--num-images must be >= 1", command("demo", "--num-images", "0")),
    Case("cli-export-missing-run", "glowprior export", "a run folder that does not exist",
         CommandFailed, "export: error: Run folder .* does not exist",
         command("export", "{tmp}/missing", "--name", "x", "--dataset", "mnist")),
    Case("cli-export-unfinished-run", "glowprior export", "a run that has not finished",
         CommandFailed, "training has not finished",
         command("export", "{files}/unfinished_run", "--name", "x", "--dataset", "mnist")),
    Case("cli-export-bad-name", "glowprior export", "--name ../evil", CommandFailed,
         "name must be letters",
         command("export", "{files}/run_without_log", "--name", "../evil", "--dataset", "mnist")),
    Case("cli-train-corrupted-checkpoint", "glowprior train",
         "--out holding a truncated checkpoint.pt", CommandFailed,
         "train: error: Could not read checkpoint .*--no-resume",
         command(*tiny_train_args("{files}/corrupt_run"))),
    Case("cli-train-negative-lr", "glowprior train", "--lr -1", CommandFailed,
         "lr must be a finite number >= 0",
         command(*tiny_train_args("{tmp}/cli_lr", "--lr", "-1"))),
]
# fmt: on


def _run_case(case: Case, ctx: Context) -> BaseException:
    with pytest.raises(case.error) as info:
        case.call(ctx)
    return info.value


def _message(error: BaseException) -> str:
    """The one line a user reads (KeyError quotes its message; strip that)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


def test_case_ids_are_unique():
    ids = [case.id for case in BAD_INPUTS]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9-]+", case_id) for case_id in ids)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.id for case in BAD_INPUTS])
def test_bad_input(case: Case, ctx: Context):
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    error = _run_case(case, ctx)
    assert type(error) is case.error, type(error)
    message = _message(error)
    assert re.search(case.match, message), message
    assert "Traceback" not in message and len(message) < 500, message


def test_user_error_of_the_installed_command_has_no_traceback(tmp_path):
    """``glowprior demo --model nope`` as a user types it: exit 2, one line, no traceback."""
    script = Path(sys.executable).with_name("glowprior")
    prefix = [str(script)] if script.is_file() else [sys.executable, "-m", "deepinv_glowprior.cli"]
    result = subprocess.run(
        [*prefix, "demo", "--model", "nope"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr  # one line
    assert result.stderr.startswith("glowprior demo: error: Unknown pretrained model 'nope'")
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not any(tmp_path.iterdir())  # nothing was created for a command that cannot run


# -- accepted edge cases --------------------------------------------------------------------------
@dataclass(frozen=True)
class Accepted:
    """An unusual but valid input: ``check(ctx)`` runs it and asserts the result."""

    id: str
    entry: str
    input: str
    behaviour: str
    check: Callable[[Context], None]


def _batch_of_one_glow(ctx: Context) -> None:
    x = ctx.x(3)
    z, logdet = ctx.glow.encode(x)
    z1, logdet1 = ctx.glow.encode(x[1:2])
    torch.testing.assert_close(z1, z[1:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(logdet1, logdet[1:2], atol=1e-4, rtol=0)
    torch.testing.assert_close(ctx.glow.decode(z1), x[1:2], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        ctx.glow.log_prob(x[1:2]), ctx.glow.log_prob(x)[1:2], atol=1e-3, rtol=0
    )
    assert ctx.glow.bits_per_dim(x[1:2], dequantize=False).shape == (1,)
    assert ctx.glow.sample(1).shape == (1, *IMG)


def _batch_of_one_prior(ctx: Context) -> None:
    x = ctx.x(3)
    torch.testing.assert_close(ctx.prior.fn(x[:1]), ctx.prior.fn(x)[:1], atol=1e-3, rtol=0)
    assert ctx.prior.grad(x[:1]).shape == (1, *IMG)


def _batch_of_one_reconstructor(ctx: Context) -> None:
    physics = denoising()
    y = physics(ctx.x(1))
    x_hat = GlowReconstructor(ctx.glow, gamma=0.01, max_iter=20)(y, physics)
    assert x_hat.shape == (1, *IMG) and bool(torch.isfinite(x_hat).all())


def _initialize_from_one_image(ctx: Context) -> None:
    glow = Glow(**TINY).initialize(ctx.x(1))  # the coarsest level is 2x2: four values a channel
    assert glow.is_initialized
    z, logdet = glow.encode(ctx.x(2))
    assert bool(torch.isfinite(z).all() and torch.isfinite(logdet).all())


def _prior_off_range(ctx: Context) -> None:
    x = ctx.x(2) * 1.2 - 0.1  # iterates of pixel-space solvers leave the box
    assert bool(torch.isfinite(ctx.prior.fn(x)).all())
    assert bool(torch.isfinite(ctx.prior.grad(x)).all())


def _encode_off_range_on_request(ctx: Context) -> None:
    z, _ = ctx.glow.encode(ctx.x(2) + 0.5, check_range=False)
    assert bool(torch.isfinite(z).all())


def _training_checkpoint_loads(ctx: Context) -> None:
    out = ctx.tmp / "accepted_fit"
    fit(
        train_tiny_glow(steps=0),
        blob_images(16),
        None,
        out,
        TrainConfig(
            iterations=2,
            batch_size=8,
            checkpoint_every=2,
            eval_every=0,
            sample_every=0,
            progress=False,
            device="cpu",
        ),
    )
    assert Glow.load(out / "checkpoint.pt").is_initialized


def _noiseless_physics(ctx: Context) -> None:
    physics = make_physics("denoising", IMG, sigma=0.0)
    y = physics(ctx.x(2))
    x_hat = GlowReconstructor(ctx.glow, max_iter=5)(y, physics)
    assert bool(torch.isfinite(x_hat).all())


def _y_requiring_grad_under_no_grad(ctx: Context) -> None:
    physics = denoising()
    y = physics(ctx.x(2)).requires_grad_(True)
    with torch.no_grad():
        x_hat = GlowReconstructor(ctx.glow, gamma=0.01, max_iter=5)(y, physics)
    assert not x_hat.requires_grad and y.grad is None


# fmt: off
ACCEPTED: list[Accepted] = [
    Accepted("batch-of-one-glow", "Glow.encode / decode / log_prob / bits_per_dim / sample",
             "a batch of one image", "same values as inside a larger batch", _batch_of_one_glow),
    Accepted("batch-of-one-prior", "GlowPrior.fn / grad", "a batch of one image",
             "same value as inside a larger batch", _batch_of_one_prior),
    Accepted("batch-of-one-reconstructor", "GlowReconstructor.forward",
             "a batch of one measurement", "finite (1, C, H, W) result",
             _batch_of_one_reconstructor),
    Accepted("initialize-one-image", "Glow.initialize", "one image, coarsest level 2x2",
             "initialises ActNorm (several values per channel)", _initialize_from_one_image),
    Accepted("prior-off-range", "GlowPrior.fn / grad", "pixels in [-0.1, 1.1]",
             "finite values: solver iterates may leave [0, 1]", _prior_off_range),
    Accepted("encode-check-range-off", "Glow.encode", "pixels in [0.5, 1.5], check_range=False",
             "finite latents (for round trips such as encode(decode(z)))",
             _encode_off_range_on_request),
    Accepted("load-training-checkpoint", "Glow.load", "a training checkpoint.pt",
             "loads the Glow inside it", _training_checkpoint_loads),
    Accepted("noiseless-physics", "GlowReconstructor.forward", "make_physics sigma=0",
             "finite result", _noiseless_physics),
    Accepted("y-requires-grad-no-grad", "GlowReconstructor.forward",
             "y requiring grad, called under torch.no_grad()",
             "solves anyway; result and y carry no graph", _y_requiring_grad_under_no_grad),
]
# fmt: on


@pytest.mark.parametrize("case", ACCEPTED, ids=[case.id for case in ACCEPTED])
def test_accepted_edge_case(case: Accepted, ctx: Context):
    case.check(ctx)


# -- property-based tests -------------------------------------------------------------------------
SHAPES = st.sampled_from([(h, levels) for h in (4, 8, 16) for levels in (1, 2)])


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    channels=st.integers(1, 3),
    shape=SHAPES,
    batch=st.integers(1, 4),
    steps=st.integers(1, 2),
    coupling=st.sampled_from(["affine", "additive"]),
    seed=st.integers(0, 2**16),
)
def test_property_invertible_finite_and_batch_consistent(
    channels, shape, batch, steps, coupling, seed
):
    size, levels = shape
    torch.manual_seed(seed)
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        glow = Glow(
            img_size=(channels, size, size),
            levels=levels,
            steps=steps,
            hidden_channels=8,
            coupling=coupling,
        )
        glow.initialize(torch.rand(4, channels, size, size))
        with torch.no_grad():  # move the couplings away from the identity they start at
            for parameter in glow.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        x = torch.rand(batch, channels, size, size)
        z, logdet = glow.encode(x)
        assert z.shape == (batch, channels * size * size) and logdet.shape == (batch,)
        assert bool(torch.isfinite(z).all() and torch.isfinite(logdet).all())
        torch.testing.assert_close(glow.decode(z), x, atol=2e-4, rtol=0)
        single, single_logdet = glow.encode(x[-1:])
        torch.testing.assert_close(single, z[-1:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single_logdet, logdet[-1:], atol=1e-3, rtol=1e-5)
        assert bool(torch.isfinite(glow.log_prob(x)).all())
        assert bool(torch.isfinite(glow.sample(batch, temperature=1.0)).all())


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 4),
    lift=st.floats(-0.2, 0.2),
    scale=st.floats(0.5, 1.2),
)
def test_property_prior_is_finite(base_context, batch, lift, scale):
    """GlowPrior value and gradient are finite on images around [0, 1], of any batch size."""
    with quiet():
        x = (base_context.x(batch) * scale + lift).clamp(-0.2, 1.2)
        value, gradient = base_context.prior.fn(x), base_context.prior.grad(x)
    assert value.shape == (batch,) and gradient.shape == x.shape
    assert bool(torch.isfinite(value).all() and torch.isfinite(gradient).all())


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    task=st.sampled_from(["cs", "inpainting", "denoising"]),
    ratio=st.floats(0.02, 1.0),
    hole=st.floats(0.1, 0.9),
    sigma=st.floats(0.0, 0.5),
    gamma=st.sampled_from([0.0, 0.01, 1.0]),
    batch=st.integers(1, 3),
    max_iter=st.integers(1, 6),
    seed=st.integers(0, 1000),
)
def test_property_reconstructions_are_finite_images(
    base_context, task, ratio, hole, sigma, gamma, batch, max_iter, seed
):
    settings_of = {
        "cs": {"ratio": ratio, "noise_norm": sigma},
        "inpainting": {"side_fraction": hole, "sigma": sigma},
        "denoising": {"sigma": sigma},
    }
    physics = make_physics(task, IMG, seed=seed, **settings_of[task])
    torch.manual_seed(seed)
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # few measurements etc. may warn
        y = physics(base_context.x(batch))
        x_hat = GlowReconstructor(base_context.glow, gamma=gamma, max_iter=max_iter)(y, physics)
    assert x_hat.shape == (batch, *IMG)
    assert bool(torch.isfinite(x_hat).all())
    assert float(x_hat.min()) >= 0 and float(x_hat.max()) <= 1


# -- numerical faults: finite results and a warning that says what happened -----------------------
@dataclass(frozen=True)
class Fault:
    """A numerically hostile setting: finite results, and a warning matching ``match``."""

    id: str
    setting: str
    match: str
    make: Callable[[Context], tuple[dict, torch.Tensor, dinv.physics.Physics]]


class _SquareRoot(dinv.physics.Physics):
    """A nonlinear forward model, ``A(x) = sqrt(x)``, NaN for negative pixels."""

    def A(self, x, **kwargs):
        return torch.sqrt(x)


def _scaled_y(ctx: Context):
    physics = denoising()
    return {"gamma": 0.01, "max_iter": 60}, 1e3 * physics(ctx.x()), physics


def _too_bright(ctx: Context):
    physics = compressed_sensing(64)  # m = n: G(z) can fit y exactly
    return {}, physics(ctx.x() + 1.2), physics


def _one_measurement(ctx: Context):
    physics = compressed_sensing(1)
    return {"gamma": 0.01}, physics(ctx.x()), physics


def _huge_gamma(ctx: Context):
    physics = denoising()
    return {"gamma": 1e8}, physics(ctx.x()), physics


def _huge_lr(ctx: Context):
    physics = denoising()
    return {"gamma": 0.01, "lr": 1e6, "max_iter": 30}, physics(ctx.x()), physics


def _huge_adam_lr(ctx: Context):
    physics = denoising()
    return (
        {"gamma": 0.01, "lr": 1e6, "optimizer": "adam", "max_iter": 60},
        physics(ctx.x()),
        physics,
    )


def _nan_physics(ctx: Context):
    physics = _SquareRoot()
    return {"gamma": 0.0, "max_iter": 30}, physics.A((ctx.x() - 0.3).clamp(0, 1)), physics


# fmt: off
FAULTS: list[Fault] = [
    Fault("y-times-1e3", "denoising y scaled by 1e3 (8-bit scale)",
          r"Before clamping to \[0, 1\].*Check the scale of y", _scaled_y),
    Fault("cs-images-above-1", "compressed sensing (m = n) of images in [1.2, 1.4]",
          r"fit y only through pixels of G\(z\) outside \[0, 1\]", _too_bright),
    Fault("cs-one-measurement", "compressed sensing with m = 1 (n = 64)",
          r"m=1 value\(s\) per image for n=64 pixels", _one_measurement),
    Fault("gamma-1e8", "gamma = 1e8",
          "did not decrease from its starting value.*gamma=1e\\+08 probably outweighs",
          _huge_gamma),
    Fault("lr-1e6", "L-BFGS with lr = 1e6", "times shorter than lr=1e\\+06.*far too large",
          _huge_lr),
    Fault("adam-lr-1e6", "Adam with lr = 1e6",
          "did not decrease from its starting value.*lr=1e\\+06 is probably far too large",
          _huge_adam_lr),
    Fault("physics-nan-off-range", "A(x) = sqrt(x): NaN where G(z) < 0",
          r"trial points \(\d+%\) gave a non-finite objective", _nan_physics),
]
# fmt: on


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.id for fault in FAULTS])
def test_numerical_fault_is_finite_and_warns(fault: Fault, ctx: Context):
    options, y, physics = fault.make(ctx)
    with pytest.warns(UserWarning, match=fault.match):
        solution = GlowReconstructor(ctx.glow, **options).solve(y, physics)
    assert solution.x.shape == (len(y), *IMG)
    for tensor in (solution.x, solution.z, solution.objective, solution.residual):
        assert bool(torch.isfinite(tensor).all())
    assert float(solution.x.min()) >= 0 and float(solution.x.max()) <= 1


WELL_POSED = {
    "denoising": (lambda: denoising(0.1), {"gamma": 0.01}),
    "denoising-auto": (lambda: denoising(0.1), {"gamma": "auto"}),
    "cs-half": (lambda: compressed_sensing(32), {}),
    "inpainting": (lambda: make_physics("inpainting", IMG, side_fraction=0.3, sigma=0.01), {}),
    "random-restarts": (lambda: denoising(0.05), {"gamma": 0.01, "init": "random", "restarts": 2}),
    "adam": (lambda: denoising(0.1), {"gamma": 0.01, "optimizer": "adam", "max_iter": 300}),
    "paper-cs": (lambda: compressed_sensing(16), {"preset": "cs"}),
}


@pytest.mark.parametrize("name", list(WELL_POSED))
def test_well_posed_problems_do_not_warn(name: str, base_context: Context):
    make_physics_of, options = WELL_POSED[name]
    physics = make_physics_of()
    y = physics(base_context.x(3))
    glow = base_context.glow
    if "preset" in options:
        model = GlowReconstructor.from_preset(glow, task=options["preset"])
    else:
        model = GlowReconstructor(glow, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for message in TORCH_CHATTER:
            warnings.filterwarnings("ignore", message=message)
        x_hat = model(y, physics)
    assert bool(torch.isfinite(x_hat).all())


def test_training_with_a_huge_learning_rate_warns_and_stays_finite(tmp_path):
    """lr = 1e6: the first step blows the weights up, later losses are NaN; the updates are
    skipped with a warning, the weights stay finite, and the run still ends with a model."""
    torch.manual_seed(0)
    glow = Glow(**TINY)
    config = TrainConfig(
        iterations=6,
        batch_size=8,
        lr=1e6,
        warmup=0,
        checkpoint_every=3,
        eval_every=0,
        sample_every=3,
        progress=False,
        device="cpu",
    )
    with pytest.warns(UserWarning) as caught:
        fit(glow, blob_images(16), None, tmp_path, config)
    messages = [str(w.message) for w in caught]
    assert any("not finite, so the update was skipped" in m for m in messages), messages
    assert any("steps were skipped" in m and "diverged" in m for m in messages), messages
    assert all(bool(torch.isfinite(p).all()) for p in glow.parameters())
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "checkpoint.pt").is_file()


# -- determinism ----------------------------------------------------------------------------------
def test_same_seed_same_reconstruction_bit_for_bit(base_context: Context):
    """Random initialisation with restarts, twice with the same seed: identical on CPU.
    (Training twice with one seed is checked bit for bit in test_train.py.)"""
    physics = denoising()
    y = physics(base_context.x(3))

    def solve(seed: int):
        model = GlowReconstructor(
            base_context.glow,
            gamma=0.01,
            init="random",
            restarts=2,
            init_std=0.5,
            max_iter=40,
            seed=seed,
        )
        return model.solve(y, physics)

    first, second = solve(7), solve(7)
    for name in ("x", "z", "objective", "residual", "iterations"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert not torch.equal(first.z, solve(8).z)  # the seed is what fixes the starts


# -- the documentation page -----------------------------------------------------------------------
def test_docs_page_lists_every_case():
    assert DOC_PAGE.is_file(), "run `python tests/test_robustness.py` to write the page"
    text = DOC_PAGE.read_text()
    for case_id in [c.id for c in BAD_INPUTS] + [a.id for a in ACCEPTED] + [f.id for f in FAULTS]:
        assert f"``{case_id}``" in text, f"{case_id} is missing: run python {__file__}"
    assert f"{len(BAD_INPUTS)} bad inputs" in text


def _rst_cell(text: str) -> str:
    """Plain text for a reST table cell: one line, markup characters escaped."""
    text = " ".join(text.split()).replace("\\", "\\\\")
    return re.sub(r"([*`|_])", r"\\\1", text) or "-"


def render_page(ctx: Context) -> str:
    """Run every case and write what a user sees into a reST page."""
    tmp = str(ctx.tmp)

    def shown(text: str) -> str:
        return _rst_cell(text.replace(tmp, "<tmp>"))

    def list_table(title: str, header: list[str], rows: list[list[str]], widths: str) -> list[str]:
        lines = [f".. list-table:: {title}", "   :header-rows: 1", f"   :widths: {widths}", ""]
        for row in [header, *rows]:
            lines.append(f"   * - {row[0]}")
            lines.extend(f"     - {cell}" for cell in row[1:])
        return [*lines, ""]

    bad_rows = []
    for case in BAD_INPUTS:
        if case.needs_no_cuda and torch.cuda.is_available():
            message = "(not run: this machine has CUDA)"
        else:
            with pytest.MonkeyPatch.context() as monkeypatch:
                message = _message(_run_case(case, replace(ctx, monkeypatch=monkeypatch)))
        bad_rows.append(
            [
                f"``{case.id}``",
                shown(case.entry),
                shown(case.bad),
                "exit status 2" if case.error is CommandFailed else f"``{case.error.__name__}``",
                shown(message),
            ]
        )
    accepted_rows = []
    for case in ACCEPTED:
        with pytest.MonkeyPatch.context() as monkeypatch:
            case.check(replace(ctx, monkeypatch=monkeypatch))
        accepted_rows.append(
            [f"``{case.id}``", shown(case.entry), shown(case.input), shown(case.behaviour)]
        )
    fault_rows = []
    for fault in FAULTS:
        options, y, physics = fault.make(ctx)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            GlowReconstructor(ctx.glow, **options).solve(y, physics)
        ours = [str(w.message) for w in caught if re.search(fault.match, str(w.message))]
        fault_rows.append([f"``{fault.id}``", shown(fault.setting), shown(ours[0])])

    entries = sorted({case.entry for case in BAD_INPUTS})
    lines = [
        ".. _robustness:",
        "",
        "Robustness",
        "==========",
        "",
        ".. This page is generated by ``python tests/test_robustness.py`` from the case tables",
        "   of that test module; edit the tables there, not this file.",
        "",
        "Every public entry point checks its input and fails early with a specific exception",
        "whose message says what to do; numerically hostile settings give finite results and a",
        "``UserWarning`` that says what happened; training survives interruptions and loses at",
        "most one checkpoint interval. Each case below is a test in ``tests/test_robustness.py``",
        "(``pytest tests/test_robustness.py``), and the messages are the ones it produced.",
        "",
        "Devices: the tests run without a GPU. A tensor on another device is a ``meta`` tensor,",
        "a model on the GPU is a CPU model whose ``Glow.device`` is monkeypatched to ``cuda:0``,",
        "and asking for CUDA on a machine without it is checked for real.",
        "",
        "Bad input",
        "---------",
        "",
        f"{len(BAD_INPUTS)} bad inputs over {len(entries)} entry points: "
        + ", ".join(shown(entry) for entry in entries)
        + ". "
        "``CheckpointError`` (``deepinv_glowprior.CheckpointError``) is a ``ValueError``. The",
        "command line prints the same messages as one line, ``glowprior <command>: error:",
        "...``, and exits with status 2, without a traceback.",
        "",
        *list_table(
            "Bad inputs and the errors they raise",
            ["Case", "Entry point", "Bad input", "Exception", "Message"],
            bad_rows,
            "14 14 18 10 44",
        ),
        "Accepted edge cases",
        "-------------------",
        "",
        "Unusual inputs that are valid and work (batch of one was unstable in the reference",
        "code):",
        "",
        *list_table(
            "Edge cases that work",
            ["Case", "Entry point", "Input", "Behaviour"],
            accepted_rows,
            "20 25 25 30",
        ),
        "Properties",
        "----------",
        "",
        "Checked by Hypothesis on random cases (``test_property_*``):",
        "",
        "- for random image shapes (C in 1..3, H = W in {4, 8, 16}, 1 or 2 levels), batch sizes",
        "  1..4, 1 or 2 steps per level and both couplings: ``decode(encode(x))`` equals ``x``,",
        "  latents, log-determinants, log-densities and samples are finite, and an image encodes",
        "  the same alone as in a batch;",
        "- ``GlowPrior.fn`` and ``grad`` are finite on images around [0, 1] of any batch size;",
        "- for random compressed sensing ratios, inpainting holes, noise levels, gammas, batch",
        "  sizes and iteration counts, ``GlowReconstructor`` returns finite images of the right",
        "  shape in [0, 1].",
        "",
        "Numerical faults",
        "----------------",
        "",
        "The reconstruction stays finite and in [0, 1], and a ``UserWarning`` says what",
        "happened. Well-posed problems at the default settings (denoising, ``gamma='auto'``,",
        "compressed sensing, inpainting, random restarts, Adam, the paper preset) give no",
        "warning.",
        "",
        *list_table(
            "Numerical faults and their warnings",
            ["Case", "Setting", "Warning"],
            fault_rows,
            "15 25 60",
        ),
        "Training with a far too large learning rate (``lr=1e6``): the first step blows the",
        "weights up and later losses are NaN. Such updates are skipped (the weights stay",
        "finite), a warning names the first skipped step and another counts them at the end;",
        "sample grids that cannot be decoded are skipped with a warning instead of crashing the",
        "run, and a checkpoint whose weights are NaN is refused on load.",
        "",
        "Interruptions and faults during training",
        "----------------------------------------",
        "",
        "Checked in ``tests/test_train.py`` and ``tests/test_cli.py``:",
        "",
        "- Checkpoints (``checkpoint.pt``, ``model.pt``) and the model registry are written to a",
        "  temporary file and renamed over the old one, so a crash or a full disk mid-write",
        "  leaves the previous file intact",
        "  (``test_failed_checkpoint_write_keeps_the_previous_one``).",
        "- Resuming is exact: data order and dequantisation noise are functions of the seed and",
        "  the step, and the checkpoint holds model, optimiser, scheduler, step and history, so",
        "  a run stopped by an exception, by Ctrl-C (which saves a checkpoint first, exit",
        "  status 130) or by ``--max-minutes`` and started again with the same command ends with",
        "  the same weights as an uninterrupted run",
        "  (``test_resume_after_crash_equals_uninterrupted_run``,",
        "  ``test_keyboard_interrupt_saves_a_checkpoint_that_resumes_exactly``).",
        "- ``kill -9`` loses at most one checkpoint interval: the same command resumes from the",
        "  last checkpoint (``test_sigkill_then_same_command_resumes``).",
        "- Resuming with a changed setting or into another architecture is refused with a",
        "  message naming the field; a truncated or foreign ``checkpoint.pt`` is a",
        "  ``CheckpointError`` that says to delete it or pass ``--no-resume``.",
        "- An output folder that cannot be written, or a disk without room for the",
        "  checkpoints, fails before the first step.",
        "- Training twice with the same seed gives bit-identical weights",
        "  (``test_same_seed_same_weights_other_seed_other_weights``); reconstructing twice with",
        "  the same seed, random starts and restarts gives a bit-identical result",
        "  (``test_same_seed_same_reconstruction_bit_for_bit``).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder, quiet():
        warnings.simplefilter("ignore", UserWarning)
        context = make_context(Path(folder))
        page = render_page(context)
    DOC_PAGE.parent.mkdir(exist_ok=True)
    DOC_PAGE.write_text(page)
    print(
        f"wrote {DOC_PAGE} ({len(BAD_INPUTS)} bad inputs, {len(ACCEPTED)} edge cases, "
        f"{len(FAULTS)} numerical faults)"
    )
