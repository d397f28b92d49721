r"""The model zoo: Glow priors shipped inside the package, checked against their sha256."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepinv_glowprior._checks import check_device, check_path
from deepinv_glowprior.glow import Glow, read_checkpoint

__all__ = [
    "PretrainedModel",
    "WEIGHTS_DIR",
    "available_models",
    "export_run",
    "load_pretrained",
    "model_card",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
REGISTRY_FILE = WEIGHTS_DIR / "registry.json"


@dataclass(frozen=True)
class PretrainedModel:
    """What the registry records about a shipped model.

    :param str name: registry name, e.g. ``"mnist32"``.
    :param str dataset: training data (a :mod:`deepinv_glowprior.data` loader name).
    :param str filename: weights file inside the package's ``weights`` folder.
    :param str sha256: checksum of that file.
    :param dict config: the Glow configuration.
    :param float test_bits_per_dim: mean dequantised bits/dim over the whole test split.
    :param float test_bits_per_content_dim: the same total code length divided by the pixels of
        the unpadded content (e.g. 28x28 for padded MNIST), i.e. all bits charged to the content.
    :param int test_images: number of test images measured.
    :param str command: the exact command that trained the model.
    :param int seed: its seed.
    :param int iterations: optimiser steps.
    :param float train_minutes: training wall time.
    :param str log: training log file (JSON lines) beside the weights.
    :param str samples: sample grid (temperature 0.7) beside the weights.
    """

    name: str
    dataset: str
    filename: str
    sha256: str
    config: dict[str, Any]
    test_bits_per_dim: float
    test_bits_per_content_dim: float
    test_images: int
    command: str
    seed: int
    iterations: int
    train_minutes: float
    log: str = ""
    samples: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _registry() -> dict[str, PretrainedModel]:
    if not REGISTRY_FILE.is_file():
        return {}
    try:
        entries = json.loads(REGISTRY_FILE.read_text())
        return {name: PretrainedModel(**entry) for name, entry in entries.items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(
            f"The model registry {REGISTRY_FILE} is damaged ({err}); reinstall the package."
        ) from err


def _write_registry(entries: dict[str, Any]) -> None:
    """Write the registry atomically: a crash mid-write keeps the previous file."""
    handle, temporary = tempfile.mkstemp(prefix=".registry.", suffix=".tmp", dir=WEIGHTS_DIR)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(json.dumps(entries, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, REGISTRY_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def available_models() -> list[str]:
    """Names accepted by :func:`load_pretrained`."""
    return sorted(_registry())


def model_card(name: str) -> PretrainedModel:
    """Registry entry of ``name`` (dataset, architecture, test bits/dim, training command)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name (str) such as 'mnist32', got {name!r}.")
    registry = _registry()
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none are installed"
        raise KeyError(f"Unknown pretrained model {name!r}; available: {known}.")
    return registry[name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_pretrained(name: str, device: str | torch.device = "cpu") -> Glow:
    """Load a shipped Glow in eval mode, offline, after checking its sha256.

    :param str name: a name from :func:`available_models`, e.g. ``"mnist32"``.
    :param device: where to put the model.
    :return: the trained :class:`~deepinv_glowprior.Glow`.

    :Example:

    >>> from deepinv_glowprior import load_pretrained
    >>> glow = load_pretrained("mnist32")  # doctest: +SKIP
    >>> glow.img_size  # doctest: +SKIP
    (1, 32, 32)
    """
    check_device(device)
    card = model_card(name)
    path = WEIGHTS_DIR / card.filename
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights of {name!r} are missing at {path}; reinstall the package."
        )
    actual = _sha256(path)
    if actual != card.sha256:
        raise OSError(
            f"Weights of {name!r} at {path} are corrupted (sha256 {actual[:12]}..., expected "
            f"{card.sha256[:12]}...); reinstall the package."
        )
    return Glow.load(path, map_location=device)


def export_run(
    run_dir: str | os.PathLike,
    name: str,
    dataset: str,
    test_set,
    content_pixels: int | None = None,
    notes: str = "",
) -> PretrainedModel:
    """Ship a finished training run: copy its model, log and samples into the package, measure
    its test bits/dim on the whole ``test_set`` and record it all in the registry.

    :param run_dir: the ``--out`` folder of ``glowprior train`` (holding ``model.pt``).
    :param str name: registry name.
    :param str dataset: loader name of the training data.
    :param test_set: the test split, measured in full.
    :param int content_pixels: pixels of the unpadded content per image (default: all).
    :param str notes: free text for the model card.
    """
    from deepinv_glowprior.train import evaluate_bits_per_dim

    run_dir = _check_export(run_dir, name)
    payload = read_checkpoint(run_dir / "model.pt")
    meta = payload.get("meta", {})
    history = meta.get("history", [])
    glow = Glow.load(run_dir / "model.pt")
    bits = evaluate_bits_per_dim(glow, test_set, num_images=len(test_set), seed=0)
    content = content_pixels or glow.latent_dim
    WEIGHTS_DIR.mkdir(exist_ok=True)
    weights = WEIGHTS_DIR / f"{name}.pt"
    # Ship the weights alone: the training history lives in the log file beside them.
    glow.save(weights, meta={"command": meta.get("command", ""), "dataset": dataset})
    shutil.copyfile(run_dir / "log.jsonl", WEIGHTS_DIR / f"{name}.log.jsonl")
    shutil.copyfile(run_dir / "samples_final.png", WEIGHTS_DIR / f"{name}_samples.png")
    card = PretrainedModel(
        name=name,
        dataset=dataset,
        filename=weights.name,
        sha256=_sha256(weights),
        config={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(glow.config).items()},
        test_bits_per_dim=round(bits, 4),
        test_bits_per_content_dim=round(bits * glow.latent_dim / content, 4),
        test_images=len(test_set),
        command=meta.get("command", ""),
        seed=int(_seed_from_command(meta.get("command", ""))),
        iterations=int(history[-1]["step"]) if history else 0,
        train_minutes=round(history[-1]["seconds"] / 60, 1) if history else math.nan,
        log=f"{name}.log.jsonl",
        samples=f"{name}_samples.png",
        notes=notes,
    )
    entries = {key: asdict(value) for key, value in _registry().items()}
    entries[name] = asdict(card)
    _write_registry(entries)
    return card


_RUN_FILES = ("model.pt", "log.jsonl", "samples_final.png")


def _check_export(run_dir: str | os.PathLike, name: str) -> Path:
    """Check an export's name and run folder before anything is computed or written."""
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)):
        raise ValueError(
            f"name must be letters, digits, '_', '-' or '.', starting with a letter or digit (it "
            f"names the weights file), got {name!r}."
        )
    check_path(run_dir, name="run_dir")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"Run folder {run_dir} does not exist; pass the --out folder of a finished "
            "`glowprior train`."
        )
    missing = [file for file in _RUN_FILES if not (run_dir / file).is_file()]
    if "model.pt" in missing and (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(
            f"{run_dir} holds a checkpoint but no model.pt: the training has not finished. Run "
            "the same `glowprior train` command again to finish it, then export."
        )
    if missing:
        raise FileNotFoundError(
            f"{run_dir} lacks {', '.join(missing)}; it is not the folder of a finished "
            "`glowprior train` run."
        )
    read_checkpoint(run_dir / "model.pt")  # a damaged model fails here, before any work
    return run_dir


def _seed_from_command(command: str) -> int:
    words = command.split()
    if "--seed" in words and words.index("--seed") + 1 < len(words):
        return int(words[words.index("--seed") + 1])
    return 0
