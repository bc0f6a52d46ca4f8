"""DB3 soft labels as a query source: a labeler's boundary distances for every image (the paper's DB3KD step).

Each image becomes a soft-labelled row (``kd_weight`` 1); every probe the labeler sends on the way is kept as
a hard-labelled row too, so the answers it paid for all train the student. References come free: the images
themselves, with the teacher's labels the ``hard`` source already asked.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .._checks import check_int
from .._registry import create_labeler, register_source
from ..labelers.base import References
from .base import Source, SourceContext
from .real import check_on, source_pool

__all__ = ["DB3SoftLabels", "references_per_class"]


def references_per_class(labels: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """Returns the indices of the first ``k`` samples of every class, in dataset order (a labeler's references)."""
    picked = [torch.nonzero(labels == c).flatten()[:k] for c in range(num_classes)]
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


@register_source(name="db3")
class DB3SoftLabels(Source):
    """Soft labels from a registered labeler (``sd``, ``bd``, ``mbd``) for the images, or for pseudo samples.

    Args:
        labeler: the labeler's name.
        options: its options (``queries_per_target``, ...).
        references_per_class: images per class (by the teacher's label) the labeler measures against.
        on: ``"images"`` (the user's) or ``"pseudo"`` (samples a generator left in the context).
        unit_size: images per unit.
        prior: an optional white-box surrogate for ``mbd``.
    """

    name = "db3"

    def __init__(self, labeler: str = "mbd", options: Optional[Dict[str, Any]] = None, references_per_class: int = 10,
                 on: str = "images", unit_size: int = 512, prior: Any = None):
        from .._registry import is_labeler, list_labelers

        if not is_labeler(labeler):
            raise ValueError(f"unknown labeler {labeler!r}; known labelers: {', '.join(list_labelers())}")
        self.labeler, self.options, self.on = labeler, dict(options or {}), check_on(on)
        self.references = check_int("references_per_class", references_per_class, 0)
        if labeler == "sd" and self.references == 0:
            raise ValueError("the 'sd' labeler measures distances to references: references_per_class must be at least 1")
        self.unit_size = check_int("unit_size", unit_size, 1)
        self.prior = prior

    def config(self) -> Dict[str, Any]:
        return {"source": self.name, "labeler": self.labeler, "options": self.options,
                "references_per_class": self.references, "on": self.on}

    def describe(self, oracle: Any, seed: int) -> Dict[str, Any]:
        return {**self.config(), "labeler_config": self.build(oracle, seed).config()}

    def build(self, oracle: Any, seed: int) -> Any:
        """Returns the labeler (its options checked)."""
        return create_labeler(self.labeler, oracle, seed=seed, **self.options,
                              **({"prior": self.prior} if self.prior is not None else {}))

    def cost(self, oracle: Any, num_images: int) -> int:
        """Returns the most queries labelling ``num_images`` known-label images can spend."""
        return num_images * self.build(oracle, 0).queries_per_image(references=self.references > 0)

    def run(self, ctx: SourceContext, queries: int) -> int:
        images, labels = source_pool(ctx, self.on, self.name, labelled=True)
        need = self.cost(ctx.oracle, len(images))
        if need > queries:
            raise ValueError(f"{self.labeler!r} on {len(images)} images can spend {need:,} queries; the step has {queries:,}")
        labeler = self.build(ctx.oracle, ctx.seed)
        idx = references_per_class(labels, labeler.num_classes, self.references)
        refs = References(images[idx], labels[idx], 0)  # the teacher's answers already: no query to check them

        def work(k: int, size: int, generator: torch.Generator) -> None:
            part = slice(k * self.unit_size, k * self.unit_size + size)
            soft = labeler.label(images[part], refs, labels=labels[part], generator=generator)
            ctx.store.add_rows(images[part], soft.labels, soft.logits, kd_weight=1.0)

        source = self.labeler if self.on == "images" else f"{self.labeler}_pseudo"
        return ctx.run_units(source, len(images), self.unit_size, work, split=True, unit="images")
