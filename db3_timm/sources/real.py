"""Sources that ask about the user's own images: their labels, mixes of them, boundary pairs, augmentations.

Every answer lands in the job's store as a hard-labelled training row; the sources differ only in *what*
they ask:

* ``hard`` -- the images themselves (one query each). Runs first: the others need the teacher's labels.
* ``mixes`` -- convex mixes ``l * a + (1 - l) * b`` of two random images, ``l ~ U[0, 1)``.
* ``boundary`` -- pairs the teacher labels differently, bisected along their segment: every query lands
  closer to a decision boundary, where a label says the most about it.
* ``augment`` -- random flips, shifts, rotations, scalings and contrast changes of single images.
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch
import torch.nn.functional as F

from .._checks import check_int, check_number
from .._registry import register_source
from .base import Source, SourceContext

__all__ = ["HardLabels", "Mixes", "BoundaryPairs", "Augment", "teacher_labels"]


def _need_images(ctx: SourceContext, name: str) -> torch.Tensor:
    if ctx.images is None or not len(ctx.images):
        raise ValueError(f"the {name!r} source needs the user's images; with none use a zero-shot source")
    return ctx.images


def source_pool(ctx: SourceContext, on: str, name: str, labelled: bool = False):
    """The images a source works on: the user's (``on="images"``), or the pseudo samples a generator left."""
    if on == "pseudo":
        if "pseudo_images" not in ctx.extra:
            raise ValueError(f"the {name!r} source with on='pseudo' needs a generator step (synth, zsdb3) before it")
        return ctx.extra["pseudo_images"], ctx.extra["pseudo_labels"]
    return _need_images(ctx, name), (teacher_labels(ctx) if labelled else None)


def check_on(on: str) -> str:
    if on not in ("images", "pseudo"):
        raise ValueError(f"on must be 'images' or 'pseudo', got {on!r}")
    return on


def teacher_labels(ctx: SourceContext) -> torch.Tensor:
    """Returns the teacher's labels of ``ctx.images`` (asked by ``hard``), read back from the store."""
    if ctx.labels is None:
        raise ValueError("the teacher's labels of the images are unknown: the plan must start with the 'hard' source")
    return ctx.labels


@register_source(name="hard")
class HardLabels(Source):
    """The teacher's label of every image (one query each), in units of ``unit_size`` images."""

    name = "hard"

    def __init__(self, unit_size: int = 4096):
        self.unit_size = check_int("unit_size", unit_size, 1)

    def run(self, ctx: SourceContext, queries: int) -> int:
        images = _need_images(ctx, self.name)
        if queries < len(images):
            raise ValueError(f"the 'hard' source needs one query per image ({len(images)}), got a budget of {queries}")
        answers: Dict[int, torch.Tensor] = {}

        def work(k: int, size: int, generator: torch.Generator) -> None:
            answers[k] = ctx.oracle(images[k * self.unit_size:k * self.unit_size + size])

        spent = ctx.run_units(self.name, len(images), self.unit_size, work, unit="images")
        ctx.labels = _labels_from_store(ctx, self.name, len(images), self.unit_size, answers)
        return spent


def _labels_from_store(ctx: SourceContext, name: str, n: int, unit_size: int, answers: Dict[int, torch.Tensor]) -> torch.Tensor:
    """The labels of units answered now, and of units answered by an earlier run (read from their store rows)."""
    parts = [answers[k].cpu() if k in answers else ctx.store.read_unit(f"{name}-{k:05d}", ["label"])["label"]
             for k in range(math.ceil(n / unit_size))]
    return torch.cat(parts)


@register_source(name="mixes")
class Mixes(Source):
    """Teacher-labelled convex mixes ``l * a + (1 - l) * b`` of two random images, ``l ~ U[0, 1)``.

    Args:
        augment: augment both images first (see :class:`Augment`; ``True`` for its defaults, or its options).
        on: ``"images"`` (the user's) or ``"pseudo"`` (the samples a generator step left).
        unit_size: queries per unit (the step of resumption).
    """

    name = "mixes"

    def __init__(self, augment: Any = False, on: str = "images", unit_size: int = 8192):
        self.augment = Augment(**(augment if isinstance(augment, dict) else {})) if augment else None
        self.on = check_on(on)
        self.unit_size = check_int("unit_size", unit_size, 1)

    def config(self) -> Dict[str, Any]:
        out = {"source": self.name, "augment": None if self.augment is None else self.augment.config()}
        return out if self.on == "images" else {**out, "on": self.on}  # old manifests stay comparable

    def run(self, ctx: SourceContext, queries: int) -> int:
        images, _ = source_pool(ctx, self.on, self.name)

        def work(k: int, size: int, generator: torch.Generator) -> None:
            pick = torch.randint(0, len(images), (2, size), generator=generator)
            lam = torch.rand(size, 1, 1, 1, generator=generator)
            a, b = images[pick[0]], images[pick[1]]
            if self.augment is not None:
                a, b = self.augment.apply(a, generator), self.augment.apply(b, generator)
            ctx.oracle(torch.lerp(b, a, lam))

        return ctx.run_units(self.name if self.on == "images" else "mixes_pseudo", queries, self.unit_size, work)


