"""MBD: minimal boundary distance, BD refined by label-only boundary-normal steps."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Dict, Optional, Union

import torch.nn as nn

from .._registry import register_labeler
from ..boundary import BoundarySearchConfig, DirectionPrior, minimize_boundary_distance
from ..oracle import LabelOracle
from .prior import SurrogatePrior
from .bd import BoundaryDistanceLabeler

__all__ = ["MinimalBoundaryDistanceLabeler"]


class MinimalBoundaryDistanceLabeler(BoundaryDistanceLabeler):
    """Distance toward class ``t`` = the shortest boundary crossing found by direction optimisation.

    Starts from BD over the nearest ``directions`` references, then spends the rest of each pair's
    budget on :func:`~db3_timm.boundary.minimize_boundary_distance`.

    Args:
        oracle: the label-only teacher.
        queries_per_target: exact query budget per (sample, class) pair, start search included.
        directions: nearest references tried for the start (a direction that cannot beat the best so far
            costs one query, so a wide search is cheap).
        max_pairs: pairs processed together (bounds memory).
        prior: a white-box surrogate classifier (e.g. a student trained on the teacher's hard labels;
            wrapped in :class:`~db3_timm.labelers.prior.SurrogatePrior`) or a
            :data:`~db3_timm.boundary.DirectionPrior`, tried first in every direction-search iteration. It
            helps as much as the surrogate resembles the teacher, most at small budgets.
        search: a :class:`~db3_timm.boundary.BoundarySearchConfig` (or a dict of its fields) for the direction
            search; its fields may also be passed one by one (``probes=40``, ``momentum=0.5``, ...), which
            then win.
        **kwargs: :class:`BoundaryDistanceLabeler` options (``tol``, ``random_start_queries``, ``rule``, ``seed``, ...).
    """

    name = "mbd"

    def __init__(
        self,
        oracle: LabelOracle,
        *,
        queries_per_target: int = 1000,
        directions: int = 10,
        max_pairs: int = 512,
        prior: Optional[Union[nn.Module, DirectionPrior]] = None,
        search: Optional[Union[BoundarySearchConfig, Dict[str, Any]]] = None,
        **kwargs: Any,
    ):
        search_keys = {f.name for f in fields(BoundarySearchConfig)} - {"tol"}
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in search_keys}
        super().__init__(oracle, queries_per_target=queries_per_target, directions=directions, max_pairs=max_pairs, **kwargs)
        if isinstance(search, dict):
            search = BoundarySearchConfig.from_dict(search)
        self.search = BoundarySearchConfig.from_dict({**options, "tol": self.tol}, base=search)
        if isinstance(prior, nn.Module):
            prior = SurrogatePrior(prior)
        elif prior is not None and not callable(prior):
            raise TypeError(f"prior must be a white-box nn.Module or a direction-prior callable, got {type(prior).__name__} "
                            f"({prior!r}); load a model first (db3 label --prior NAME does)")
        self.prior = prior

    def config(self) -> Dict[str, Any]:
        cfg = super().config()
        cfg.update({k: v for k, v in self.search.to_dict().items() if k != "tol"})
        if self.prior is not None:
            # Compared on resume: another surrogate (other weights) would mix two searches in one dataset.
            describe = getattr(self.prior, "describe", None)
            cfg["prior"] = describe() if describe is not None else {"callable": getattr(self.prior, "__qualname__", type(self.prior).__name__)}
        return cfg

    def _bytes_per_pair(self, dim: int) -> int:
        # The direction search's probes: (pairs, max_probes, D) directions and the probe points themselves.
        return super()._bytes_per_pair(dim) + 2 * 4 * dim * self.search.max_probes

    def _search(self, x, pairs, refs, query, generator, seeds=None):
        points, found, info = super()._search(x, pairs, refs, query, generator, seeds)
        points = minimize_boundary_distance(query, pairs.x0, points, found, generator, self.search, prior=self.prior)
        return points, found, info


@register_labeler(name="mbd")
def mbd(oracle, **cfg: Any) -> MinimalBoundaryDistanceLabeler:
    """Builds the minimal-boundary-distance labeler."""
    return MinimalBoundaryDistanceLabeler(oracle, **cfg)
