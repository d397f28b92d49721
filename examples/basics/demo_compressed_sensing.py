r"""
Compressive sensing with a Glow prior
=====================================

Recover MNIST digits from :math:`m < n` random Gaussian measurements

.. math::

    y = A x + \eta, \qquad A_{ij} \sim \mathcal{N}(0, 1/m), \qquad \|\eta\| \approx 0.1,

the setting of :footcite:t:`asim2020invertible`, by empirical risk minimisation in the latent space
of the shipped Glow, with :math:`\gamma = 0` and :math:`z_0 = 0` ("regularisation by
initialisation"). We compare with the minimum-norm solution :math:`A^\dagger y`, what the
measurements give without any prior, for several ratios :math:`m/n`.
"""

import deepinv as dinv
import matplotlib.pyplot as plt
import torch

from deepinv_glowprior import GlowReconstructor, load_pretrained
from deepinv_glowprior.data import mnist
from deepinv_glowprior.tasks import compressed_sensing

# %%
# The prior and a few test digits
# -------------------------------
#
# :func:`~deepinv_glowprior.pretrained.load_pretrained` loads a shipped model offline and checks
# its sha256. Its images are 1x32x32 (MNIST's 28x28 digits, zero-padded), so :math:`n = 1024`.

glow = load_pretrained("mnist32")
test_set = mnist("test")
x = torch.stack([test_set[i] for i in range(3)])
n = x[0].numel()
print(f"images {tuple(x.shape)}, n = {n}, values in [{x.min():.0f}, {x.max():.0f}]")

# %%
# Measure and reconstruct
# -----------------------
#
# :func:`~deepinv_glowprior.tasks.compressed_sensing` builds a
# :class:`deepinv.physics.CompressedSensing` with the paper's matrix and noise. The three digits
# are solved as one batch, each with its own L-BFGS memory, steps and stopping rule. We cap
# L-BFGS at 60 iterations to keep this page fast;
# ``GlowReconstructor.from_preset(glow, "paper", task="cs")`` runs the paper's full protocol.

ratios = [0.05, 0.1, 0.25, 0.5]
model = GlowReconstructor(glow, gamma=0.0, max_iter=60)
psnr = dinv.metric.PSNR()
torch.manual_seed(0)  # deepinv's noise models draw from the global generator

results = {}
for ratio in ratios:
    physics = compressed_sensing(glow.img_size, ratio=ratio, seed=0)
    y = physics(x)
    x_min_norm = physics.A_dagger(y).clamp(0, 1)
    x_glow = model(y, physics)
    results[ratio] = (x_min_norm, x_glow)
    print(
        f"m/n = {ratio:4.2f} (m = {y.shape[1]:4d}):",
        f"PSNR A^+y {psnr(x_min_norm, x).mean():5.2f} dB, Glow {psnr(x_glow, x).mean():5.2f} dB",
    )

# %%
# What the reconstructions look like
# ----------------------------------
#
# Each row is a test digit. The minimum-norm solution spreads the unmeasured part of the image
# as noise; the Glow reconstruction is an image the prior finds likely that fits the measurements.

shown = [0.1, 0.25]
images = [x]
titles = ["ground truth"]
for ratio in shown:
    images += list(results[ratio])
    titles += [f"$A^\\dagger y$, m/n={ratio}", f"Glow, m/n={ratio}"]
dinv.utils.plot(images, titles=titles, rescale_mode="clip", figsize=(2.2 * len(images), 6.6))

# %%
# PSNR against the number of measurements
# ---------------------------------------
#
# Because the Glow has no representation error, its reconstructions can keep improving as
# :math:`m` grows; a GAN prior's PSNR saturates at its representation error
# :footcite:p:`asim2020invertible,bora2017compressed`. With so few iterations and three
# images this is a sketch, not a benchmark.

fig, axis = plt.subplots(figsize=(5, 3.5), layout="constrained")
for label, index in (("Glow prior", 1), ("$A^\\dagger y$ (no prior)", 0)):
    values = [psnr(results[r][index], x).mean().item() for r in ratios]
    axis.plot(ratios, values, "o-", label=label)
axis.set_xlabel("measurements $m/n$")
axis.set_ylabel("mean PSNR (dB)")
axis.legend()
plt.show()

# %%
# :References:
#
# .. footbibliography::
