"""Batched decision-boundary geometry from label queries only.

Everything here works on *pairs*: a sample ``x0`` and a criterion (reach class ``t``,
or leave the sample's own class). All pairs advance together; each step is one
oracle call carrying every pair that still needs a query, and each pair's
spending is tracked in a tensor so per-pair budgets are exact.

All points are convex combinations of in-box points (the sample, references,
clamped steps), so they stay in ``[0, 1]`` and a distance is always the L2 norm of
a point the teacher was actually asked about.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .oracle import LabelOracle

__all__ = ["PairQueries", "bisect_segments", "estimate_normals", "minimize_boundary_distance", "random_starts"]


class PairQueries:
    """Label queries on behalf of many (sample, criterion) pairs with an exact per-pair budget.

    A pair is *adversarial* at a point when the teacher answers ``targets[p]`` (targeted) or
    anything but ``origins[p]`` (untargeted, ``targets is None``).

    Args:
        oracle: the label-only teacher.
        image_shape: ``(C, H, W)`` of one image; points travel flattened ``(M, D)``.
        origins: ``(P,)`` teacher labels of the pairs' samples.
        targets: ``(P,)`` target classes, or ``None`` for untargeted pairs.
        budget: queries allowed per pair.
    """

    def __init__(
        self,
        oracle: LabelOracle,
        image_shape: Tuple[int, ...],
        origins: torch.Tensor,
        targets: Optional[torch.Tensor],
        budget: int,
    ):
        self.oracle = oracle
        self.image_shape = tuple(image_shape)
        self.origins = origins
        self.targets = targets
        self.budget = int(budget)
        self.spent = torch.zeros_like(origins)

    def left(self) -> torch.Tensor:
        """Returns the queries each pair may still spend, ``(P,)``."""
        return self.budget - self.spent

    def __call__(self, points: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Returns whether each flattened point ``(M, D)`` is adversarial for its pair ``pairs (M,)``; costs M queries."""
        if points.shape[0] == 0:
            return torch.zeros(0, dtype=torch.bool, device=points.device)
        labels = self.oracle(points.view(-1, *self.image_shape))
        self.spent.index_add_(0, pairs, torch.ones_like(pairs))
        if self.targets is None:
            return labels != self.origins[pairs]
        return labels == self.targets[pairs]


def bisect_segments(
    query: PairQueries,
    x0: torch.Tensor,
    adv: torch.Tensor,
    active: torch.Tensor,
    tol: float,
    lo: Optional[torch.Tensor] = None,
    reserve: int = 0,
) -> torch.Tensor:
    """Moves each adversarial point toward its sample along the segment until the boundary is bracketed.

    The bracket is kept in fractions of the segment ``x0 -> adv``: ``1`` is the known adversarial end,
    ``lo`` (default 0) a fraction assumed non-adversarial. Bisection stops when the bracket width is at
    most ``tol`` times the adversarial fraction, or the pair has only ``reserve`` queries left.

    Args:
        query: pair query function (its budgets are respected).
        x0: ``(P, D)`` samples.
        adv: ``(P, D)`` points known to be adversarial.
        active: ``(P,)`` pairs to refine.
        tol: relative tolerance on the distance.
        lo: ``(P,)`` initial lower fractions.
        reserve: queries to leave untouched for later steps.

    Returns:
        ``(P, D)`` adversarial points as close to the boundary as the tolerance and budget allow
        (inactive pairs unchanged).
    """
    lo = torch.zeros(x0.shape[0], device=x0.device) if lo is None else lo.clone()
    hi = torch.ones_like(lo)
    idx = torch.arange(x0.shape[0], device=x0.device)
    while True:
        need = active & (hi - lo > tol * hi) & (query.left() > reserve)
        if not bool(need.any()):
            break
        p = idx[need]
        mid = 0.5 * (lo[p] + hi[p])
        points = torch.lerp(x0[p], adv[p], mid.unsqueeze(1))
        is_adv = query(points, p)
        hi[p] = torch.where(is_adv, mid, hi[p])
        lo[p] = torch.where(is_adv, lo[p], mid)
    return torch.where(active.unsqueeze(1), torch.lerp(x0, adv, hi.unsqueeze(1)), adv)


