"""Distances to the teacher's decision boundaries -> soft-label logits."""
from __future__ import annotations

from typing import Callable, Dict, List

import torch

__all__ = ["distances_to_logits", "register_soft_rule", "list_soft_rules"]

SoftRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_RULES: Dict[str, SoftRule] = {}


def register_soft_rule(name: str) -> Callable[[SoftRule], SoftRule]:
    """Registers ``rule(distances, labels) -> logits`` under ``name`` for :func:`distances_to_logits`.

    Returns:
        A decorator that returns the rule unchanged.
    """

    def wrap(rule: SoftRule) -> SoftRule:
        _RULES[name] = rule
        return rule

    return wrap


def list_soft_rules() -> List[str]:
    """Returns the names of the registered distance -> logit rules."""
    return sorted(_RULES)


def _others(distances: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(distances, dtype=torch.bool).scatter_(1, labels.view(-1, 1), False)


@register_soft_rule("reciprocal")
def _reciprocal(distances: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Reference rule: z_t = 1/d_t for t != y and z_y = sum_t z_t. A boundary never found (inf)
    # contributes 0; a zero distance is floored so the logit stays finite.
    others = _others(distances, labels)
    z = torch.where(others, 1.0 / distances.clamp_min(1e-6), torch.zeros_like(distances))
    return z.scatter(1, labels.view(-1, 1), z.sum(1, keepdim=True))


@register_soft_rule("neg_distance")
def _neg_distance(distances: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # z_t = -d_t, z_y = 0: nearer boundaries give higher logits. inf becomes the largest
    # finite distance of the row plus one, so softmax stays well defined.
    others = _others(distances, labels)
    finite = torch.where(torch.isfinite(distances) & others, distances, torch.zeros_like(distances))
    cap = finite.amax(1, keepdim=True) + 1.0
    d = torch.where(torch.isfinite(distances), distances, cap)
    return torch.where(others, -d, torch.zeros_like(d))


def distances_to_logits(distances: torch.Tensor, labels: torch.Tensor, rule: str = "reciprocal") -> torch.Tensor:
    """Turns per-class boundary distances into soft-label logits ``z`` (use ``softmax(z / T)``, T=20).

    Args:
        distances: ``(N, C)`` distances (0 at the teacher's label, ``inf`` where no boundary was found).
        labels: ``(N,)`` teacher labels.
        rule: a name from :func:`list_soft_rules` (``'reciprocal'``: the reference rule).

    Returns:
        Finite float logits ``(N, C)``.
    """
    if rule not in _RULES:
        raise ValueError(f"unknown soft-label rule {rule!r}; known rules: {', '.join(list_soft_rules())}")
    if distances.dim() != 2 or labels.shape != distances.shape[:1]:
        raise ValueError(
            f"expected distances (N, C) and labels (N,), got {tuple(distances.shape)} and {tuple(labels.shape)}"
        )
    return _RULES[rule](distances.float(), labels.long())
