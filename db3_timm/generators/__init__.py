"""Zero-shot transfer-set generators (registered by name, see :func:`db3_timm.create_generator`)."""
from .zsdb3 import START_NOISE, GenerationState, PseudoSamples, ZSDB3Generator, reference_noise, smooth_noise

__all__ = ["ZSDB3Generator", "PseudoSamples", "GenerationState", "reference_noise", "smooth_noise", "START_NOISE"]
