"""Tests of :mod:`deepinv_glowprior.batch_invariance`: chunking, the oneDNN probe, and each
row's bits independent of its batch in both evaluation modes."""

from __future__ import annotations

import pytest
import torch
from helpers import train_tiny_glow

from deepinv_glowprior import Glow
from deepinv_glowprior.batch_invariance import (
    MAX_CHUNK,
    InvariantEvaluator,
    channels_last_weights,
    chunk_sizes,
    onednn_chunks_are_invariant,
)

pytestmark = pytest.mark.usefixtures("seeded_and_quiet")


@pytest.fixture(scope="module")
def glow() -> Glow:
    return train_tiny_glow()


class _Scaled(torch.nn.Module):
    """A toy model whose output for a row depends on the batch size, or not."""

    def __init__(self, by_batch: bool) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.by_batch = by_batch

    def transform(self, z: torch.Tensor) -> tuple[torch.Tensor]:
        scale = (1 + 1e-6 * z.shape[0]) if self.by_batch else 1.0
        return (self.weight * z * scale,)


@pytest.mark.parametrize("rows", [0, 1, 2, 14, 15, 16, 31, 32, 100])
def test_chunk_sizes_are_even_and_at_most_max_chunk(rows):
    sizes = chunk_sizes(rows)
    assert sum(sizes) == rows
    assert all(1 <= size <= MAX_CHUNK for size in sizes)
    assert max(sizes, default=0) - min(sizes, default=0) <= 1
    assert len(sizes) == -(-rows // MAX_CHUNK)


def test_chunk_sizes_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rows >= 0"):
        chunk_sizes(-1)
    with pytest.raises(ValueError, match="max_chunk >= 1"):
        chunk_sizes(3, max_chunk=0)


def test_probe_tells_a_batch_dependent_model_from_an_independent_one():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN is not available in this build of torch")
    dependent, independent = _Scaled(by_batch=True), _Scaled(by_batch=False)
    assert not onednn_chunks_are_invariant(dependent, dependent.transform, 4)
    assert onednn_chunks_are_invariant(independent, independent.transform, 4)


def test_probe_is_cached_per_model(monkeypatch):
    model = _Scaled(by_batch=False)
    calls = []

    def counting(z):
        calls.append(z.shape[0])
        return model.transform(z)

    onednn_chunks_are_invariant(model, counting, 4)
    first = len(calls)
    onednn_chunks_are_invariant(model, counting, 4)
    assert len(calls) == first


@pytest.mark.parametrize("chunked", [True, False], ids=["onednn-chunks", "native"])
def test_each_row_gets_the_bits_it_gets_alone(glow, monkeypatch, chunked):
    """Values and gradients of a batch of 20 (two chunks), row by row, against each row alone."""
    import deepinv_glowprior.batch_invariance as module

    if chunked and not onednn_chunks_are_invariant(glow, glow._decode, glow.latent_dim):
        pytest.skip("oneDNN in chunks is not batch-invariant on this CPU (native kernels used)")
    monkeypatch.setattr(module, "onednn_chunks_are_invariant", lambda *args: chunked)
    evaluator = InvariantEvaluator(glow, glow._decode, glow.latent_dim)
    z = 0.8 * torch.randn(20, glow.latent_dim, generator=torch.Generator().manual_seed(3))

    def value_and_grad(latents):
        latents = latents.detach().requires_grad_(True)
        with torch.enable_grad():
            x, logdet = evaluator(glow._decode, latents)
            (grad,) = torch.autograd.grad(x.pow(2).sum() + logdet.sum(), latents)
        return x.detach(), grad

    with evaluator.kernels():
        assert evaluator.chunked is chunked
        x_batch, grad_batch = value_and_grad(z)
        for row in (0, 7, 19):
            x_alone, grad_alone = value_and_grad(z[row : row + 1])
            assert torch.equal(x_alone[0], x_batch[row])
            assert torch.equal(grad_alone[0], grad_batch[row])


@pytest.mark.parametrize("chunked", [True, False], ids=["onednn-chunks", "native"])
def test_kernel_flags_are_restored(glow, monkeypatch, chunked):
    import deepinv_glowprior.batch_invariance as module

    monkeypatch.setattr(module, "onednn_chunks_are_invariant", lambda *args: chunked)
    before = torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()
    evaluator = InvariantEvaluator(glow, glow._decode, glow.latent_dim)
    with evaluator.kernels():
        assert not torch._C._get_nnpack_enabled()
        assert torch.backends.mkldnn.enabled is chunked
    assert (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()) == before


def _spatial_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] * p.shape[-2] > 1]


def test_channels_last_weights_keeps_values_and_restores_the_layout(glow):
    weights = _spatial_weights(glow)
    assert weights, "the tiny Glow should have spatial convolutions"
    before = [w.detach().clone() for w in weights]
    with channels_last_weights(glow):
        for weight, value in zip(weights, before, strict=True):
            assert weight.is_contiguous(memory_format=torch.channels_last)
            assert not weight.is_contiguous()
            assert torch.equal(weight, value)
    for weight, value in zip(weights, before, strict=True):
        assert weight.is_contiguous() and torch.equal(weight, value)


def test_channels_last_weights_leaves_channels_last_weights_so():
    conv = torch.nn.Conv2d(2, 3, 3).to(memory_format=torch.channels_last)
    with channels_last_weights(conv):
        pass
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()


@pytest.mark.parametrize("chunked", [True, False], ids=["onednn-chunks", "native"])
def test_kernels_lay_the_weights_channels_last_only_for_the_chunks(glow, monkeypatch, chunked):
    import deepinv_glowprior.batch_invariance as module

    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN is not available in this build of torch")
    monkeypatch.setattr(module, "onednn_chunks_are_invariant", lambda *args: chunked)
    evaluator = InvariantEvaluator(glow, glow._decode, glow.latent_dim)
    with evaluator.kernels():
        inside = [w.is_contiguous() for w in _spatial_weights(glow)]
    assert inside == [not chunked] * len(inside)
    assert all(w.is_contiguous() for w in _spatial_weights(glow))


def test_probe_runs_again_for_another_weight_layout():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN is not available in this build of torch")
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    calls = []

    def counting(z):
        calls.append(z.shape[0])
        return (conv(z.reshape(-1, 2, 2, 2)),)

    onednn_chunks_are_invariant(conv, counting, 8)
    first = len(calls)
    with channels_last_weights(conv):
        onednn_chunks_are_invariant(conv, counting, 8)
    assert len(calls) > first
