"""SD: sample distance, the L2 distance to the nearest reference the teacher assigns to each class."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from .._registry import register_labeler
from .base import Labeler, References

__all__ = ["SampleDistanceLabeler", "nearest_by_class"]


def nearest_by_class(
    x: torch.Tensor, refs: References, num_classes: int, k: int = 1
) -> Tuple[torch.Tensor, torch.Tensor]:
    """For every sample and class, the ``k`` nearest references of that class.

    Args:
        x: ``(N, C, H, W)`` samples.
        refs: checked references.
        num_classes: number of classes.
        k: neighbours per class.

    Returns:
        ``(distances (N, num_classes, k), indices (N, num_classes, k))`` into ``refs.images``; classes with
        fewer than ``k`` references are padded with ``inf`` distance and index ``-1``.
    """
    n = x.shape[0]
    xf = x.flatten(1).float()
    rf = refs.images.to(x.device).flatten(1).float()
    d = torch.cdist(xf, rf)  # (N, R)
    # Push other classes' references out of reach, one class at a time is a (C, N, R) mask.
    cls = refs.labels.to(x.device)
    masked = torch.where(cls.view(1, 1, -1) == torch.arange(num_classes, device=x.device).view(1, -1, 1), d.unsqueeze(1), torch.inf)
    kk = min(k, masked.shape[-1])
    dist, idx = masked.topk(kk, dim=-1, largest=False) if kk > 0 else (masked[..., :0], masked[..., :0].long())
    if kk < k:
        pad = k - kk
        dist = torch.cat([dist, dist.new_full((n, num_classes, pad), torch.inf)], -1)
        idx = torch.cat([idx, idx.new_full((n, num_classes, pad), -1)], -1)
    idx = torch.where(torch.isfinite(dist), idx, torch.full_like(idx, -1))
    return dist, idx


class SampleDistanceLabeler(Labeler):
    """Distance toward class ``t`` = L2 distance to the nearest reference the teacher labels ``t``.

    Spends no queries beyond the teacher's labels of the samples and the reference check.
    """

    name = "sd"
    uses_queries = False

    def _distances(
        self, x: torch.Tensor, labels: torch.Tensor, refs: Optional[References], generator: torch.Generator
    ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
        if refs is None:
            raise ValueError("the 'sd' labeler needs references=(images, labels) of the other classes")
        dist, _ = nearest_by_class(x, refs, self.num_classes, k=1)
        return dist[..., 0], torch.zeros(x.shape[0], dtype=torch.long, device=labels.device), {"reference_source": "given"}


@register_labeler(name="sd")
def sd(oracle, **cfg: Any) -> SampleDistanceLabeler:
    """Builds the sample-distance labeler."""
    return SampleDistanceLabeler(oracle, **cfg)
