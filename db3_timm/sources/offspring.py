"""Zero-shot samples bred from labelled ones: children of two samples the teacher gave the same label.

A child is a blend of its two parents plus a smooth mutation; the teacher labels it (one query). The parents'
class is drawn uniformly over the classes answered so far, so a class the teacher rarely answers on noise breeds
as often as a common one, and blending two members of a class keeps what they share. Each generation's children
join the pool the next one breeds from: the samples drift from noise toward the inside of the teacher's classes,
with no model trained and no gradient, only the teacher's answers.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch

from .._checks import check_int, check_number
from .._registry import register_source
from .base import Source, SourceContext, unit_generator
from .real import source_pool

__all__ = ["Offspring", "breed"]


def breed(images: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator, *,
          blend: Tuple[float, float] = (0.3, 0.7), mutation: float = 0.15) -> torch.Tensor:
    """Returns ``n`` children of same-label parent pairs from ``images`` / ``labels`` (pixel space, ``[0, 1]``).

    A child's class is uniform over the classes present; its two parents are uniform within the class (the same
    one twice is possible in a class of one); the child is ``lerp(b, a, w) + mutation * (2 * smooth_noise - 1)``
    with ``w ~ U[blend)``, clamped to ``[0, 1]``.
    """
    from ..generators.priors import smooth_noise

    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    present = counts.nonzero().flatten()
    cls = present[torch.randint(0, len(present), (n,), generator=generator)]
    by_class = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts

    def member() -> torch.Tensor:
        offset = (torch.rand(n, generator=generator) * counts[cls]).long().minimum(counts[cls] - 1)
        return by_class[starts[cls] + offset]

    a, b = member(), member()
    w = blend[0] + (blend[1] - blend[0]) * torch.rand(n, 1, 1, 1, generator=generator)
    noise = smooth_noise(n, images.shape[1:], generator, torch.device("cpu"))
    return (torch.lerp(images[b], images[a], w) + mutation * (2 * noise - 1)).clamp_(0, 1)


@register_source(name="offspring")
class Offspring(Source):
    """Breeds teacher-labelled children from the pseudo samples a step before left (``noise`` or a generator).

    Args:
        generations: the budget is split into this many generations (one store unit each); a generation breeds
            from the pool and every child before it.
        blend: the range of a parent's weight in its child.
        mutation: the amplitude of the smooth noise added to a child (pixel scale).
    """

    name = "offspring"

    def __init__(self, generations: int = 4, blend: Sequence[float] = (0.3, 0.7), mutation: float = 0.15):
        self.generations = check_int("generations", generations, 1)
        if len(tuple(blend)) != 2 or not 0 <= float(blend[0]) <= float(blend[1]) <= 1:
            raise ValueError(f"blend must be (low, high) with 0 <= low <= high <= 1, got {blend!r}")
        self.blend = (float(blend[0]), float(blend[1]))
        self.mutation = check_number("mutation", mutation, low=0, high=1)

    def config(self) -> Dict[str, Any]:
        return {"source": self.name, "generations": self.generations, "blend": list(self.blend),
                "mutation": self.mutation}

    def run(self, ctx: SourceContext, queries: int) -> int:
        images, labels = source_pool(ctx, "pseudo", self.name)
        if not len(labels):
            raise ValueError("the 'offspring' source needs labelled pseudo samples; the step before left none")
        sizes = [queries // self.generations + (k < queries % self.generations) for k in range(self.generations)]
        rank, procs = (ctx.state.process_index, ctx.state.num_processes) if ctx.state is not None else (0, 1)
        if rank == 0:  # each generation breeds from the last: one process breeds, in order
            done = ctx.store.committed()
            for k, size in enumerate(s for s in sizes if s):
                name = f"{self.name}-{k:05d}"
                if name not in done:  # (a unit asked by an earlier run is not asked again)
                    with ctx.store.unit(name):
                        ctx.oracle(breed(images, labels, size, unit_generator(ctx.seed, self.name, k),
                                         blend=self.blend, mutation=self.mutation))
                # the next generation breeds from the rows as stored, so a resumed run breeds the same children
                part = ctx.store.read_unit(name)
                images, labels = torch.cat([images, part["image"]]), torch.cat([labels, part["label"]])
        if procs > 1:
            ctx.state.wait_for_everyone()
        return ctx.queries_of(self.name)
