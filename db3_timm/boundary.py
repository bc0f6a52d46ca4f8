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
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .oracle import LabelOracle

__all__ = ["BoundarySearchConfig", "PLAIN_SEARCH", "DirectionPrior", "PairQueries", "bisect_segments", "bisect_to_boundary", "estimate_normals", "minimize_boundary_distance", "random_starts"]


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
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Brackets the boundary on each segment ``x0 -> adv`` by bisection, in fractions of the segment.

    ``1`` is the known adversarial end, ``lo`` (default 0) a fraction assumed non-adversarial.
    Bisection stops when the bracket width is at most ``tol`` times the adversarial fraction, or the
    pair has only ``reserve`` queries left.

    Args:
        query: pair query function (its budgets are respected).
        x0: ``(P, D)`` samples.
        adv: ``(P, D)`` points known to be adversarial.
        active: ``(P,)`` pairs to refine.
        tol: relative tolerance on the distance.
        lo: ``(P,)`` initial lower fractions.
        reserve: queries to leave untouched for later steps.

    Returns:
        ``(hi, lo)``: per pair the smallest fraction verified adversarial (1 for inactive pairs) and the
        largest fraction found not adversarial; the boundary point is ``lerp(x0, adv, hi)``.
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
        is_adv = query(torch.lerp(x0[p], adv[p], mid.unsqueeze(1)), p)
        hi[p] = torch.where(is_adv, mid, hi[p])
        lo[p] = torch.where(is_adv, lo[p], mid)
    return hi, lo


