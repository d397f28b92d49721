"""deepinv-glowprior: invertible (Glow) generative priors for DeepInverse."""

from deepinv_glowprior.glow import CheckpointError, Glow, GlowConfig
from deepinv_glowprior.posterior import GlowPosteriorSampler, PosteriorSamples
from deepinv_glowprior.pretrained import available_models, load_pretrained, model_card
from deepinv_glowprior.prior import GlowPrior
from deepinv_glowprior.reconstructor import GlowReconstructor, GlowSolution

__all__ = [
    "CheckpointError",
    "Glow",
    "GlowConfig",
    "GlowPosteriorSampler",
    "GlowPrior",
    "GlowReconstructor",
    "GlowSolution",
    "PosteriorSamples",
    "available_models",
    "load_pretrained",
    "model_card",
]
__version__ = "0.1.0"
