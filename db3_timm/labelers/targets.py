"""Which classes a boundary labeler searches: all of them, or the ``k`` each sample most likely borders.

A boundary search costs ``queries_per_target`` per (sample, class) pair, so a 1000-class teacher costs
``1 + 999 * Q`` queries per image when every class is searched. With ``targets=k`` only ``k`` classes per
sample are searched, chosen by a cheap signal:

* **with references** -- the sample distance (the L2 distance to the nearest reference the teacher assigns
  to each class, the ``sd`` labeler's distance): free, since the references' labels are known;
* **without references** -- ``selection_queries`` label queries on noisy copies of the sample, at growing
  noise scales: the classes the teacher answers most often are searched, and the answering copies are
  the searches' starting points.

Unsearched classes get the sample distance as their soft-label distance (an upper bound on the boundary
distance, raised to the largest measured distance of the sample when smaller, so an unsearched class never
looks nearer than a searched one), or no distance (``inf``) when the class has no reference.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from ..oracle import LabelOracle
from .base import References
from .sd import nearest_by_class

__all__ = ["TargetsArg", "TargetSelection", "check_targets", "resolve_targets", "select_targets", "soft_fill"]

TargetsArg = Union[str, int]

#: ``targets="auto"`` searches every class of a teacher with at most this many classes: on the 10-class
#: Fashion-MNIST teacher, every top-k student scored below the all-classes student at equal budget
#: (``benchmarks/top_k.py``), so dropping classes only pays where searching all of them is unaffordable.
AUTO_ALL_UP_TO = 10
#: ``targets="auto"`` on a bigger teacher: this many classes per sample (not measured on a real many-class teacher).
AUTO_TARGETS = 5


def check_targets(targets: TargetsArg, num_classes: int) -> TargetsArg:
    """Returns ``targets`` checked: ``"all"``, ``"auto"``, or an int ``k`` in ``[1, num_classes - 1]``.

    Raises:
        ValueError: anything else, naming the value and what is allowed.
    """
    if isinstance(targets, str):
        if targets in ("all", "auto"):
            return targets
        raise ValueError(f"targets must be 'all', 'auto' or a number of classes, got {targets!r}")
    if isinstance(targets, bool) or not isinstance(targets, int):
        raise ValueError(f"targets must be 'all', 'auto' or a number of classes, got {targets!r}")
    if not 1 <= targets <= num_classes - 1:
        raise ValueError(f"targets={targets} but a {num_classes}-class teacher has {num_classes - 1} other classes "
                         f"per sample: use 1 to {num_classes - 1}, or 'all'")
    return targets


def resolve_targets(targets: TargetsArg, num_classes: int) -> int:
    """Returns how many classes per sample are searched (at most): ``num_classes - 1`` for ``"all"``."""
    if targets == "all":
        return num_classes - 1
    if targets == "auto":
        return num_classes - 1 if num_classes <= AUTO_ALL_UP_TO else AUTO_TARGETS
    return int(targets)


class TargetSelection(NamedTuple):
    """The classes to search for a batch.

    Attributes:
        searched: ``(N, C)`` bool, ``True`` for the classes to search (never a sample's own label).
        fill: ``(N, C)`` soft-label distances for the classes that are not searched (``inf``: unknown).
        starts: ``(P, D)`` a verified class-``t`` point for every searched pair, in ``searched.nonzero()`` order
            (probe selection), else ``None``.
        queries: ``(N,)`` queries spent selecting.
    """

    searched: torch.Tensor
    fill: torch.Tensor
    starts: Optional[torch.Tensor]
    queries: torch.Tensor


def _top(score: torch.Tensor, labels: torch.Tensor, k: int, usable: torch.Tensor) -> torch.Tensor:
    """Returns ``(N, C)`` bool: the ``k`` lowest-``score`` usable classes of each sample, never its label."""
    score = score.scatter(1, labels.view(-1, 1), torch.inf)
    score = torch.where(usable, score, torch.inf)
    idx = score.topk(k, dim=1, largest=False).indices
    picked = torch.zeros_like(usable).scatter_(1, idx, True)
    return picked & usable & torch.isfinite(score)


def select_targets(
    x: torch.Tensor,
    labels: torch.Tensor,
    refs: Optional[References],
    num_classes: int,
    k: int,
    oracle: LabelOracle,
    selection_queries: int,
    generator: torch.Generator,
) -> TargetSelection:
    """Chooses up to ``k`` classes per sample to search (see the module docstring for how).

    Returns:
        A :class:`TargetSelection`; with references no query is spent, and classes without a reference are
        not searched (their boundary could only be sought from noise).
    """
    if refs is not None and refs.images.shape[0]:
        sd = nearest_by_class(x, refs, num_classes, k=1)[0][..., 0]
        searched = _top(sd, labels, k, torch.isfinite(sd))
        return TargetSelection(searched, sd, None, searched.new_zeros(x.shape[0], dtype=torch.long))
    if selection_queries == 0:
        raise ValueError("targets=k without references needs selection_queries >= 1 (noisy copies of each sample "
                         "show which classes border it); pass references or selection_queries")
    return probe_targets(x, labels, num_classes, k, oracle, selection_queries, generator)


def probe_targets(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int, oracle: LabelOracle, probes: int,
    generator: torch.Generator,
) -> TargetSelection:
    """Asks the teacher about ``probes`` noisy copies of each sample (noise scales 0.05 to 1, geometric).

    Returns:
        A :class:`TargetSelection` of the ``k`` classes answered most often (fewer if fewer answered), with the
        least noisy answering copy of each as its start; one oracle call for the whole batch.
    """
    n, d = x.shape[0], x[0].numel()
    scale = torch.logspace(-1.3, 0.0, probes, device=x.device).view(1, probes, 1)
    points = torch.randn(n, probes, d, generator=generator, device=x.device)  # becomes the copies in place
    points = points.mul_(scale).add_(x.flatten(1).float().unsqueeze(1)).clamp_(0.0, 1.0)
    answers = oracle(points.view(n * probes, *x.shape[1:])).view(n, probes)
    hits = torch.zeros(n, num_classes, device=x.device).scatter_add_(1, answers, torch.ones_like(answers, dtype=torch.float))
    searched = _top(-hits, labels, k, hits > 0)
    # Probes run from least to most noisy: the first copy answering t is the nearest known point of class t.
    first = torch.where(answers.unsqueeze(2) == torch.arange(num_classes, device=x.device).view(1, 1, -1),
                        torch.arange(probes, device=x.device).view(1, -1, 1), probes).amin(1)  # (N, C)
    sample, target = searched.nonzero(as_tuple=True)  # every searched class was answered, so has a copy
    starts = points[sample, first[sample, target]]
    fill = torch.full((n, num_classes), torch.inf, device=x.device)
    return TargetSelection(searched, fill, starts, torch.full((n,), probes, dtype=torch.long, device=x.device))


def soft_fill(distances: torch.Tensor, searched: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Returns ``distances`` with unsearched classes set to ``fill``, never below the sample's largest measured distance."""
    measured = torch.where(searched & torch.isfinite(distances), distances, torch.zeros_like(distances))
    floor = measured.amax(1, keepdim=True)
    return torch.where(searched, distances, torch.maximum(fill, floor))