def bisect_to_boundary(
    query: PairQueries, x0: torch.Tensor, adv: torch.Tensor, active: torch.Tensor, tol: float, reserve: int = 0
) -> torch.Tensor:
    """Returns ``(P, D)`` adversarial points moved along ``x0 -> adv`` as close to the boundary as ``tol`` and the budget allow."""
    hi, _ = bisect_segments(query, x0, adv, active, tol, reserve=reserve)
    return torch.lerp(x0, adv, hi.unsqueeze(1))


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
    orthogonal_to: Optional[torch.Tensor] = None,
    probe_scale: int = 1,
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
        orthogonal_to: optional ``(P, D)`` unit directions; probes are drawn orthogonal to them, so the
            answers only carry information about the normal's component outside the known direction.
        probe_scale: draw probes on a grid ``probe_scale`` times coarser and upsample them (1: full resolution).

    Returns:
        ``(P, D)`` unit normals (zero rows for inactive pairs or uninformative probes).
    """
    P, D = at.shape
    bmax = int(num_probes[active].max()) if bool(active.any()) else 0
    out = torch.zeros_like(at)
    if bmax == 0:
        return out
    p_idx = active.nonzero().squeeze(1)
    if probe_scale > 1 and query.image_shape[1] >= 2 * probe_scale:
        # Smooth probes: noise drawn on a coarser grid and upsampled lives in the low-frequency
        # subspace where classifier gradients concentrate, so each answer says more about the normal.
        c, h, w = query.image_shape
        small = torch.randn(p_idx.numel() * bmax, c, -(-h // probe_scale), -(-w // probe_scale),
                            generator=generator, device=at.device, dtype=at.dtype)
        u = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).view(p_idx.numel(), bmax, D)
    else:
        u = torch.randn(p_idx.numel(), bmax, D, generator=generator, device=at.device, dtype=at.dtype)
    u = _feasible(u, at[p_idx].unsqueeze(1))
    if orthogonal_to is not None:
        known = orthogonal_to[p_idx].unsqueeze(1)
        u = u - (u * known).sum(2, keepdim=True) * known
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
    if orthogonal_to is None:
        flat = weights.abs().sum(1, keepdim=True) == 0
        weights = torch.where(flat & use, answers, weights)
    v = torch.einsum("pb,pbd->pd", weights, u)
    out[p_idx] = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


class _Rotation:
    """Per-pair state of the angle search that turns the boundary direction toward a proposal."""

    def __init__(self, P: int, device: torch.device, max_angle: float):
        # The first bracket, 3x the edge, spans every angle allowed.
        self.edge = torch.full((P,), max_angle / 3, device=device)
        self.max_angle = max_angle


def _rotate(query, x0, adv, dist, lo_dist, theta, g, live, state: _Rotation, angle_checks: int, tol: float):
    """Moves each live pair's boundary point toward unit proposal ``g`` (orthogonal to ``theta``) if that shortens it.

    Angle search in the plane ``(theta, g)``: at radius ``dist`` the adversarial directions
    ``cos(phi) theta + sin(phi) g`` form the interval ``[0, 2 alpha]`` (exact for a flat boundary), so
    ``angle_checks`` bisection queries on its upper edge give the optimal blend ``alpha`` (the circle
    search of SurFree / CGBA); the bracket starts at 3x the previous edge. The new distance is then
    bracketed between ``dist * (1 - 2 (1 - cos phi))`` (one query) and ``dist`` and bisected to ``tol``.

    Returns:
        ``(adv, dist, lo_dist, gain)``: updated points, distances, verified-clean lower distances and
        the relative distance gain per pair (0 where nothing improved).
    """
    P = x0.shape[0]
    dev = x0.device
    a_lo = torch.zeros(P, device=dev)
    a_hi = (3.0 * state.edge).clamp(max=state.max_angle)
    hi_seen = torch.zeros(P, dtype=torch.bool, device=dev)
    for _ in range(angle_checks):
        p = (live & (query.left() > 4)).nonzero().squeeze(1)
        if not p.numel():
            break
        phi = 0.5 * (a_lo[p] + a_hi[p])
        point = x0[p] + dist[p].unsqueeze(1) * (torch.cos(phi).unsqueeze(1) * theta[p] + torch.sin(phi).unsqueeze(1) * g[p])
        ok = query(point.clamp(0.0, 1.0), p)
        a_lo[p] = torch.where(ok, phi, a_lo[p])
        a_hi[p] = torch.where(ok, a_hi[p], phi)
        hi_seen[p] |= ~ok
    found = live & (a_lo > 0)
    state.edge = torch.where(found, a_lo, torch.where(live, 0.5 * state.edge, state.edge))
    phi = torch.minimum(torch.where(hi_seen, 0.25 * (a_lo + a_hi), 0.5 * a_lo), a_lo)

    def along(angle: torch.Tensor) -> torch.Tensor:
        d = torch.cos(angle).unsqueeze(1) * theta + torch.sin(angle).unsqueeze(1) * g
        return (x0 + dist.unsqueeze(1) * d).clamp(0.0, 1.0)

    cand = along(phi)
    # phi != a_lo has not been asked yet: verify it, falling back to the verified edge direction.
    p = (found & (phi < a_lo) & (query.left() > 0)).nonzero().squeeze(1)
    if p.numel():
        ok = query(cand[p], p)
        bad = p[~ok]
        cand[bad] = along(a_lo)[bad]
    # Distance bracket along the new direction: the flat-boundary prediction is dist * cos(phi).
    lo_frac = (1.0 - 2.0 * (1.0 - torch.cos(phi)) - 2.0 * tol).clamp_min(0.0)
    top = torch.ones(P, device=dev)
    p = (found & (lo_frac > 0) & (query.left() > 0)).nonzero().squeeze(1)
    if p.numel():
        ok = query(torch.lerp(x0[p], cand[p], lo_frac[p].unsqueeze(1)), p)
        top[p[ok]] = lo_frac[p[ok]]
        lo_frac[p[ok]] = 0.0
    cand = torch.lerp(x0, cand, top.unsqueeze(1))
    seg = (cand - x0).norm(dim=1)
    hi, lo = bisect_segments(query, x0, cand, found, tol, lo=lo_frac / top)
    new = torch.lerp(x0, cand, hi.unsqueeze(1))
    new_dist = (new - x0).norm(dim=1)
    improved = found & (new_dist < dist)
    gain = torch.where(improved, 1.0 - new_dist / dist.clamp_min(1e-12), torch.zeros_like(dist))
    lo_dist = torch.where(improved, seg * lo, lo_dist)
    adv = torch.where(improved.unsqueeze(1), new, adv)
    dist = torch.where(improved, new_dist, dist)
    return adv, dist, lo_dist, gain


def _orthonormal(v: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    v = v - (v * theta).sum(1, keepdim=True) * theta
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


#: A direction prior: ``prior(images (M, C, H, W), origins (M,), targets (M,) or None)`` returns, per image,
#: a direction (same shape) in which its pair's criterion should become adversarial fastest
#: (see :mod:`db3_timm.labelers.prior`).
DirectionPrior = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class BoundarySearchConfig:
    """Settings of :func:`minimize_boundary_distance`, checked on construction and serialisable (``asdict``).

    The defaults are the ``mbd`` labeler's; :data:`PLAIN_SEARCH` is the plain search ``zsdb3`` uses.

    Attributes:
        tol: relative tolerance of every bisection.
        probes, max_probes, probe_growth: probes per iteration grow as ``probes * it**probe_growth``, capped.
        delta: probe radius relative to the current distance.
        angle_checks: bisection queries of the plane angle search.
        probe_scale: probes drawn on a ``probe_scale`` times coarser grid (see :func:`estimate_normals`).
        min_probe_grid: 0: probes use two resolutions, the ``probe_scale`` times coarser grid and full
            resolution. N >= 1: a ladder of grids instead (:meth:`probe_ladder`), for large images: the
            coarsest with at least N pixels a side, each next one twice finer, down to full resolution.
        full_res_every: from iteration ``2 * full_res_every`` on, every ``full_res_every``-th iteration
            tries a neighbouring resolution (a finer or a coarser grid, in turn); the others use the
            resolution that gained most distance in its latest iteration (0: always the coarsest).
        fine_after: once the probing pairs have spent this many queries on average, probe at full resolution
            with radius ``fine_delta`` and bisect to ``fine_tol`` (0: never).
        fine_delta, fine_tol: the probe radius and tolerance of that fine regime.
        momentum: weight of the previous iteration's step direction added to the unit probe estimate
            (a heavy-ball average over iterations; 0: off).
        prior_stall: relative distance gain below which a prior step counts as stalled and random probes
            take over (0: walk the prior alone).
    """

    tol: float = 1e-3
    probes: int = 60
    max_probes: int = 300
    probe_growth: float = 0.5
    delta: float = 0.05
    angle_checks: int = 5
    probe_scale: int = 2
    min_probe_grid: int = 0
    full_res_every: int = 3
    fine_after: int = 1500
    fine_delta: float = 0.01
    fine_tol: float = 1e-5
    momentum: float = 0.25
    prior_stall: float = 0.01

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ValueError(f"boundary search option {name}={getattr(self, name)!r}: expected {expected}")

        for name in ("probes", "max_probes", "angle_checks", "probe_scale", "min_probe_grid", "full_res_every",
                     "fine_after"):
            value = getattr(self, name)
            check(name, isinstance(value, int) and not isinstance(value, bool), "an integer")
        for name in ("tol", "probe_growth", "delta", "fine_delta", "fine_tol", "momentum", "prior_stall"):
            value = getattr(self, name)
            check(name, isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                  "a finite number")
        check("tol", 0 < self.tol < 1, "a number in (0, 1)")
        check("fine_tol", 0 < self.fine_tol < 1, "a number in (0, 1)")
        check("probes", self.probes >= 1, "at least 1")
        check("max_probes", self.max_probes >= self.probes, f"at least probes ({self.probes})")
        check("probe_growth", self.probe_growth >= 0, "at least 0")
        check("delta", 0 < self.delta <= 1, "a number in (0, 1]")
        check("fine_delta", 0 < self.fine_delta <= 1, "a number in (0, 1]")
        check("angle_checks", self.angle_checks >= 1, "at least 1")
        check("probe_scale", self.probe_scale >= 1, "at least 1")
        check("min_probe_grid", self.min_probe_grid >= 0, "at least 0")
        check("full_res_every", self.full_res_every >= 0, "at least 0")
        check("fine_after", self.fine_after >= 0, "at least 0")
        check("momentum", self.momentum >= 0, "at least 0")
        check("prior_stall", self.prior_stall >= 0, "at least 0")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any], base: Optional["BoundarySearchConfig"] = None) -> "BoundarySearchConfig":
        """Returns ``base`` (default: the defaults) with ``options`` replaced; unknown keys are a ``TypeError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown boundary search option(s) {unknown}; known: {sorted(known)}")
        return replace(base or cls(), **dict(options))

    def to_dict(self) -> Dict[str, Any]:
        """Returns the options as a plain dict (for manifests and model cards)."""
        return asdict(self)

    def probe_ladder(self, image_shape: Sequence[int]) -> Tuple[int, ...]:
        """Returns the coarsening factors the probes choose among, coarsest first, ending at 1 (full resolution):
        ``(probe_scale, 1)``, or with ``min_probe_grid`` N every power of two whose grid keeps at least N pixels
        a side (N=8: ``(2, 1)`` at 28 px, ``(8, 4, 2, 1)`` at 96 px, ``(16, 8, 4, 2, 1)`` at 224 px)."""
        if self.min_probe_grid == 0:
            return (self.probe_scale, 1) if self.probe_scale > 1 else (1,)
        side, coarsest = min(int(image_shape[-2]), int(image_shape[-1])), 1
        while side // (2 * coarsest) >= self.min_probe_grid:
            coarsest *= 2
        return tuple(coarsest >> i for i in range(coarsest.bit_length()))


