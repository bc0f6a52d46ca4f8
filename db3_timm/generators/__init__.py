"""Zero-shot transfer-set generators (``synth``, ``zsdb3``; registered by name, see :func:`db3_timm.create_generator`)
and the noise priors they start from."""
from .priors import NOISE_PRIORS, reference_noise, smooth_noise, start_noise
from .synth import ImageGenerator, SynthConfig, SynthGenerator
from .zsdb3 import GenerationState, PseudoSamples, ZSDB3Generator

__all__ = ["SynthGenerator", "SynthConfig", "ImageGenerator", "ZSDB3Generator", "PseudoSamples", "GenerationState",
           "reference_noise", "smooth_noise", "NOISE_PRIORS", "start_noise"]
