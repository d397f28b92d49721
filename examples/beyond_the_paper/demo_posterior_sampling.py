r"""
Posterior sampling and uncertainty maps
=======================================

A Glow has an exact density with a Gaussian latent, so the posterior of an inverse problem,

.. math::

    p(z \mid y) \propto \exp\Big(-\frac{\|A(G(z)) - y\|^2}{2\sigma^2} - \frac{\|z\|^2}{2}\Big),

can be sampled, not only maximised as in :footcite:t:`asim2020invertible`.
:class:`~deepinv_glowprior.posterior.GlowPosteriorSampler` runs preconditioned Hamiltonian Monte
Carlo chains in latent space, started from the MAP estimate of
:class:`~deepinv_glowprior.reconstructor.GlowReconstructor`, and returns samples, the posterior
mean, a pixelwise standard-deviation map, acceptance rates and split :math:`\hat R`. Here we use it
for compressed sensing and for inpainting a centre hole, on three MNIST test digits.
"""

# sphinx_gallery_thumbnail_number = 2

import deepinv as dinv
import torch

from deepinv_glowprior import GlowPosteriorSampler, load_pretrained
from deepinv_glowprior.data import mnist
from deepinv_glowprior.tasks import centre_hole_mask, compressed_sensing, inpainting

glow = load_pretrained("mnist32")
test_set = mnist("test")
x = torch.stack([test_set[i] for i in range(3)])
psnr = dinv.metric.PSNR()

# %%
# The sampler
# -----------
#
# Four chains per image of 10 kept draws each (40 samples per image) after 10 burn-in iterations,
# in one batch of 12 latents. The default sampler is Hamiltonian Monte Carlo: each iteration
# follows 5 leapfrog (gradient) steps before it accepts or rejects, so it travels where a
# Langevin step would only diffuse. Short chains, so that this page builds in a minute on two CPU
# cores. :math:`\sigma` comes from the physics' Gaussian noise model. The samples are 8-bit images,
# :math:`k/255` like the test digits (``quantize=True``, the default): the Glow models
# dequantised pixels :math:`(k + u)/256`, and each decoded sample is mapped back to its bin.

sampler = GlowPosteriorSampler(glow, chains=4, draws=10, burn_in=10, map_iter=60)


def report(name: str, out) -> None:
    print(
        f"{name}: sigma={out.sigma:.3g}, MAP {psnr(out.map, x).mean():.2f} dB, posterior mean "
        f"{psnr(out.mean, x).mean():.2f} dB, acceptance {out.acceptance.mean():.2f}, "
        f"R-hat {[round(v, 2) for v in out.rhat.tolist()]}, "
        f"{out.samples.shape[0] * len(x) / out.seconds['chains']:.1f} samples/s"
    )


# %%
# Compressed sensing, :math:`m/n = 0.25`
# --------------------------------------

cs = compressed_sensing(glow.img_size, ratio=0.25)
torch.manual_seed(0)
out_cs = sampler.sample(cs(x), cs)
report("compressed sensing", out_cs)

dinv.utils.plot(
    [x, out_cs.map, out_cs.mean, out_cs.std, (out_cs.mean - x).abs()],
    titles=["ground truth", "MAP", "posterior mean", "posterior std", "|mean - truth|"],
    rescale_mode="min_max",
    figsize=(10, 6),
)

# %%
# The standard deviation is largest on the strokes' edges, where the error is. A few samples:
# they differ in the details of the strokes.

dinv.utils.plot([out_cs.samples[k] for k in (0, 9, 19, 29, 39)], figsize=(10, 6))

# %%
# Inpainting a centre hole
# ------------------------
#
# The likelihood needs :math:`\sigma > 0`, so the observed pixels carry a little noise
# (:math:`\sigma = 0.05`). Inside the hole only the prior speaks, so the samples vary there.

hole = centre_hole_mask(glow.img_size) == 0
painting = inpainting(glow.img_size, sigma=0.05)
torch.manual_seed(0)
y = painting(x)
out_in = sampler.sample(y, painting)
report("inpainting", out_in)
inside, outside = out_in.std[:, hole].mean(), out_in.std[:, ~hole].mean()
print(f"mean std inside the hole {inside:.4f}, outside {outside:.4f}")

dinv.utils.plot(
    [x, y, out_in.map, out_in.mean, out_in.std],
    titles=["ground truth", "measured", "MAP", "posterior mean", "posterior std"],
    rescale_mode="min_max",
    figsize=(10, 6),
)
dinv.utils.plot([out_in.samples[k] for k in (0, 9, 19, 29, 39)], figsize=(10, 6))

# %%
# Reading the diagnostics
# -----------------------
#
# :math:`\hat R` compares the chains of one image; values well above 1.1, as with chains this
# short, say they have not mixed: a 1024-dimensional posterior, stiff in the directions the
# measurements fix, needs many more steps. The std map is then best read as a relative
# uncertainty (where not to trust the reconstruction); raise ``burn_in`` and ``draws`` (the
# defaults, 20 burn-in iterations and 25 draws, mix denoising to :math:`\hat R \approx 1.4`, while
# compressed sensing stays harder). ``benchmarks/posterior.py`` measures coverage, the
# correlation of the std map with the error, and the cost on more images.
#
# :References:
#
# .. footbibliography::
