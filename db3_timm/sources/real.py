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
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from .._checks import check_int, check_number
from .._registry import register_source
from .base import Source, SourceContext

__all__ = ["HardLabels", "Mixes", "BoundaryPairs", "Augment", "ActiveSelection", "teacher_labels"]


def _need_images(ctx: SourceContext, name: str) -> torch.Tensor:
    if ctx.images is None or not len(ctx.images):
        raise ValueError(f"the {name!r} source needs the user's images; with none use a zero-shot source")
    return ctx.images


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
    import datasets

    parts = []
    records = ctx.store.committed()
    for k in range(math.ceil(n / unit_size)):
        if k in answers:
            parts.append(answers[k].cpu())
            continue
        files = [str(ctx.store.out / "train" / f) for f in records[f"{name}-{k:05d}"]["files"]]
        part = datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
        parts.append(torch.as_tensor(part.with_format("numpy", columns=["label"])[:]["label"]).long())
    return torch.cat(parts)


@register_source(name="mixes")
class Mixes(Source):
    """Teacher-labelled convex mixes ``l * a + (1 - l) * b`` of two random images, ``l ~ U[0, 1)``.

    Args:
        augment: augment both images first (see :class:`Augment`; ``True`` for its defaults, or its options).
        unit_size: queries per unit (the step of resumption).
    """

    name = "mixes"

    def __init__(self, augment: Any = False, unit_size: int = 8192):
        self.augment = Augment(**(augment if isinstance(augment, dict) else {})) if augment else None
        self.unit_size = check_int("unit_size", unit_size, 1)

    def config(self) -> Dict[str, Any]:
        return {"source": self.name, "augment": None if self.augment is None else self.augment.config()}

    def run(self, ctx: SourceContext, queries: int) -> int:
        images = _need_images(ctx, self.name)

        def work(k: int, size: int, generator: torch.Generator) -> None:
            pick = torch.randint(0, len(images), (2, size), generator=generator)
            lam = torch.rand(size, 1, 1, 1, generator=generator)
            a, b = images[pick[0]], images[pick[1]]
            if self.augment is not None:
                a, b = self.augment.apply(a, generator), self.augment.apply(b, generator)
            ctx.oracle(torch.lerp(b, a, lam))

        return ctx.run_units(self.name, queries, self.unit_size, work)


@register_source(name="boundary")
class BoundaryPairs(Source):
    """Bisection between two images the teacher labels differently: each pair's queries close in on a boundary.

    Args:
        steps: bisection queries per pair (the first lands at the midpoint).
        unit_size: queries per unit (rounded down to whole pairs).
    """

    name = "boundary"

    def __init__(self, steps: int = 4, unit_size: int = 8192):
        self.steps = check_int("steps", steps, 1, at_most=32)
        self.unit_size = check_int("unit_size", unit_size, self.steps)

    def config(self) -> Dict[str, Any]:
        return {"source": self.name, "steps": self.steps}

    def run(self, ctx: SourceContext, queries: int) -> int:
        images, labels = _need_images(ctx, self.name), teacher_labels(ctx)
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

        return ctx.run_units(self.name, queries, per_unit, work)


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


@register_source(name="active")
class ActiveSelection(Source):
    """Asks where a proxy student is least sure: each round, a proxy trained on every answer so far scores many
    free candidates (augmented mixes of the images); the most uncertain ones are asked.

    Args:
        rounds: rounds the budget is split over (the proxy is retrained before each).
        pool: candidates scored per query asked.
        explore: share of each round's queries drawn at random among the candidates (the rest: most uncertain).
        proxy: timm architecture of the proxy (default: the job's student).
        proxy_samples: training samples the proxy sees per round.
        augment: :class:`Augment` options for the candidates.
        unit_size: queries per unit.
    """

    name = "active"

    def __init__(self, rounds: int = 4, pool: int = 8, explore: float = 0.25, proxy: Optional[str] = None,
                 proxy_samples: int = 200_000, augment: Any = True, unit_size: int = 8192):
        self.rounds = check_int("rounds", rounds, 1)
        self.pool = check_int("pool", pool, 1)
        self.explore = check_number("explore", explore, low=0, high=1)
        self.proxy, self.proxy_samples = proxy, check_int("proxy_samples", proxy_samples, 1)
        self.candidates = Mixes(augment=augment)
        self.unit_size = check_int("unit_size", unit_size, 1)

    def config(self) -> Dict[str, Any]:
        return {"source": self.name, "rounds": self.rounds, "pool": self.pool, "explore": self.explore,
                "proxy": self.proxy, "proxy_samples": self.proxy_samples, "candidates": self.candidates.config()}

    def run(self, ctx: SourceContext, queries: int) -> int:
        images = _need_images(ctx, self.name)
        per_round = -(-queries // self.rounds)
        units_per_round = -(-per_round // self.unit_size)
        for r in range(self.rounds):
            size = min(per_round, queries - r * per_round)
            if size <= 0:
                break
            first = r * units_per_round
            proxy = None

            def work(k: int, n: int, generator: torch.Generator) -> None:
                nonlocal proxy
                proxy = proxy or self._proxy(ctx, images, first)
                ctx.oracle(self._select(proxy, images, n, generator))

            ctx.run_units(self.name, size, self.unit_size, work, first=first)
        return sum(rec["queries"] for name, rec in ctx.store.committed().items() if name.rsplit("-", 1)[0] == self.name)

    def _proxy(self, ctx: SourceContext, images: torch.Tensor, first: int) -> torch.nn.Module:
        """The proxy of the round starting at unit ``first``: trained on every row committed before that round
        (so a resumed run trains the same proxy)."""
        import datasets
        import timm

        from .._disk import read_columns
        from ..training import fit

        files = [str(ctx.store.out / "train" / f) for name, rec in sorted(ctx.store.committed().items())
                 if not (name.rsplit("-", 1)[0] == self.name and int(name.rsplit("-", 1)[1]) >= first)
                 for f in rec["files"]]
        cols = read_columns(datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files]), ["image", "label"])
        arch = self.proxy or ctx.extra.get("student") or "lenet5_half"
        torch.manual_seed(ctx.seed + first)
        model = timm.create_model(arch, num_classes=ctx.num_classes, in_chans=int(images.shape[1]))
        epochs = max(1, min(30, self.proxy_samples // max(1, len(cols["label"]))))
        return fit(model, cols["image"], cols["label"], epochs=epochs, batch_size=256, lr=2e-3, seed=ctx.seed + first)

    def _select(self, proxy: torch.nn.Module, images: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        from ..training import predict_proba

        pick = torch.randint(0, len(images), (2, n * self.pool), generator=generator)
        lam = torch.rand(n * self.pool, 1, 1, 1, generator=generator)
        aug = self.candidates.augment
        a, b = images[pick[0]], images[pick[1]]
        if aug is not None:
            a, b = aug.apply(a, generator), aug.apply(b, generator)
        cand = torch.lerp(b, a, lam)
        p = predict_proba(proxy, cand)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(1)
        n_random = int(round(self.explore * n))
        order = entropy.argsort(descending=True)
        chosen = order[: n - n_random]
        rest = order[n - n_random:]
        chosen = torch.cat([chosen, rest[torch.randperm(len(rest), generator=generator)[:n_random]]])
        return cand[chosen]

