r"""
Train a Glow on your own images
===============================

A Glow prior is trained by maximum likelihood on images of the kind you want to reconstruct
:footcite:p:`kingma2018glow`. This example does it end to end on a folder of image files, with
a deliberately tiny model and a few hundred steps so that it runs in under a minute on two CPU
cores: the samples will be crude. The same code, or ``glowprior train --dataset folder
--data-dir PATH``, trains a real model given hours instead of seconds.
"""

import dataclasses
import shutil
import tempfile
from pathlib import Path

import deepinv as dinv
import matplotlib.pyplot as plt
import numpy as np
import skimage.data
import skimage.io
import torch

from deepinv_glowprior import Glow, GlowReconstructor
from deepinv_glowprior.data import image_folder
from deepinv_glowprior.train import TrainConfig, fit

# %%
# A folder of images
# ------------------
#
# Stand-in for your own data: 16x16 grey patches of two scikit-image photographs written as PNG
# files into a temporary folder, plus a third photograph's patches in another folder for testing.
# :func:`~deepinv_glowprior.data.image_folder` reads any such folder (centre crop, resize, values
# in :math:`[0, 1]`).

workdir = Path(tempfile.mkdtemp(prefix="glowprior-example-"))
rng = np.random.default_rng(0)


def write_patches(image: np.ndarray, folder: Path, name: str, count: int, size: int = 16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        top = rng.integers(image.shape[0] - size)
        left = rng.integers(image.shape[1] - size)
        patch = image[top : top + size, left : left + size]
        skimage.io.imsave(folder / f"{name}_{k:04d}.png", patch, check_contrast=False)


write_patches(skimage.data.camera(), workdir / "train", "camera", 200)
write_patches(skimage.data.coins(), workdir / "train", "coins", 200)
write_patches(skimage.data.moon(), workdir / "test", "moon", 64)
train_set = image_folder(workdir / "train", size=16, color=False)
test_set = image_folder(workdir / "test", size=16, color=False)
print(f"{len(train_set)} training and {len(test_set)} test images of {tuple(train_set[0].shape)}")

# %%
# A tiny Glow and a few hundred steps
# -----------------------------------
#
# Two levels of two flow steps with 32 hidden channels: tiny next to the shipped models (3 x 8
# steps, 128 channels) or the paper's (4 x 48 steps, 512 channels). Seed the model's
# initialisation yourself; :class:`~deepinv_glowprior.train.TrainConfig` seeds the data order and
# the dequantisation noise.

torch.manual_seed(0)
glow = Glow(img_size=(1, 16, 16), levels=2, steps=2, hidden_channels=32)
config = TrainConfig(
    iterations=200,
    batch_size=32,
    lr=2e-3,
    warmup=20,
    eval_every=50,
    eval_images=64,
    checkpoint_every=50,
    sample_every=0,
    device="cpu",
    progress=False,
)
run = workdir / "run"
history = fit(glow, train_set, test_set, run, config)
print(f"after {history[-1]['step']} steps: test {history[-1]['test_bpd']:.2f} bits/dim")

# %%
# Resuming
# --------
#
# The run folder holds an atomic checkpoint. Calling :func:`~deepinv_glowprior.train.fit` again
# with more ``iterations`` (or rerunning the same ``glowprior train`` command) continues where it
# stopped; changing a setting that would alter the run, such as the learning rate, is refused.

config = dataclasses.replace(config, iterations=300)
torch.manual_seed(0)
glow = Glow(img_size=(1, 16, 16), levels=2, steps=2, hidden_channels=32)
history = fit(glow, train_set, test_set, run, config)
print("steps logged:", [entry["step"] for entry in history])
print("files in the run folder:", sorted(p.name for p in run.iterdir()))

fig, axis = plt.subplots(figsize=(5, 3.2), layout="constrained")
axis.plot([e["step"] for e in history], [e["train_bpd"] for e in history], "o-", label="train")
tested = [e for e in history if "test_bpd" in e]
axis.plot([e["step"] for e in tested], [e["test_bpd"] for e in tested], "s--", label="test")
axis.set_xlabel("step")
axis.set_ylabel("bits per dimension")
axis.legend()
plt.show()

# %%
# Use it as a prior
# -----------------
#
# The final model is saved with its configuration, so :meth:`Glow.load
# <deepinv_glowprior.glow.Glow.load>` rebuilds it. We draw samples and denoise held-out patches
# with it, as with the shipped models.

glow = Glow.load(run / "model.pt")
samples = glow.sample(4, temperature=0.7, generator=torch.Generator().manual_seed(0))

x = torch.stack([test_set[i] for i in range(4)])
physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(sigma=0.1))
torch.manual_seed(0)
y = physics(x)
x_hat = GlowReconstructor(glow, gamma="auto", max_iter=40)(y, physics)
psnr = dinv.metric.PSNR()
print(f"noisy {psnr(y.clamp(0, 1), x).mean():.2f} dB, Glow {psnr(x_hat, x).mean():.2f} dB")

dinv.utils.plot(
    [samples, x, y, x_hat],
    titles=["samples (T = 0.7)", "test patch", "noisy", "Glow"],
    rescale_mode="clip",
    figsize=(8, 8),
)

# %%
# The temporary folder can go; a real run folder is worth keeping.

shutil.rmtree(workdir)

# %%
# :References:
#
# .. footbibliography::
