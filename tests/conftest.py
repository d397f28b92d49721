"""Fixtures shared by the test modules."""

from __future__ import annotations

import warnings

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread per test module: the tests share two cores with other work, and their
    tiny operations gain nothing from more (two spinning OpenMP threads slow them down)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seeded_and_quiet():
    """Seed torch and silence normflows' torch.lu deprecation chatter; modules opt in with
    ``pytestmark = pytest.mark.usefixtures("seeded_and_quiet")``."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.lu.*")
        warnings.filterwarnings("ignore", message=".*lu_unpack.*")
        yield


@pytest.fixture
def decoding_weights_built(monkeypatch) -> list:
    """The 1x1 convolutions whose decoding weight :math:`W^{-1}` gets computed, one entry per
    computation (to count what :meth:`Glow.cached_1x1_inverses` saves)."""
    from deepinv_glowprior import glow as glow_module

    built = []
    decoding_weight = glow_module._decoding_weight
    monkeypatch.setattr(
        glow_module,
        "_decoding_weight",
        lambda convolution: built.append(convolution) or decoding_weight(convolution),
    )
    return built
