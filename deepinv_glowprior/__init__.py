"""deepinv-glowprior: invertible (Glow) generative priors for DeepInverse."""

from deepinv_glowprior.glow import CheckpointError, Glow, GlowConfig
from deepinv_glowprior.prior import GlowPrior
from deepinv_glowprior.reconstructor import GlowReconstructor, GlowSolution

__all__ = [
    "CheckpointError",
    "Glow",
    "GlowConfig",
    "GlowPrior",
    "GlowReconstructor",
    "GlowSolution",
]
__version__ = "0.1.0"
