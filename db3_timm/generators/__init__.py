"""Zero-shot transfer-set generators (registered by name, see :func:`db3_timm.create_generator`)."""
from .zsdb3 import (
    START_NOISE,
    PseudoSamples,
    ZSDB3Generator,
    build_transfer_set,
    diversity_report,
    label_pseudo_samples,
    reference_noise,
    smooth_noise,
)

__all__ = ["ZSDB3Generator", "PseudoSamples", "build_transfer_set", "diversity_report", "reference_noise", "smooth_noise",
           "START_NOISE", "label_pseudo_samples"]
