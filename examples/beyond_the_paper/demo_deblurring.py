r"""
Deblurring and super-resolution
===============================

:footcite:t:`asim2020invertible` treat compressive sensing, denoising and inpainting. Nothing in
:class:`~deepinv_glowprior.reconstructor.GlowReconstructor` is specific to them: it only needs
``physics.A`` to be differentiable, so any deepinv physics works unchanged. Here: a Gaussian blur
applied in the Fourier domain (:class:`deepinv.physics.BlurFFT`) and a 2x downsampling with an
anti-aliasing filter (:class:`deepinv.physics.Downsampling`), both with a little noise.
"""

import deepinv as dinv
import torch
from deepinv.physics.functional import gaussian_blur

from deepinv_glowprior import GlowReconstructor, load_pretrained
from deepinv_glowprior.data import mnist

glow = load_pretrained("mnist32")
test_set = mnist("test")
x = torch.stack([test_set[i] for i in range(3)])
psnr = dinv.metric.PSNR()

# %%
# Two deepinv physics
# -------------------
#
# Both are built for the Glow's image size, 1x32x32, with noise of standard deviation 0.01.

blur = dinv.physics.BlurFFT(
    img_size=glow.img_size,
    filter=gaussian_blur(sigma=(1.5, 1.5)),
    noise_model=dinv.physics.GaussianNoise(sigma=0.01),
)
downsampling = dinv.physics.Downsampling(
    img_size=glow.img_size,
    filter="bicubic",
    factor=2,
    noise_model=dinv.physics.GaussianNoise(sigma=0.01),
)

# %%
# Reconstruct
# -----------
#
# With this little noise we use :math:`\gamma = 0` and 60 L-BFGS iterations. The references
# without a prior are the blurred image itself and, for super-resolution, the pseudo-inverse
# :math:`A^\dagger y` (an upsampling of the low-resolution image).

model = GlowReconstructor(glow, gamma=0.0, max_iter=60)
torch.manual_seed(0)

y_blur = blur(x)
x_blur = model(y_blur, blur)
print(f"deblurring:       blurred {psnr(y_blur.clamp(0, 1), x).mean():5.2f} dB,", end=" ")
print(f"Glow {psnr(x_blur, x).mean():5.2f} dB")

y_low = downsampling(x)
upsampled = downsampling.A_dagger(y_low).clamp(0, 1)
x_high = model(y_low, downsampling)
print(f"super-resolution: A^+y    {psnr(upsampled, x).mean():5.2f} dB,", end=" ")
print(f"Glow {psnr(x_high, x).mean():5.2f} dB   (measurements {tuple(y_low.shape[1:])})")

# %%
# The images
# ----------

dinv.utils.plot(
    [x, y_blur, x_blur, upsampled, x_high],
    titles=["ground truth", "blurred", "Glow", r"$A^\dagger y$ (16x16)", "Glow"],
    rescale_mode="clip",
    figsize=(11, 6.6),
)

# %%
# :References:
#
# .. footbibliography::