#: The plain search (full-resolution probes, no fine regime, no momentum, tolerance 1e-2) that ``zsdb3`` uses.
PLAIN_SEARCH = BoundarySearchConfig(tol=1e-2, probe_scale=1, full_res_every=0, fine_after=0, momentum=0.0)


class _SearchState:
    """Per-pair state of :func:`minimize_boundary_distance`: the best point, its distance and the search memory."""

    def __init__(self, query: PairQueries, x0: torch.Tensor, adv: torch.Tensor, active: torch.Tensor,
                 cfg: BoundarySearchConfig):
        P = x0.shape[0]
        dev = x0.device
        hi, lo = bisect_segments(query, x0, adv, active, cfg.tol, lo=torch.zeros(P, device=dev))
        self.query, self.x0, self.active, self.cfg = query, x0, active, cfg
        self.adv = torch.where(active.unsqueeze(1), torch.lerp(x0, adv, hi.unsqueeze(1)), adv)
        self.dist = (self.adv - x0).norm(dim=1)
        self.lo_dist = self.dist * lo / hi.clamp_min(1e-12)
        # A good prior can be far from theta: at radius dist the adversarial arc toward the normal spans
        # 2 * acos(d_min / dist), which exceeds 90 degrees while dist > 1.41 d_min (typical of BD starts).
        self.probe_turn, self.prior_turn = _Rotation(P, dev, math.pi / 2), _Rotation(P, dev, math.pi)
        self.reserve = cfg.angle_checks + 8
        # Mean relative distance gain of each resolution's latest iteration (coarsest first: it starts).
        self.ladder = cfg.probe_ladder(query.image_shape)
        self.gain = [math.inf] + [0.0] * (len(self.ladder) - 1)
        self.explored = 0
        self.prior_gain = torch.full((P,), math.inf, device=dev)
        self.last_step = torch.zeros_like(x0)  # per pair, the unit direction theta last moved in

    def live(self) -> torch.Tensor:
        """Pairs with budget for another iteration."""
        return self.active & (self.query.left() >= self.reserve + 8) & (self.dist > 0)

    def theta(self) -> torch.Tensor:
        """Unit directions from the samples to their current boundary points."""
        return (self.adv - self.x0) / self.dist.clamp_min(1e-12).unsqueeze(1)

    def rotate(self, g: torch.Tensor, pairs: torch.Tensor, turn: "_Rotation", tol: float) -> torch.Tensor:
        """Turns ``pairs`` toward unit proposals ``g`` (see :func:`_rotate`); returns the relative gain per pair."""
        self.adv, self.dist, self.lo_dist, gain = _rotate(self.query, self.x0, self.adv, self.dist, self.lo_dist,
                                                          self.theta(), g, pairs, turn, self.cfg.angle_checks, tol)
        return gain


