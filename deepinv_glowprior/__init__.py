"""deepinv-glowprior: invertible (Glow) generative priors for DeepInverse."""

from deepinv_glowprior.glow import CheckpointError, Glow, GlowConfig

__all__ = ["CheckpointError", "Glow", "GlowConfig"]
__version__ = "0.1.0"
