"""Zero-shot transfer-set generators (``synth``, ``zsdb3``; registered by name, see :func:`db3_timm.create_generator`)."""
from .synth import ImageGenerator, SynthConfig, SynthGenerator
from .zsdb3 import START_NOISE, GenerationState, PseudoSamples, ZSDB3Generator, reference_noise, smooth_noise

__all__ = ["SynthGenerator", "SynthConfig", "ImageGenerator", "ZSDB3Generator", "PseudoSamples", "GenerationState", "reference_noise", "smooth_noise", "START_NOISE"]
