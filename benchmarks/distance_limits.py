"""Where does the gap between label-only and white-box distances come from?

On the Fashion-MNIST LeNet-5 teacher (benchmarks/_common.py), for every (sample, other class) pair of N
correctly classified training images, side by side in one run (median ratio to the white-box FMN + C&W
minimum, benchmarks/whitebox.py):

  * ``mbd``: the library labeler on the real teacher, label queries only.
  * ``mbd, flattened boundary``: the same search (same BD start directions, same budget) against a
    teacher whose boundary toward t is replaced by the flat half-space through the white-box minimum
    (its normal is the white-box perturbation). Measures the search on the teacher's own normals
    without the boundary's curvature.
  * ``white-box walk``: the real teacher, every iteration rotating toward the teacher's own margin
    gradient at the current boundary point (``prior=teacher, prior_stall=0``: no random probes): a
    white-box descent along the boundary from the same BD start. Measures what the same start and
    step reach with exact normals.
  * ``best of k starts``: that white-box walk from each of the k nearest class-t references
    (``--basin-queries`` each), keeping the best: how much other starting points are worth.

    python benchmarks/distance_limits.py --samples 20 --budgets 250 1000 4000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import distance_setup, machine_info  # noqa: E402
from whitebox import PixelSpace, min_norm_targeted  # noqa: E402

from db3_timm import LabelOracle, create_labeler  # noqa: E402
from db3_timm.boundary import PLAIN_SEARCH, BoundarySearchConfig, PairQueries, bisect_to_boundary, minimize_boundary_distance  # noqa: E402
from db3_timm.labelers.bd import BoundaryDistanceLabeler, PairBatch  # noqa: E402
from db3_timm.labelers.mbd import MinimalBoundaryDistanceLabeler  # noqa: E402
from db3_timm.labelers.sd import nearest_by_class  # noqa: E402
from db3_timm.labelers.prior import SurrogatePrior  # noqa: E402


class HalfSpaceQueries(PairQueries):
    """Pair queries against one flat boundary per pair: adversarial iff ``(p - x0) . n >= d``."""

    def __init__(self, x0: torch.Tensor, normals: torch.Tensor, offsets: torch.Tensor, image_shape, budget: int):
        P = x0.shape[0]
        super().__init__(None, image_shape, torch.zeros(P, dtype=torch.long), torch.ones(P, dtype=torch.long), budget)
        self.x0, self.normals, self.offsets = x0, normals, offsets

    def __call__(self, points: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        self.spent.index_add_(0, pairs, torch.ones_like(pairs))
        return ((points - self.x0[pairs]) * self.normals[pairs]).sum(1) >= self.offsets[pairs]


class _KeepStarts(MinimalBoundaryDistanceLabeler):
    """``mbd`` that keeps the BD start points it refines (for the flattened run)."""

    def _search(self, x, pairs, refs, query, generator):
        points, found, info = BoundaryDistanceLabeler._search(self, x, pairs, refs, query, generator)
        self.starts = points.clone()
        points = minimize_boundary_distance(query, pairs.x0, points, found, generator, self.search)
        return points, found, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--budgets", type=int, nargs="+", default=[250, 1000, 4000])
    ap.add_argument("--references", type=int, default=2000, help="training images serving as references")
    ap.add_argument("--starts", type=int, nargs="+", default=[1, 3, 10], help="k of the best-of-k-starts rows")
    ap.add_argument("--basin-queries", type=int, default=300, help="queries of each white-box descent")
    ap.add_argument("--out", default="benchmarks/results/distance_limits.json")
    args = ap.parse_args()
    torch.set_num_threads(1)

    teacher, acc, refs, x, y = distance_setup(args.samples, args.references)
    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=4096)
    pairs = PairBatch(x, y, 10)
    wb, details = min_norm_targeted(PixelSpace(teacher), x[pairs.sample], pairs.target, return_details=True)
    normals = details["delta"].flatten(1)
    normals = normals / normals.norm(dim=1, keepdim=True)
    print(f"white-box FMN + C&W: {len(wb)} pairs, median distance {wb.median():.3f}", flush=True)

    rows = []

    def report(name, q, dist):
        ratio = dist / wb
        rows.append({"row": name, "queries_per_target": q, "median_ratio": float(ratio.median()),
                     "q25": float(ratio.quantile(0.25)), "q75": float(ratio.quantile(0.75))})
        print(f"{name:34s} {q:>5}: median {ratio.median():.3f} (q25 {ratio.quantile(0.25):.3f}, q75 {ratio.quantile(0.75):.3f})",
              flush=True)

    checked = create_labeler("sd", oracle).check_references(*refs)
    for q in args.budgets:
        lab = _KeepStarts(oracle, queries_per_target=q)
        t = time.time()
        soft = lab.label(x, checked)
        report("mbd (label queries only)", q, soft.distances[pairs.sample, pairs.target])
        print(f"  {time.time() - t:.0f}s", flush=True)

        # Same start directions, flat boundary through the white-box minimum.
        u = lab.starts - pairs.x0
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
        along = (u * normals).sum(1)
        start = (pairs.x0 + (1.02 * wb / along.clamp_min(1e-6)).unsqueeze(1) * u).clamp(0, 1)
        flat = HalfSpaceQueries(pairs.x0, normals, wb, pairs.image_shape, q)
        valid = ((start - pairs.x0) * normals).sum(1) >= wb
        end = minimize_boundary_distance(flat, pairs.x0, start, valid, torch.Generator().manual_seed(lab.seed), lab.search)
        report("mbd, flattened boundary", q, torch.where(valid, (end - pairs.x0).norm(dim=1), torch.inf))

        soft = create_labeler("mbd", oracle, queries_per_target=q, prior=teacher, prior_stall=0.0).label(x, checked)
        report("white-box walk (exact normals)", q, soft.distances[pairs.sample, pairs.target])

    # White-box walks from the boundary along each of the k nearest class-t references.
    prior = SurrogatePrior(teacher)
    k_max = max(args.starts)
    _, ref_idx = nearest_by_class(x, checked, 10, k=k_max)
    ref_idx = ref_idx[pairs.sample, pairs.target]
    found = torch.full((len(wb), k_max), torch.inf)
    for j in range(k_max):
        ok = ref_idx[:, j] >= 0
        query = PairQueries(oracle, pairs.image_shape, pairs.origin, pairs.target, args.basin_queries)
        b = bisect_to_boundary(query, pairs.x0, checked.images.flatten(1)[ref_idx[:, j].clamp_min(0)], ok, 1e-3)
        walk = BoundarySearchConfig.from_dict({"tol": 1e-3, "prior_stall": 0.0}, base=PLAIN_SEARCH)
        end = minimize_boundary_distance(query, pairs.x0, b, ok, torch.Generator().manual_seed(j), walk, prior=prior)
        found[:, j] = torch.where(ok, (end - pairs.x0).norm(dim=1), torch.inf)
    for k in args.starts:
        report(f"white-box walk, best of {k} starts", args.basin_queries * k, found[:, :k].min(1).values)

    print("\n| row | queries/target | median ratio to white-box | q25 | q75 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['queries_per_target']} | {r['median_ratio']:.3f} | {r['q25']:.3f} | {r['q75']:.3f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "teacher_acc": acc, "pairs": len(wb), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
