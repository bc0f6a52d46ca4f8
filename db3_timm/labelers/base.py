"""What every DB3 soft-labeler shares: the call shape, reference checking, and the result type."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import torch

from .._checks import check_int
from ..oracle import LabelOracle
from .soft import distances_to_logits, list_soft_rules

__all__ = ["SoftLabels", "References", "Labeler"]


class References(NamedTuple):
    """Reference images already checked with the teacher: ``labels`` are the teacher's answers."""

    images: torch.Tensor
    labels: torch.Tensor
    queries: int = 0


@dataclass
class SoftLabels:
    """A labeler's answer for a batch.

    Attributes:
        labels: ``(N,)`` int64 teacher labels (always the teacher's answer, never a dataset label).
        distances: ``(N, C)`` boundary distances: 0 at the teacher's label, ``inf`` where none was found or the
            class was not searched.
        logits: ``(N, C)`` soft-label logits from the distances (unsearched classes: see
            :mod:`~db3_timm.labelers.targets`).
        queries: ``(N,)`` int64 oracle queries spent on each sample (its own label query included).
        reference_queries: queries spent checking reference images in this call.
        info: free-form facts about the run (e.g. where targeted starts came from).
        searched: ``(N, C)`` bool, the classes whose boundary was searched; ``None`` when all were.
    """

    labels: torch.Tensor
    distances: torch.Tensor
    logits: torch.Tensor
    queries: torch.Tensor
    reference_queries: int = 0
    info: Dict[str, Any] = field(default_factory=dict)
    searched: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.labels.shape[0]


ReferenceArg = Union[None, References, torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class Labeler:
    """Base class: label ``x`` with the teacher, then measure distances toward every other class.

    Subclasses implement :meth:`_distances`. ``label`` handles the teacher's own labels,
    reference checking, accounting and the distance -> logit rule.

    Args:
        oracle: the label-only teacher.
        num_classes: number of classes (default: ``oracle.num_classes``).
        rule: soft-label rule for :func:`~db3_timm.labelers.soft.distances_to_logits` (default: the
            class's ``default_rule``, chosen by measurement; ``'reciprocal'`` is the reference rule).
        seed: seeds every random choice, so a run is reproducible.
    """

    name = "base"
    uses_queries = True
    default_rule = "reciprocal"

    def __init__(self, oracle: LabelOracle, *, num_classes: Optional[int] = None, rule: Optional[str] = None, seed: int = 0):
        if num_classes is None:
            num_classes = oracle.num_classes
            if not num_classes:
                raise ValueError("num_classes is unknown: pass num_classes= or give the oracle num_classes")
        num_classes = check_int("num_classes", num_classes, 2)
        if oracle.num_classes is not None and num_classes != oracle.num_classes:
            raise ValueError(f"num_classes={num_classes} but the teacher answers {oracle.num_classes} classes; "
                             f"leave num_classes out to use the teacher's")
        rule = rule or self.default_rule
        if rule not in list_soft_rules():
            raise ValueError(f"unknown soft-label rule {rule!r}; known rules: {', '.join(list_soft_rules())}")
        self.oracle = oracle
        self.num_classes = num_classes
        self.rule = rule
        self.seed = check_int("seed", seed, -(2**63), at_most=2**63 - 1)

    def config(self) -> Dict[str, Any]:
        """Returns the settings that determine this labeler's output (for manifests and model cards)."""
        return {"labeler": self.name, "num_classes": self.num_classes, "rule": self.rule, "seed": self.seed}

    def queries_per_image(self, references: bool = True) -> int:
        """Returns the most queries one image can cost beyond its label (``with references`` or without)."""
        return (self.num_classes - 1) * int(getattr(self, "queries_per_target", 0)) if self.uses_queries else 0

    def describe_cost(self, references: bool = True) -> str:
        """Returns one line saying how :meth:`queries_per_image` comes about."""
        if not self.uses_queries:
            return f"{self.name} soft labels (no query beyond the labels)"
        qpt = int(getattr(self, "queries_per_target", 0))
        return f"{qpt} queries per image and other class ({self.num_classes - 1} classes)"

    def check_references(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> References:
        """Asks the teacher for the reference images' labels (counted queries) and drops disagreeing ones.

        Args:
            images: ``(R, C, H, W)`` candidate references in ``[0, 1]``.
            labels: optional dataset labels; images the teacher assigns elsewhere are dropped.

        Returns:
            :class:`References` holding the kept images with the teacher's labels.
        """
        teacher = self.oracle(images)
        keep = teacher == labels.to(teacher.device) if labels is not None else torch.ones_like(teacher, dtype=torch.bool)
        return References(images[keep], teacher[keep], images.shape[0])

    def _resolve_references(self, refs: ReferenceArg) -> Optional[References]:
        if refs is None or isinstance(refs, References):
            return refs
        if isinstance(refs, torch.Tensor):
            return self.check_references(refs)
        images, labels = refs
        return self.check_references(images, labels)

    def label(
        self,
        x: torch.Tensor,
        references: ReferenceArg = None,
        *,
        labels: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> SoftLabels:
        """Soft-labels a batch with label queries only.

        Args:
            x: ``(N, C, H, W)`` images in ``[0, 1]``.
            references: images of other classes: a :class:`References` (already checked), a tensor, or
                ``(images, labels)``; their labels are checked with the teacher and only images it assigns
                to class ``t`` serve class ``t``.
            labels: the teacher's labels of ``x`` when it has already answered them (e.g. pseudo samples,
                which are labelled as they are drawn): saves one query per image. Never dataset labels.
            generator: random source (default: seeded from ``seed``).

        Returns:
            :class:`SoftLabels` for ``x``.
        """
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        refs = self._resolve_references(references)
        if labels is None:
            labels, own_query = self.oracle(x), 1
        else:
            labels, own_query = self._known_labels(labels, x), 0
        distances, queries, info = self._distances(x, labels, refs, generator)
        searched = info.pop("searched", None)
        distances = distances.scatter(1, labels.view(-1, 1), 0.0)
        logits = distances_to_logits(distances, labels, self.rule)
        if searched is not None:  # the soft-label fill stays in the logits, not in the measured distances
            distances = torch.where(searched, distances, torch.inf).scatter(1, labels.view(-1, 1), 0.0)
        return SoftLabels(
            labels=labels,
            distances=distances,
            logits=logits,
            queries=queries + own_query,
            reference_queries=(refs.queries if refs is not None and not isinstance(references, References) else 0),
            info=info,
            searched=searched,
        )

    def _known_labels(self, labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor) or labels.shape != (x.shape[0],) or labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor of shape ({x.shape[0]},) (the teacher's answers for x), "
                             f"got {getattr(labels, 'dtype', type(labels).__name__)} of shape {tuple(getattr(labels, 'shape', ()))}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return labels.to(device=x.device, dtype=torch.long)

    def _distances(
        self, x: torch.Tensor, labels: torch.Tensor, refs: Optional[References], generator: torch.Generator
    ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
        """Returns ``(distances (N, C), queries (N,), info)`` for a batch with teacher ``labels``.

        A labeler that searches only some classes puts ``info["searched"]`` (``(N, C)`` bool) and returns its
        soft-label fill as the other classes' distances.
        """
        raise NotImplementedError
