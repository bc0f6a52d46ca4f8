"""Zero-shot transfer-set generators (registered name: ``zsdb3``); build them with :func:`db3_timm.create_generator`."""
from .zsdb3 import PseudoSamples, ZSDB3Generator, build_transfer_set, diversity_report, reference_noise

__all__ = ["ZSDB3Generator", "PseudoSamples", "build_transfer_set", "diversity_report", "reference_noise"]