def _prior_step(s: _SearchState, prior: DirectionPrior, live: torch.Tensor, it: int) -> torch.Tensor:
    """Tries the prior's direction on the pairs that still profit from it; returns the pairs left to probe."""
    # A prior that stopped paying is retried only every 4th iteration (it costs ~13 queries a try).
    asking = live & ((s.prior_gain >= s.cfg.prior_stall) | (it % 4 == 1))
    if not bool(asking.any()):
        return live
    p = asking.nonzero().squeeze(1)
    q = s.query
    hint = prior(s.adv[p].view(-1, *q.image_shape), q.origins[p], None if q.targets is None else q.targets[p])
    direction = torch.zeros_like(s.adv)
    direction[p] = hint.reshape(p.numel(), -1).to(s.adv.dtype)
    step = s.rotate(_orthonormal(direction, s.theta()), asking, s.prior_turn, s.cfg.tol)
    s.prior_gain = torch.where(asking, step, s.prior_gain)
    # While the prior keeps paying (one rotation ~ angle_checks + 8 queries), random probes
    # (dozens of queries) would only slow it down: probe only where it has stalled.
    return s.live() & ~(asking & (s.prior_gain >= s.cfg.prior_stall))


def _probe_step(s: _SearchState, probing: torch.Tensor, it: int, generator: torch.Generator) -> None:
    """One random-probe iteration for ``probing`` pairs: estimate the residual normal, turn toward it."""
    cfg, q = s.cfg, s.query
    P = s.x0.shape[0]
    want = torch.full((P,), min(cfg.max_probes, int(cfg.probes * it ** cfg.probe_growth)), device=s.x0.device)
    n_probes = torch.minimum(want, q.left() - s.reserve).clamp_min(0)
    theta = s.theta()
    centre = s.x0 + (0.5 * (s.dist + s.lo_dist)).unsqueeze(1) * theta  # middle of the bracket
    # Smooth probes converge fastest early on, but cannot see the normal's fine detail, so on their
    # own the distance stalls. Once the smooth part has had a few iterations, use the resolution whose
    # latest iteration gained more, and try the other one every `full_res_every`-th iteration.
    explore = cfg.full_res_every > 0 and it % cfg.full_res_every == 0 and it > cfg.full_res_every
    level = _probe_level(s, explore)
    # Late in a large budget the residual normal lives in fine detail: full-resolution probes at a
    # small radius and a tight tolerance see it.
    fine = cfg.fine_after > 0 and float(q.spent[probing].float().mean()) >= cfg.fine_after
    level = len(s.ladder) - 1 if fine else level
    g = estimate_normals(q, centre, probing, n_probes, (cfg.fine_delta if fine else cfg.delta) * s.dist, generator,
                         orthogonal_to=theta, probe_scale=s.ladder[level])
    if cfg.momentum:
        # On a curved boundary the normal moves with the point, so each estimate is a noisy look at a
        # moving target; the previous step keeps what earlier probes learned.
        g = _orthonormal(g, theta) + cfg.momentum * _orthonormal(s.last_step, theta)
    step = s.rotate(_orthonormal(g, theta), probing, s.probe_turn, cfg.fine_tol if fine else cfg.tol)
    s.gain[level] = float(step[probing].mean())


