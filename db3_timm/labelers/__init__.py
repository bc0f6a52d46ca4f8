"""DB3 soft-labelers: distances to the teacher's decision boundaries, from label queries only.

Registered names: ``sd`` (sample distance), ``bd`` (boundary distance), ``mbd`` (minimal boundary
distance). Build them with :func:`db3_timm.create_labeler`.
"""
from .base import Labeler, References, SoftLabels
from .bd import BoundaryDistanceLabeler
from .mbd import MinimalBoundaryDistanceLabeler
from .prior import SurrogatePrior
from .sd import SampleDistanceLabeler, nearest_by_class
from .soft import distances_to_logits, list_soft_rules, register_soft_rule

__all__ = [
    "Labeler",
    "References",
    "SoftLabels",
    "SampleDistanceLabeler",
    "BoundaryDistanceLabeler",
    "MinimalBoundaryDistanceLabeler",
    "nearest_by_class",
    "SurrogatePrior",
    "distances_to_logits",
    "list_soft_rules",
    "register_soft_rule",
]