@register_source(name="boundary")
class BoundaryPairs(Source):
    """Bisection between two images the teacher labels differently: each pair's queries close in on a boundary.

    Args:
        steps: bisection queries per pair (the first lands at the midpoint).
        on: ``"images"`` (the user's) or ``"pseudo"`` (the samples a generator step left).
        unit_size: queries per unit (rounded down to whole pairs).
    """

    name = "boundary"

    def __init__(self, steps: int = 4, on: str = "images", unit_size: int = 8192):
        self.steps = check_int("steps", steps, 1, at_most=32)
        self.on = check_on(on)
        self.unit_size = check_int("unit_size", unit_size, self.steps)

    def config(self) -> Dict[str, Any]:
        out = {"source": self.name, "steps": self.steps}
        return out if self.on == "images" else {**out, "on": self.on}

    def run(self, ctx: SourceContext, queries: int) -> int:
        images, labels = source_pool(ctx, self.on, self.name, labelled=True)
        per_unit = self.unit_size - self.unit_size % self.steps

        def work(k: int, size: int, generator: torch.Generator) -> None:
            pairs = size // self.steps
            a, b = _different_pairs(labels, pairs, generator)
            lo, hi = torch.zeros(pairs), torch.ones(pairs)  # fraction along a -> b; a's label at 0, b's at 1
            for _ in range(self.steps if pairs else 0):
                mid = 0.5 * (lo + hi)
                answer = ctx.oracle(torch.lerp(images[a], images[b], mid.view(-1, 1, 1, 1)))
                toward_b = answer != labels[a]
                lo, hi = torch.where(toward_b, lo, mid), torch.where(toward_b, mid, hi)
            rest = size - pairs * self.steps
            if rest:  # a unit that is not a whole number of pairs: plain midpoints of more pairs
                a2, b2 = _different_pairs(labels, rest, generator)
                ctx.oracle(torch.lerp(images[a2], images[b2], 0.5))

        return ctx.run_units(self.name if self.on == "images" else "boundary_pseudo", queries, per_unit, work)


def _different_pairs(labels: torch.Tensor, n: int, generator: torch.Generator):
    """``n`` index pairs whose teacher labels differ (resampled a few times; the rest may agree)."""
    a = torch.randint(0, len(labels), (n,), generator=generator)
    b = torch.randint(0, len(labels), (n,), generator=generator)
    for _ in range(8):
        same = labels[a] == labels[b]
        if not bool(same.any()):
            break
        b = torch.where(same, torch.randint(0, len(labels), (n,), generator=generator), b)
    return a, b


@register_source(name="augment")
class Augment(Source):
    """Teacher-labelled random augmentations of single images: flip, shift, rotation, scale, contrast.

    Args:
        flip: probability of a horizontal flip.
        shift: largest shift, as a fraction of the image side.
        rotate: largest rotation in degrees.
        scale: largest relative zoom in or out.
        contrast: largest relative change of contrast and brightness.
        unit_size: queries per unit.
    """

    name = "augment"

    def __init__(self, flip: float = 0.5, shift: float = 0.1, rotate: float = 10.0, scale: float = 0.1,
                 contrast: float = 0.2, unit_size: int = 8192):
        self.flip = check_number("flip", flip, low=0, high=1)
        self.shift = check_number("shift", shift, low=0, high=0.5)
        self.rotate = check_number("rotate", rotate, low=0, high=180)
        self.scale = check_number("scale", scale, low=0, high=0.9)
        self.contrast = check_number("contrast", contrast, low=0, high=1)
        self.unit_size = check_int("unit_size", unit_size, 1)

    def config(self) -> Dict[str, Any]:
        return {"source": self.name, "flip": self.flip, "shift": self.shift, "rotate": self.rotate, "scale": self.scale,
                "contrast": self.contrast}

    def run(self, ctx: SourceContext, queries: int) -> int:
        images = _need_images(ctx, self.name)

        def work(k: int, size: int, generator: torch.Generator) -> None:
            pick = torch.randint(0, len(images), (size,), generator=generator)
            ctx.oracle(self.apply(images[pick], generator))

        return ctx.run_units(self.name, queries, self.unit_size, work)

    def apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Returns one random augmentation of each image of ``x`` (a batched affine warp, then contrast)."""
        n = x.shape[0]
        r = torch.rand(n, 6, generator=generator) * 2 - 1
        angle = r[:, 0] * math.radians(self.rotate)
        zoom = 1 + r[:, 1] * self.scale
        flip = torch.where(torch.rand(n, generator=generator) < self.flip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos * flip, -sin, r[:, 2] * 2 * self.shift], 1),
                             torch.stack([sin * flip, cos, r[:, 3] * 2 * self.shift], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # Border padding: what comes into view repeats the edge (a background), not a black frame.
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        gain = (1 + r[:, 4] * self.contrast).view(-1, 1, 1, 1)
        mean = out.mean((1, 2, 3), keepdim=True)
        return ((out - mean) * gain + mean + r[:, 5].view(-1, 1, 1, 1) * self.contrast * 0.25).clamp(0, 1)

