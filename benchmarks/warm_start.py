"""What warm-starting the generator's boundary search saves, side by side on the same pseudo samples.

ZSDB3 pseudo samples are grown for a few iterations on the Fashion-MNIST LeNet-5 teacher; then, from
that same state, one nearest-boundary search runs warm-started from the previous iteration's
directions (our default) and cold (from the nearest pseudo sample of another class, as the reference
restarts every iteration) at several budgets. Every found distance is a real boundary crossing, so a
smaller mean distance is a better estimate; the saving is the cold budget needed to match warm.

    python benchmarks/warm_start.py --samples-per-class 50 --iterations 4 --budgets 100 200 400 800
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmnist_teacher, machine_info  # noqa: E402

from db3_timm import LabelOracle, create_generator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples-per-class", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--queries-per-iteration", type=int, default=100)
    ap.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--out", default="benchmarks/results/warm_start.json")
    args = ap.parse_args()

    print(machine_info(), flush=True)
    teacher, acc = fmnist_teacher()
    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=4096)
    gen = create_generator("zsdb3", oracle, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        gen.generate(args.samples_per_class, args.iterations, args.queries_per_iteration, out_dir=tmp, progress=False)
        from safetensors.torch import load_file

        state = load_file(str(Path(tmp) / "state.safetensors"))
    images, labels, warm = state["images"], state["labels"], state["warm"]
    pool = (images.flatten(1), labels)
    rows = []
    for budget in args.budgets:
        for name, w in (("warm", warm), ("cold", torch.zeros_like(warm))):
            g = torch.Generator().manual_seed(1)
            dist, _, spent, hits = gen._nearest_boundary(images, labels, w, pool, budget, g)
            found = torch.isfinite(dist)
            row = {"start": name, "budget": budget, "mean_distance": float(dist[found].mean()),
                   "median_distance": float(dist[found].median()), "found": float(found.float().mean()),
                   "warm_hits": hits, "queries": int(spent.sum())}
            rows.append(row)
            print(f"  budget {budget:5d} {name}: mean distance {row['mean_distance']:.4f} (median "
                  f"{row['median_distance']:.4f}), found {row['found']:.0%}, warm starts used {hits}", flush=True)
    print(f"\n{len(labels)} pseudo samples after {args.iterations} iterations; teacher test accuracy {acc:.2%}")
    print("| budget per sample | warm: mean distance | cold: mean distance | cold ÷ warm |")
    print("|---|---|---|---|")
    for b in args.budgets:
        w, c = (next(r for r in rows if r["start"] == s and r["budget"] == b)["mean_distance"] for s in ("warm", "cold"))
        print(f"| {b} | {w:.4f} | {c:.4f} | {c / w:.3f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "teacher_acc": acc, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