def _feasible(u: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    # Components pushing a pixel already at a bound further out are clamped away by the oracle;
    # dropping them keeps the estimate in the directions that can actually move the image.
    blocked = ((at <= 0.0) & (u < 0)) | ((at >= 1.0) & (u > 0))
    return u.masked_fill(blocked, 0.0)


def estimate_normals(
    query: PairQueries,
    at: torch.Tensor,
    active: torch.Tensor,
    num_probes: torch.Tensor,
    delta: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Estimates the boundary normal (pointing to the adversarial side) at boundary points from label answers.

    Each active pair sends ``num_probes[p]`` random box-feasible probes ``at + delta * u`` in one shared
    oracle call; the answers (+1 adversarial, -1 not), centred by their mean, weight the probe
    directions (HopSkipJump's Monte-Carlo estimate).

    Args:
        query: pair query function.
        at: ``(P, D)`` points near the boundary.
        active: ``(P,)`` pairs to estimate.
        num_probes: ``(P,)`` probes per pair (at most ``num_probes.max()``).
        delta: ``(P,)`` probe radius.
        generator: random source on ``at``'s device.

    Returns:
        ``(P, D)`` unit normals (zero rows for inactive pairs or uninformative probes).
    """
    P, D = at.shape
    bmax = int(num_probes[active].max()) if bool(active.any()) else 0
    out = torch.zeros_like(at)
    if bmax == 0:
        return out
    p_idx = active.nonzero().squeeze(1)
    u = torch.randn(p_idx.numel(), bmax, D, generator=generator, device=at.device, dtype=at.dtype)
    u = _feasible(u, at[p_idx].unsqueeze(1))
    u = u / u.norm(dim=2, keepdim=True).clamp_min(1e-12)
    use = torch.arange(bmax, device=at.device).unsqueeze(0) < num_probes[p_idx].unsqueeze(1)
    probes = (at[p_idx].unsqueeze(1) + delta[p_idx].view(-1, 1, 1) * u).clamp(0.0, 1.0)
    pair_of = p_idx.unsqueeze(1).expand(-1, bmax)
    answers = torch.zeros(p_idx.numel(), bmax, device=at.device)
    answers[use] = query(probes[use], pair_of[use]).to(at.dtype) * 2 - 1
    counts = use.sum(1, keepdim=True).clamp_min(1)
    baseline = answers.sum(1, keepdim=True) / counts
    # Centring removes the bias of a boundary point that sits slightly inside one side; if every
    # probe agrees the centred weights vanish, so fall back to the raw signs.
    weights = torch.where(use, answers - baseline, torch.zeros_like(answers))
    flat = weights.abs().sum(1, keepdim=True) == 0
    weights = torch.where(flat & use, answers, weights)
    v = torch.einsum("pb,pbd->pd", weights, u)
    out[p_idx] = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


def minimize_boundary_distance(
    query: PairQueries,
    x0: torch.Tensor,
    adv: torch.Tensor,
    active: torch.Tensor,
    generator: torch.Generator,
    *,
    tol: float = 1e-3,
    probes: int = 50,
    max_probes: int = 400,
    probe_growth: float = 0.5,
    delta: float = 0.02,
    momentum: float = 0.5,
    max_step_checks: int = 6,
    progress=None,
) -> torch.Tensor:
    """Shrinks each pair's adversarial point toward the nearest boundary until its budget is spent.

    One iteration per pair: bisect to the boundary, estimate the normal there from ``probes * it**growth``
    probes (averaged with earlier estimates by ``momentum``), step along it into the adversarial side with a
    geometric step search, then accept the new segment only if one query at the current best distance
    shows it is shorter (HopSkipJump's update with Sign-OPT's cheap rejection).

    Args:
        query: pair query function; iterations stop per pair when its budget runs out.
        x0: ``(P, D)`` samples.
        adv: ``(P, D)`` adversarial starting points.
        active: ``(P,)`` pairs to optimise.
        generator: random source on the data's device.
        tol: relative tolerance of every bisection.
        probes, max_probes, probe_growth: probes per normal estimate grow as ``probes * it**growth``.
        delta: probe radius relative to the current distance.
        momentum: weight of the previous normal estimate.
        max_step_checks: halvings of the step before an iteration gives up.
        progress: optional callable ``(pairs_active)`` invoked once per iteration.

    Returns:
        ``(P, D)`` adversarial points (each verified by a query, or the input point when nothing better was found).
    """
    P, D = x0.shape
    bisect_cost = math.ceil(math.log2(1.0 / tol)) + 1
    adv = bisect_segments(query, x0, adv, active, tol)
    dist = (adv - x0).norm(dim=1)
    normal = torch.zeros_like(x0)
    it = 0
    while True:
        it += 1
        want = torch.full((P,), min(max_probes, int(probes * it ** probe_growth)), device=x0.device)
        # A pair iterates only while it can afford a minimal estimate plus the step and the bisection.
        reserve = max_step_checks + 1 + bisect_cost
        live = active & (query.left() >= reserve + 8) & (dist > 0)
        if not bool(live.any()):
            break
        if progress is not None:
            progress(int(live.sum()))
        n_probes = torch.minimum(want, query.left() - reserve).clamp_min(0)
        est = estimate_normals(query, adv, live, n_probes, delta * dist, generator)
        normal = torch.where(live.unsqueeze(1), momentum * normal + (1 - momentum) * est, normal)
        normal = normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-12)

        # Geometric step search: HopSkipJump's eps = dist / sqrt(it), halved until adversarial.
        eps = dist / math.sqrt(it)
        found = torch.zeros(P, dtype=torch.bool, device=x0.device)
        cand = adv.clone()
        for _ in range(max_step_checks):
            trying = live & ~found & (query.left() > bisect_cost)
            if not bool(trying.any()):
                break
            p = trying.nonzero().squeeze(1)
            step = (adv[p] + eps[p].unsqueeze(1) * normal[p]).clamp(0.0, 1.0)
            ok = query(step, p)
            cand[p[ok]] = step[ok]
            found[p[ok]] = True
            eps[p[~ok]] *= 0.5

        # Cheap rejection: the new segment must be adversarial at the current best distance.
        seg = (cand - x0).norm(dim=1)
        frac = (dist / seg.clamp_min(1e-12)).clamp(max=1.0)
        test = found & (frac < 1.0) & (query.left() > 0)
        p = test.nonzero().squeeze(1)
        better = torch.zeros(P, dtype=torch.bool, device=x0.device)
        if p.numel():
            point = torch.lerp(x0[p], cand[p], frac[p].unsqueeze(1))
            ok = query(point, p)
            better[p[ok]] = True
            cand[p[ok]] = point[ok]
        refined = bisect_segments(query, x0, cand, better, tol)
        new_dist = (refined - x0).norm(dim=1)
        improved = better & (new_dist < dist)
        adv = torch.where(improved.unsqueeze(1), refined, adv)
        dist = torch.where(improved, new_dist, dist)
    return adv


def random_starts(
    query: PairQueries,
    shape: Tuple[int, int],
    need: torch.Tensor,
    max_queries: int,
    generator: torch.Generator,
    device: torch.device,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Searches random noise images for an adversarial start, one image per pending pair per round.

    Noise follows the reference recipe ``clip(s1 * (U + 0.2) + s2 * N(0, I), 0, 1)`` with ``s1, s2 ~ U[0, 1)``.

    Args:
        query: pair query function.
        shape: ``(P, D)``.
        need: ``(P,)`` pairs that have no start yet.
        max_queries: queries each pair may spend searching.
        generator: random source on ``device``.
        device: where to build the noise.

    Returns:
        ``(starts (P, D), found (P,))``.
    """
    P, D = shape
    starts = torch.zeros(P, D, device=device)
    found = torch.zeros(P, dtype=torch.bool, device=device)
    for _ in range(max_queries):
        pending = need & ~found & (query.left() > 0)
        if not bool(pending.any()):
            break
        p = pending.nonzero().squeeze(1)
        s = torch.rand(p.numel(), 2, generator=generator, device=device)
        noise = s[:, :1] * (torch.rand(p.numel(), D, generator=generator, device=device) + 0.2)
        noise = (noise + s[:, 1:] * torch.randn(p.numel(), D, generator=generator, device=device)).clamp(0.0, 1.0)
        ok = query(noise, p)
        starts[p[ok]] = noise[ok]
        found[p[ok]] = True
    return starts, found
