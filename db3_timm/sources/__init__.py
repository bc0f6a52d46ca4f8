"""Query sources: the ways a job spends teacher queries, registered by name (:func:`db3_timm.create_source`).

Each source spends an exact budget through the oracle in deterministic units; every answer lands in the
job's :class:`~db3_timm.store.QueryStore` as a training row. Built in: ``hard``, ``mixes``, ``boundary``,
``augment`` (the user's images), ``db3`` (soft labels from ``sd`` / ``bd`` / ``mbd``), ``synth`` (a generator
network's samples), ``noise`` (smooth noise), ``offspring`` (children of same-label pseudo samples) and ``zsdb3``
(pseudo samples from noise). Third-party sources register through the entry-point group ``db3_timm.sources``.
"""
from .base import Source, SourceContext, unit_generator
from .offspring import Offspring
from .real import Augment, BoundaryPairs, HardLabels, Mixes, teacher_labels
from .soft import DB3SoftLabels, references_per_class
from .synth import NoiseSamples, SynthSamples
from .zero_shot import ZeroShotGeneration

__all__ = ["Source", "SourceContext", "unit_generator", "HardLabels", "Mixes", "BoundaryPairs", "Augment",
           "DB3SoftLabels", "ZeroShotGeneration", "SynthSamples", "NoiseSamples", "Offspring", "teacher_labels",
           "references_per_class"]
