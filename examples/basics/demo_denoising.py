r"""
Denoising, and how to choose gamma
==================================

Remove Gaussian noise, :math:`y = x + \sigma \varepsilon` with :math:`\sigma = 0.1`, by solving

.. math::

    z^\star = \arg\min_z \|G(z) - y\|^2 + \gamma \|z\|^2, \qquad \hat x = G(z^\star),

in the latent space of the shipped Glow :footcite:p:`asim2020invertible`. An invertible generator
can represent *any* image, the noise included, so here the regulariser matters: too small a
:math:`\gamma` fits the noise, too large a :math:`\gamma` pulls every image towards :math:`G(0)`.
We sweep :math:`\gamma`, then let ``gamma="auto"`` (the discrepancy principle) choose it per image.
"""

# sphinx_gallery_thumbnail_number = 2

import deepinv as dinv
import matplotlib.pyplot as plt
import torch

from deepinv_glowprior import GlowReconstructor, load_pretrained
from deepinv_glowprior.data import mnist
from deepinv_glowprior.tasks import denoising

# %%
# Noisy digits
# ------------
#
# :func:`~deepinv_glowprior.tasks.denoising` is a :class:`deepinv.physics.Denoising` with
# :class:`deepinv.physics.GaussianNoise`.

glow = load_pretrained("mnist32")
test_set = mnist("test")
x = torch.stack([test_set[i] for i in range(3)])

sigma = 0.1
physics = denoising(sigma)
torch.manual_seed(0)
y = physics(x)
psnr = dinv.metric.PSNR()
print(f"noisy input: mean PSNR {psnr(y.clamp(0, 1), x).mean():.2f} dB")

# %%
# A sweep over gamma
# ------------------
#
# :math:`\|z\|^2` is about :math:`n = 1024` for a typical latent, and the noise energy
# :math:`\|y - x\|^2` about :math:`n \sigma^2`, so the interesting values of :math:`\gamma` are
# around :math:`\sigma^2`. Each solve is capped at 40 L-BFGS iterations to keep this page fast.

gammas = [0.0, 1e-3, 1e-2, 1e-1]
sweep = {}
for gamma in gammas:
    solution = GlowReconstructor(glow, gamma=gamma, max_iter=40).solve(y, physics)
    sweep[gamma] = solution.x
    values = [round(v, 2) for v in psnr(solution.x, x).tolist()]
    print(f"gamma = {gamma:<6g}: PSNR per image {values}")

# %%
# The discrepancy principle: ``gamma="auto"``
# -------------------------------------------
#
# ``gamma="auto"`` reads :math:`\sigma` from ``physics.noise_model`` and, for each image, keeps the
# largest :math:`\gamma` on a grid (warm-started, from large to small) whose residual is at most
# the expected noise energy, :math:`\|G(z) - y\|^2 \le m \sigma^2`. Each grid value visited costs
# a solve, so we start the grid at :math:`10\sigma^2` instead of the default :math:`100\sigma^2`.

auto = GlowReconstructor(glow, gamma="auto", gamma_grid=(10, 3, 1, 0.3, 0.1, 0.01), max_iter=30)
solution = auto.solve(y, physics)
print("gamma chosen per image:", [f"{g:.3g}" for g in solution.gamma.tolist()])
noise_energy = x[0].numel() * sigma**2
print("residual / (m sigma^2):", [round(r / noise_energy, 2) for r in solution.residual.tolist()])
print(f"gamma='auto': PSNR per image {[round(v, 2) for v in psnr(solution.x, x).tolist()]}")

# %%
# PSNR against gamma
# ------------------
#
# :math:`\gamma = 0` is drawn at the left edge of the logarithmic axis. The dashed line is the
# noisy input; the dotted one the mean PSNR of ``gamma="auto"``.

fig, axis = plt.subplots(figsize=(5, 3.5), layout="constrained")
positions = [g if g > 0 else 1e-4 for g in gammas]
axis.semilogx(positions, [psnr(sweep[g], x).mean().item() for g in gammas], "o-", label="fixed")
axis.axhline(psnr(y.clamp(0, 1), x).mean().item(), ls="--", c="gray", label="noisy input")
axis.axhline(psnr(solution.x, x).mean().item(), ls=":", c="C1", label='gamma="auto"')
axis.set_xticks(positions, ["0"] + [f"{g:g}" for g in gammas[1:]])
axis.set_xlabel(r"$\gamma$")
axis.set_ylabel("mean PSNR (dB)")
axis.legend()
plt.show()

# %%
# The images
# ----------
#
# From left to right: the clean digit, the noisy measurement, no regularisation, the largest
# :math:`\gamma` of the sweep, and the discrepancy principle.

dinv.utils.plot(
    [x, y, sweep[0.0], sweep[gammas[-1]], solution.x],
    titles=["clean", "noisy", r"$\gamma = 0$", rf"$\gamma = {gammas[-1]:g}$", "auto"],
    rescale_mode="clip",
    figsize=(11, 6.6),
)

# %%
# :References:
#
# .. footbibliography::
