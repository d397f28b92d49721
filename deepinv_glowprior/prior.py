r"""The Glow's negative log-likelihood as a deepinv Prior, for pixel-space solvers."""

from __future__ import annotations

import torch
from deepinv.optim import Prior

from deepinv_glowprior._checks import check_image_batch
from deepinv_glowprior.glow import Glow

__all__ = ["GlowPrior"]


class GlowPrior(Prior):
    r"""Explicit prior :math:`g(x) = -\log p_G(x)` of a trained Glow, per sample.

    .. math::

        g(x) = \tfrac12 \|G^{-1}(x)\|^2 - \log\left|\det \frac{\partial G^{-1}(x)}{\partial x}
        \right| + \tfrac n2 \log 2\pi .

    Its gradient is computed by autograd on a detached copy of ``x``, so the caller's tensor never
    gets ``requires_grad`` (deepinv's default ``Prior.grad`` sets it, which breaks a later
    :func:`deepinv.test`). Use it in :func:`deepinv.optim.optim_builder` solvers (GD, PGD with
    ``g_first``, HQS) or samplers; values of ``x`` slightly outside [0, 1] are allowed, since
    iterates leave the box.

    :param Glow glow: a trained Glow.

    |sep|

    :Example:

    >>> import torch
    >>> from deepinv_glowprior import Glow, GlowPrior
    >>> glow = Glow(img_size=(1, 8, 8), levels=2, steps=2, hidden_channels=8)
    >>> glow = glow.initialize(torch.rand(8, 1, 8, 8)).eval()
    >>> prior = GlowPrior(glow)
    >>> x = torch.rand(3, 1, 8, 8)
    >>> prior(x).shape, prior.grad(x).shape, x.requires_grad
    (torch.Size([3]), torch.Size([3, 1, 8, 8]), False)
    """

    def __init__(self, glow: Glow) -> None:
        super().__init__()
        if not isinstance(glow, Glow):
            raise TypeError(f"glow must be a deepinv_glowprior.Glow, got {type(glow).__name__}.")
        if not glow.is_initialized:
            raise ValueError("The Glow is untrained; load or train a model before using it.")
        self.glow = glow
        self.explicit_prior = True

    def fn(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Negative log-likelihood in nats, shape ``(B,)``."""
        check_image_batch(
            x,
            self.glow.img_size,
            dtype=self.glow.dtype,
            device=self.glow.device,
            check_range=False,
        )
        z, logdet = self.glow._encode(x)
        return -(Glow.latent_log_prob(z) + logdet)

    def grad(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        r""":math:`\nabla_x g(x)`, without touching ``x`` or the Glow's parameter gradients."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W), got {type(x)!r}.")
        with torch.enable_grad():
            x_copy = x.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.fn(x_copy).sum(), x_copy)
        return gradient
