r"""Glow evaluations whose result for one sample does not depend on the rest of its batch.

Batched kernels may round differently for different batch sizes, and on an under-determined
problem a solver's path amplifies those last bits into visibly different reconstructions. Two
ways out, both exact to the last bit:

- **native kernels** (:func:`batch_invariant_kernels`): PyTorch's own convolutions, which loop
  over the samples; slow on CPU.
- **oneDNN in small chunks** (:class:`InvariantEvaluator`, CPU): oneDNN picks its convolution
  algorithm by batch size, but on the CPUs we measured it keeps one algorithm for every batch of
  2 to 15 samples, computing each sample alone within it. A batch is cut into chunks of at most
  :data:`MAX_CHUNK` rows and a lone row is given a copy for company. Whether the CPU and the
  model behave so is checked once per model, thread count, dtype and weight layout, by comparing
  a probe's rows in chunks of several sizes and positions; if any bit differs, the native kernels
  are used. The evaluator holds the model's weights channels-last (:func:`channels_last_weights`)
  meanwhile, which makes oneDNN compute on NHWC data, a few percent faster than on NCHW.
  For ``mnist32`` on one thread a decode and backward pass of 32 latents took 372 ms in chunks
  (NCHW) against 510 ms with the native kernels under ``benchmarks/profile_decode.py``'s
  profiler, and whole solves about 0.55-0.65x their earlier time
  (``benchmarks/solver_speed.py``).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator

import torch

__all__ = [
    "MAX_CHUNK",
    "InvariantEvaluator",
    "batch_invariant_kernels",
    "channels_last_weights",
    "chunk_sizes",
    "onednn_chunks_are_invariant",
]

MAX_CHUNK = 15
"""Largest chunk of rows one oneDNN call evaluates (NNPACK and another oneDNN algorithm take
over from 16 samples on)."""

# Chunk layouts the probe compares; each puts the probe's first two rows at another place.
_PROBE_LAYOUTS = ((0, 2), (0, 3), (5, 8), (0, MAX_CHUNK), (MAX_CHUNK - 2, MAX_CHUNK))
_PROBE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

Transform = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


@contextlib.contextmanager
def batch_invariant_kernels() -> Iterator[None]:
    r"""Convolutions whose result for one sample does not depend on the rest of its batch.

    oneDNN and cuDNN pick their algorithms by batch size, and PyTorch hands CPU convolutions to
    NNPACK from 16 samples on: each rounds differently, so :math:`G(z_i)` computed in a batch of
    32 differs in the last bits from :math:`G(z_i)` alone. Inside this context all three are
    off and PyTorch's native convolutions, which loop over the samples, run instead: a sample's
    decode and gradient are then bit for bit the same in any batch of two or more. A batch of
    one differs when torch uses several threads: the loop over samples then runs outside a
    parallel region, and MKL may split the lone sample's matrix products over the threads
    (it does for the shipped ``mnist32``'s convolutions on some CPUs), which rounds
    differently; one thread, or a copy of the sample making a batch of two, gives the same bits.
    :class:`InvariantEvaluator` falls back to this context where oneDNN in chunks is not
    invariant. The switches are torch's global backend flags, restored on exit.

    :Example:

    >>> import torch
    >>> from deepinv_glowprior import Glow
    >>> from deepinv_glowprior.batch_invariance import batch_invariant_kernels
    >>> glow = Glow(img_size=(1, 8, 8), levels=2, steps=2, hidden_channels=8)
    >>> glow = glow.initialize(torch.rand(8, 1, 8, 8)).eval()
    >>> z = torch.randn(20, 64)
    >>> with batch_invariant_kernels():
    ...     together, alone = glow.decode(z), glow.decode(z[:1])
    >>> torch.equal(together[:1], alone)
    True
    """
    # (Set directly: torch.backends.mkldnn.flags() also warns about Intel-GPU TF32.)
    previous = torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled
    torch.backends.mkldnn.enabled = torch.backends.cudnn.enabled = False
    nnpack_was_enabled = torch.backends.nnpack.set_flags(False)[0]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled = previous
        torch.backends.nnpack.set_flags(nnpack_was_enabled)


@contextlib.contextmanager
def _onednn_kernels() -> Iterator[None]:
    """oneDNN on (as by default), NNPACK off: what chunked evaluation runs under."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = True
    nnpack_was_enabled = torch.backends.nnpack.set_flags(False)[0]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous
        torch.backends.nnpack.set_flags(nnpack_was_enabled)


@contextlib.contextmanager
def channels_last_weights(model: torch.nn.Module) -> Iterator[None]:
    r"""Hold a model's 4-D parameters and buffers in channels-last layout, restored on exit.

    oneDNN then runs its convolutions on channels-last (NHWC) data, which on CPU is faster than
    on the default (NCHW) layout: for ``mnist32`` on one thread a decode and backward pass of
    32 latents in chunks took 0.93 of its NCHW time (``benchmarks/profile_decode.py``). The
    values are unchanged; the convolutions' sums run in another order, so results differ in the
    last bits.
    The model is changed in place while inside, so do not use it from another thread then.

    :param torch.nn.Module model: the model whose weights are re-laid.

    :Example:

    >>> import torch
    >>> from deepinv_glowprior.batch_invariance import channels_last_weights
    >>> conv = torch.nn.Conv2d(2, 4, 3)
    >>> with channels_last_weights(conv):
    ...     conv.weight.is_contiguous(memory_format=torch.channels_last)
    True
    >>> conv.weight.is_contiguous()
    True
    """
    moved = [
        tensor
        for tensor in _four_d_tensors(model)
        if not tensor.is_contiguous(memory_format=torch.channels_last)
    ]
    with torch.no_grad():
        for tensor in moved:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor in moved:
                tensor.data = tensor.data.contiguous()


def _four_d_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters and buffers whose layout :func:`channels_last_weights` sets."""
    return [tensor for tensor in (*model.parameters(), *model.buffers()) if tensor.dim() == 4]


def _weights_channels_last(model: torch.nn.Module) -> bool:
    """Whether any 4-D weight of ``model`` is laid out channels-last (and not also NCHW)."""
    return any(not tensor.is_contiguous() for tensor in _four_d_tensors(model))


def _onednn_available(model: torch.nn.Module) -> bool:
    parameter = next(model.parameters(), None)
    on_cpu = parameter is None or parameter.device.type == "cpu"
    return on_cpu and torch.backends.mkldnn.is_available()


def chunk_sizes(rows: int, max_chunk: int = MAX_CHUNK) -> list[int]:
    r"""Sizes of the fewest chunks of at most ``max_chunk`` rows that hold ``rows`` rows.

    The chunks are as even as possible (a short last chunk runs slower per row).

    :param int rows: rows to split, :math:`\ge 0`.
    :param int max_chunk: largest chunk, :math:`\ge 1`.
    :return: chunk sizes, summing to ``rows``.

    :Example:

    >>> chunk_sizes(32)
    [11, 11, 10]
    """
    if rows < 0 or max_chunk < 1:
        raise ValueError(f"Need rows >= 0 and max_chunk >= 1, got {rows} and {max_chunk}.")
    if rows == 0:
        return []
    count = math.ceil(rows / max_chunk)
    base, extra = divmod(rows, count)
    return [base + 1] * extra + [base] * (count - extra)


def _with_a_copy(transform: Transform, row: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``transform`` of a lone row, computed in a batch of two copies of it."""
    return tuple(out[:1] for out in transform(row.expand(2, *row.shape[1:])))


def _in_chunks(transform: Transform, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``transform(inputs)`` chunk by chunk, a lone row evaluated with a copy of itself."""
    pieces = [
        _with_a_copy(transform, chunk) if chunk.shape[0] == 1 else transform(chunk)
        for chunk in inputs.split(chunk_sizes(inputs.shape[0]))
    ]
    return tuple(torch.cat(parts) for parts in zip(*pieces, strict=True))


class InvariantEvaluator:
    r"""Evaluates a model's transforms so that each sample's result ignores its batch.

    On CPU, where :func:`onednn_chunks_are_invariant` holds for this model, thread count and
    dtype with channels-last weights: oneDNN convolutions in chunks of 2 to :data:`MAX_CHUNK`
    rows, the weights held channels-last inside :meth:`kernels` (fast). Elsewhere: the native
    kernels of :func:`batch_invariant_kernels` on the model's own layout, a lone sample padded
    to two when torch uses several threads.

    :param torch.nn.Module model: the model whose transforms are evaluated (the probe's key).
    :param probe: ``probe(z)`` returns the model's outputs for latents ``z`` ``(B, n)`` whose
        gradient the probe also compares, e.g. a Glow's ``_decode``.
    :param int dim: latent size of ``probe``'s input.

    :Example:

    >>> import torch
    >>> from deepinv_glowprior import Glow
    >>> from deepinv_glowprior.batch_invariance import InvariantEvaluator
    >>> glow = Glow(img_size=(1, 8, 8), levels=2, steps=2, hidden_channels=8)
    >>> glow = glow.initialize(torch.rand(8, 1, 8, 8)).eval()
    >>> evaluator = InvariantEvaluator(glow, glow._decode, 64)
    >>> z = torch.randn(20, 64)
    >>> with evaluator.kernels():
    ...     together = evaluator(glow._decode, z)[0]
    ...     alone = evaluator(glow._decode, z[3:4])[0]
    >>> torch.equal(together[3:4], alone)
    True
    """

    def __init__(self, model: torch.nn.Module, probe: Transform, dim: int) -> None:
        self.model = model
        self.probe = probe
        self.dim = dim
        self.chunked = False

    @contextlib.contextmanager
    def kernels(self) -> Iterator[None]:
        """The kernels to evaluate under: chunked oneDNN on channels-last weights where the
        probe finds it invariant, else the native kernels on the model's own layout."""
        if _onednn_available(self.model):
            with channels_last_weights(self.model):
                self.chunked = onednn_chunks_are_invariant(self.model, self.probe, self.dim)
                if self.chunked:
                    with _onednn_kernels():
                        yield
                    return
        self.chunked = False
        with batch_invariant_kernels():
            yield

    def __call__(self, transform: Transform, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``transform(inputs)`` computed so that each row's result ignores the others."""
        if self.chunked:
            return _in_chunks(transform, inputs)
        if inputs.shape[0] == 1 and torch.get_num_threads() > 1:
            return _with_a_copy(transform, inputs)
        return transform(inputs)


def onednn_chunks_are_invariant(model: torch.nn.Module, probe: Transform, dim: int) -> bool:
    r"""Whether ``probe`` gives each row the same bits in every oneDNN chunk of 2 to 15 rows.

    Checked once per model, thread count, dtype and weight layout (cached; see
    :func:`channels_last_weights`): the probe's first two rows,
    at several places in chunks of several sizes, must give the same outputs and the same
    gradients of a fixed weighted sum. Only on CPU, with oneDNN available; else ``False``.

    :param torch.nn.Module model: the model (the cache's key; its parameters give dtype and
        device).
    :param probe: maps latents ``(B, dim)`` to a tuple of outputs.
    :param int dim: latent size.
    :return: ``True`` where chunked oneDNN evaluation is batch-invariant.
    """
    if not _onednn_available(model):
        return False
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.get_default_dtype()
    key = (torch.get_num_threads(), dtype, _weights_channels_last(model))
    cached = _PROBE_CACHE.setdefault(model, {})
    if key not in cached:
        cached[key] = _probe_agrees(probe, dim, dtype)
    return cached[key]


def _probe_agrees(probe: Transform, dim: int, dtype: torch.dtype) -> bool:
    generator = torch.Generator().manual_seed(0)
    latents = 0.7 * torch.randn(MAX_CHUNK + 2, dim, generator=generator, dtype=dtype)
    results = []
    with torch.enable_grad(), _onednn_kernels():
        for first, size in _PROBE_LAYOUTS:
            rows = torch.cat([latents[2 : 2 + first], latents[:2], latents[2 + first :]])[:size]
            rows = rows.detach().requires_grad_(True)
            outputs = probe(rows)
            weights = [
                torch.linspace(-1, 1, out[0].numel(), dtype=out.dtype).reshape(out[0].shape)
                for out in outputs
            ]
            total = sum((out * w).sum() for out, w in zip(outputs, weights, strict=True))
            (grad,) = torch.autograd.grad(total, rows)
            picked = slice(first, first + 2)
            results.append([out.detach()[picked] for out in outputs] + [grad[picked]])
    first = results[0]
    return all(
        torch.equal(mine, theirs)
        for other in results[1:]
        for mine, theirs in zip(first, other, strict=True)
    )
