"""The DB3KD paper's MBD refinement, Sign-OPT (Cheng et al., ICLR 2020), targeted L2, batched over pairs.

Written from the paper's description (and the behaviour of its reference settings) so that our
``mbd`` can be measured against it on the same pairs and the same starting points
(benchmarks/labeler_distances.py ``--labelers mbd signopt``).

Sign-OPT minimises ``g(theta)``: the distance from ``x0`` along the unit direction ``theta`` to the
target region. One iteration per pair:

1. Sign gradient: ``k`` random unit directions ``u``; each costs one query at
   ``x0 + g(theta) * normalise(theta + beta * u)``, whose answer is the sign of
   ``g(theta + beta u) - g(theta)`` (+1 when that point is *not* in the target class). The estimate
   is ``mean(sign * u)``.
2. Line search on ``normalise(theta - alpha * grad)``: while a step improves ``g``, keep it and double
   ``alpha``; if the first step fails, quarter ``alpha`` (up to ``max_trials`` times) until one
   improves. When ``alpha`` falls below ``1e-4`` it is reset to 1 and ``beta`` shrinks tenfold; a pair
   whose ``beta`` drops below ``1e-8`` stops.
3. ``g`` of a candidate direction is evaluated by the reference's fine-grained local search: one query
   at the current best ``g``; if that is not in the target class the candidate cannot win and is
   rejected (the reference would first walk upward by 1 % steps before rejecting it, which only costs
   queries); otherwise walk down by 1 % steps while still adversarial, then bisect to ``beta / 500``
   (absolute, as in the reference).

The tolerance matters: a probe moves the point along the boundary normal by about
``g * beta / sqrt(D)``, so ``g`` must be known far more precisely than that, or every probe lands in the
target region and the sign gradient is noise (``--selfcheck`` shows this with ``search_tol=1e-3``).

Queried points are clamped to ``[0, 1]``; the reported point is ``clamp(x0 + g * theta)``, a point the
teacher was asked about and answered with the target class. Every query goes through
:class:`db3_timm.boundary.PairQueries`, so per-pair budgets are exact.

    python benchmarks/reference_signopt.py --selfcheck
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/x.py` without an installed package

from db3_timm.boundary import PairQueries  # noqa: E402
from db3_timm.labelers.bd import BoundaryDistanceLabeler  # noqa: E402
from db3_timm.oracle import LabelOracle  # noqa: E402

__all__ = ["ReferenceSignOPTLabeler", "sign_opt", "local_value", "sign_gradient"]


def _points(x0: torch.Tensor, theta: torch.Tensor, lbd: torch.Tensor) -> torch.Tensor:
    """``clamp(x0 + lbd * theta)`` as float32 images: what is sent to the teacher, and what is reported."""
    return (x0 + lbd.unsqueeze(-1) * theta).clamp(0.0, 1.0).float()


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def local_value(
    query: PairQueries,
    x0: torch.Tensor,
    theta: torch.Tensor,
    start: torch.Tensor,
    active: torch.Tensor,
    tol_abs: torch.Tensor,
    tol_rel: float = 0.0,
    max_bisect: int = 64,
) -> torch.Tensor:
    """``g(theta)`` by the fine-grained local search, for every active pair at once.

    Args:
        query: pair query function (budgets respected).
        x0: ``(P, D)`` float64 samples.
        theta: ``(P, D)`` float64 unit directions.
        start: ``(P,)`` the current best distance: the first (and, for losers, only) query is there.
        active: ``(P,)`` pairs to evaluate.
        tol_abs, tol_rel: bisection stops when ``hi - lo <= max(tol_abs, tol_rel * hi)``.
        max_bisect: safety cap on bisection rounds (float rounding).

    Returns:
        ``(P,)`` float64: the smallest distance verified adversarial along ``theta``, ``inf`` where the
        point at ``start`` is not in the target class (or no query was left).
    """
    left = query.left
    idx = torch.arange(x0.shape[0], device=x0.device)
    hi = start.clone()
    good = torch.zeros_like(active)
    p = idx[active & (left() > 0)]
    if p.numel():
        good[p] = query(_points(x0[p], theta[p], hi[p]), p)
    lo = hi * 0.99
    stepping = good.clone()
    while True:  # walk down by 1 % while still adversarial
        p = idx[stepping & (left() > 0)]
        if not p.numel():
            break
        ok = query(_points(x0[p], theta[p], lo[p]), p)
        hi[p[ok]] = lo[p[ok]]
        lo[p[ok]] *= 0.99
        stepping[p[~ok]] = False
        stepping &= left() > 0
    for _ in range(max_bisect):
        tol = torch.maximum(tol_abs, tol_rel * hi)
        p = idx[good & (hi - lo > tol) & (left() > 0)]
        if not p.numel():
            break
        mid = 0.5 * (lo[p] + hi[p])
        ok = query(_points(x0[p], theta[p], mid), p)
        hi[p] = torch.where(ok, mid, hi[p])
        lo[p] = torch.where(ok, lo[p], mid)
    return torch.where(good, hi, torch.full_like(hi, math.inf))


def sign_gradient(
    query: PairQueries,
    x0: torch.Tensor,
    theta: torch.Tensor,
    g: torch.Tensor,
    n_dirs: torch.Tensor,
    beta: torch.Tensor,
    generator: torch.Generator,
    max_floats: int = 1 << 24,
) -> torch.Tensor:
    """Sign-OPT's gradient estimate ``mean(sign(g(theta + beta u) - g(theta)) * u)`` for every pair with ``n_dirs > 0``.

    The probes of all pairs go to the teacher together, in as few calls as ``max_floats`` (probe
    floats per call) allows.

    Returns:
        ``(P, D)`` float64 estimates (zero rows for pairs without probes).
    """
    P, D = x0.shape
    grad = torch.zeros_like(theta)
    p_all = (n_dirs > 0).nonzero().squeeze(1)
    if not p_all.numel():
        return grad
    kmax = int(n_dirs.max())
    chunk = max(1, max_floats // (kmax * D))
    for c in range(0, p_all.numel(), chunk):
        p = p_all[c:c + chunk]
        u = _unit(torch.randn(p.numel(), kmax, D, generator=generator, device=x0.device, dtype=theta.dtype))
        use = torch.arange(kmax, device=x0.device).unsqueeze(0) < n_dirs[p].unsqueeze(1)
        probe = _points(x0[p].unsqueeze(1), _unit(theta[p].unsqueeze(1) + beta[p].view(-1, 1, 1) * u),
                        g[p].view(-1, 1).expand(-1, kmax))
        adv = query(probe[use], p.unsqueeze(1).expand(-1, kmax)[use])
        sign = torch.zeros(p.numel(), kmax, dtype=theta.dtype, device=x0.device)
        sign[use] = 1.0 - 2.0 * adv.to(theta.dtype)  # in the target region: g would shrink -> -1
        grad[p] = torch.einsum("pk,pkd->pd", sign, u) / n_dirs[p].unsqueeze(1).to(theta.dtype)
    return grad


def sign_opt(
    query: PairQueries,
    x0: torch.Tensor,
    adv: torch.Tensor,
    active: torch.Tensor,
    generator: torch.Generator,
    *,
    k: int = 200,
    alpha: float = 0.2,
    beta: float = 1e-3,
    search_tol: Optional[float] = None,
    max_trials: int = 15,
    reserve: int = 15,
    max_floats: int = 1 << 24,
    progress=None,
) -> torch.Tensor:
    """Refines each pair's adversarial start with targeted Sign-OPT until its budget is spent.

    Args:
        query: pair query function (targeted); a pair stops when its budget is spent.
        x0: ``(P, D)`` samples.
        adv: ``(P, D)`` verified adversarial starts (``theta``, ``g`` are read off ``adv - x0``).
        active: ``(P,)`` pairs to refine.
        generator: random source.
        k: random directions per sign-gradient estimate.
        alpha, beta: initial step size and probe radius (per pair, adapted as in the reference).
        search_tol: ``None``: bisect ``g`` to ``beta / 500`` absolute (the reference); a float: relative.
        max_trials: line-search trials per phase.
        reserve: queries kept back from the gradient for the line search; a pair with no more than
            that left stops.
        max_floats: probe floats per teacher call.
        progress: optional callable ``(pairs_active)`` invoked once per iteration.

    Returns:
        ``(P, D)`` float32 adversarial points, each verified by a query (``adv`` where nothing better was found).
    """
    P, D = x0.shape
    dev = x0.device
    x0d = x0.double()
    g0 = (adv.double() - x0d).norm(dim=1)
    theta = _unit(adv.double() - x0d)
    alpha_t = torch.full((P,), float(alpha), dtype=torch.float64, device=dev)
    beta_t = torch.full((P,), float(beta), dtype=torch.float64, device=dev)
    rel = 0.0 if search_tol is None else float(search_tol)

    def tol_abs() -> torch.Tensor:
        return beta_t / 500.0 if search_tol is None else torch.zeros_like(beta_t)

    # Re-measure g at the start to the search tolerance (the start was bisected more coarsely).
    g = local_value(query, x0d, theta, g0, active & (g0 > 0), tol_abs(), rel)
    valid = torch.isfinite(g)
    done = ~valid
    while True:
        live = ~done & (query.left() > reserve)
        if not bool(live.any()):
            break
        if progress is not None:
            progress(int(live.sum()))
        n_dirs = torch.where(live, (query.left() - reserve).clamp(max=k), torch.zeros_like(query.left()))
        grad = sign_gradient(query, x0d, theta, g, n_dirs, beta_t, generator, max_floats)
        best_theta, best_g = theta.clone(), g.clone()
        # Grow the step while it keeps improving g (alpha doubles after every trial, as in the reference).
        trying = live.clone()
        for _ in range(max_trials):
            trying &= query.left() > 0
            if not bool(trying.any()):
                break
            cand = _unit(theta - alpha_t.unsqueeze(1) * grad)
            val = local_value(query, x0d, cand, best_g, trying, tol_abs(), rel)
            alpha_t = torch.where(trying, 2.0 * alpha_t, alpha_t)
            better = trying & (val < best_g)
            best_theta[better] = cand[better]
            best_g = torch.where(better, val, best_g)
            trying = better
        # No improvement at all: shrink the step until one improves.
        trying = live & (best_g >= g)
        for _ in range(max_trials):
            trying &= query.left() > 0
            if not bool(trying.any()):
                break
            alpha_t = torch.where(trying, 0.25 * alpha_t, alpha_t)
            cand = _unit(theta - alpha_t.unsqueeze(1) * grad)
            val = local_value(query, x0d, cand, best_g, trying, tol_abs(), rel)
            better = trying & (val < g)
            best_theta[better] = cand[better]
            best_g = torch.where(better, val, best_g)
            trying &= ~better
        stuck = live & (alpha_t < 1e-4)
        alpha_t = torch.where(stuck, torch.ones_like(alpha_t), alpha_t)
        beta_t = torch.where(stuck, 0.1 * beta_t, beta_t)
        done |= stuck & (beta_t < 1e-8)
        theta, g = best_theta, best_g
    out = adv.float().clone()
    if bool(valid.any()):
        out[valid] = _points(x0d[valid], theta[valid], g[valid])
    return out


class ReferenceSignOPTLabeler(BoundaryDistanceLabeler):
    """BD starts (exactly as ``mbd``'s), refined by the reference Sign-OPT instead of our direction search.

    Args:
        oracle: the label-only teacher.
        queries_per_target: exact query budget per (sample, class) pair, start search included.
        directions: nearest references tried for the start (``mbd``'s default).
        k, alpha, beta, search_tol, max_trials, reserve, max_floats: see :func:`sign_opt`.
        **kwargs: :class:`BoundaryDistanceLabeler` options.
    """

    name = "signopt"

    def __init__(
        self,
        oracle: LabelOracle,
        *,
        queries_per_target: int = 1000,
        directions: int = 10,
        k: int = 200,
        alpha: float = 0.2,
        beta: float = 1e-3,
        search_tol: Optional[float] = None,
        max_trials: int = 15,
        reserve: int = 15,
        max_floats: int = 1 << 24,
        max_pairs: int = 512,
        **kwargs: Any,
    ):
        super().__init__(oracle, queries_per_target=queries_per_target, directions=directions, max_pairs=max_pairs, **kwargs)
        self.opt = dict(k=int(k), alpha=float(alpha), beta=float(beta), search_tol=search_tol, max_trials=int(max_trials),
                        reserve=int(reserve), max_floats=int(max_floats))

    def config(self) -> Dict[str, Any]:
        cfg = super().config()
        cfg.update(self.opt)
        return cfg

    def _search(self, x, pairs, refs, query, generator):
        points, found, info = super()._search(x, pairs, refs, query, generator)
        return sign_opt(query, pairs.x0, points, found, generator, **self.opt), found, info


def selfcheck(budgets=(1000, 4000, 8000), shape=(1, 28, 28), n=8, spread=0.1) -> None:
    """Affine two-class teacher: distances must approach the closed form from above, within budget.

    The distances here are 0.02-0.2 (Fashion-MNIST's are 1-3); much smaller ones make the reference's
    absolute ``beta / 500`` tolerance too coarse for the sign probes and Sign-OPT stalls early.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    dim = math.prod(shape)
    w = torch.randn(2, dim, generator=g)
    b = -w.sum(1) * 0.5  # boundary through the middle of the box, far from its faces
    oracle = LabelOracle.from_callable(lambda x: (x.flatten(1) @ w.T + b).argmax(1), num_classes=2, input_size=shape)
    x = (0.5 + spread * torch.randn(n, *shape, generator=g)).clamp(0, 1)
    refs = torch.rand(400, *shape, generator=g)
    f = x.flatten(1) @ w.T + b
    y = f.argmax(1)
    truth = (f.max(1).values - f.min(1).values) / (w[0] - w[1]).norm()
    ok = True
    for tol_name, extra in (("beta/500 abs (reference)", {}), ("1e-3 relative", {"search_tol": 1e-3})):
        for q in budgets:
            lab = ReferenceSignOPTLabeler(oracle, queries_per_target=q, **extra)
            out = lab.label(x, refs)
            d = out.distances.gather(1, (1 - y)[:, None]).squeeze(1)
            ratio = d / truth
            start = BoundaryDistanceLabeler(oracle, queries_per_target=q).label(x, refs).distances
            start = start.gather(1, (1 - y)[:, None]).squeeze(1)
            fine = bool((ratio >= 1 - 1e-5).all()) and bool((out.queries <= q + 1).all())
            ok &= fine
            if not extra and q == max(budgets):
                ok &= bool(ratio.median() < 1.1)
            print(f"search tol {tol_name:>24s}, budget {q:5d}: ratio to closed form median {ratio.median():.4f} "
                  f"max {ratio.max():.4f} min {ratio.min():.6f} (BD start median {(start / truth).median():.3f}); "
                  f"queries max {int(out.queries.max())} <= {q + 1}: {'ok' if fine else 'FAIL'}")
    if not ok:
        raise SystemExit("selfcheck failed: a distance undercut the closed form, a budget was exceeded, "
                         "or the reference did not converge")
    print("selfcheck passed")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--selfcheck", action="store_true", help="run the affine-teacher check")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.selfcheck:
        selfcheck()
    else:
        ap.print_help()