def _probe_level(s: _SearchState, explore: bool) -> int:
    """The ladder rung to probe at: the one whose latest iteration gained most (the coarser on ties), or on an
    ``explore`` iteration a neighbour of it, the finer and the coarser in turn."""
    best = max(range(len(s.ladder)), key=lambda i: (s.gain[i], -i))
    if not explore or len(s.ladder) == 1:
        return best
    s.explored += 1
    finer, coarser = best + 1, best - 1
    return finer if finer < len(s.ladder) and (coarser < 0 or s.explored % 2) else coarser


def minimize_boundary_distance(
    query: PairQueries,
    x0: torch.Tensor,
    adv: torch.Tensor,
    active: torch.Tensor,
    generator: torch.Generator,
    config: BoundarySearchConfig = BoundarySearchConfig(),
    *,
    prior: Optional[DirectionPrior] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """Shrinks each pair's adversarial point toward the nearest boundary until its budget is spent.

    The current best point ``x0 + dist * theta`` is on the boundary; ``theta`` is the running estimate of
    the boundary normal. One iteration per pair:

    1. With a ``prior``: rotate ``theta`` toward the prior's direction at the boundary point (the angle
       search of step 3, about ``angle_checks + 8`` queries; a useless prior costs only those). Pairs
       whose distance shrank by ``prior_stall`` or more skip steps 2-3 this iteration; pairs where it
       gained less retry the prior only every 4th iteration.
    2. Probe the boundary point with ``probes * it**growth`` random directions drawn *orthogonal to theta*
       (what is already known), so every answer is about the residual of the normal; their centred
       signs give a unit residual direction ``g`` (HopSkipJump's Monte-Carlo estimate, restricted to the
       complement of ``theta``).
    3. Rotate ``theta`` toward ``g`` (plus ``momentum`` times the previous iteration's step) by an angle
       search in their plane, then re-bracket the distance (see :func:`_rotate`): a few queries instead
       of a full bisection from the sample.

    With fresh orthogonal probes each iteration the residual angle shrinks geometrically
    (``sin^2 -> sin^2 * (1 - c^2)`` per iteration, ``c`` the probe estimate's accuracy) instead of the
    ``1 / (1 + N / K)`` of averaging all probe signs.

    Args:
        query: pair query function; iterations stop per pair when its budget runs out.
        x0: ``(P, D)`` samples.
        adv: ``(P, D)`` adversarial starting points.
        active: ``(P,)`` pairs to optimise.
        generator: random source on the data's device.
        config: the search settings.
        prior: optional :data:`DirectionPrior` (e.g. a white-box surrogate's margin gradient) tried first
            in every iteration.
        progress: optional callable ``(pairs_active)`` invoked once per iteration.

    Returns:
        ``(P, D)`` adversarial points (each verified by a query, or the input point when nothing better was found).
    """
    s = _SearchState(query, x0, adv, active, config)
    it = 0
    while True:
        it += 1
        live = s.live()
        if not bool(live.any()):
            break
        if progress is not None:
            progress(int(live.sum()))
        theta_before = s.theta()
        probing = _prior_step(s, prior, live, it) if prior is not None else live
        if bool(probing.any()):
            _probe_step(s, probing, it, generator)
        if config.momentum:
            theta = s.theta()
            moved = (theta - theta_before).norm(dim=1, keepdim=True) > 1e-9
            s.last_step = torch.where(moved, _orthonormal(theta - theta_before, theta), s.last_step)
    return s.adv


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
