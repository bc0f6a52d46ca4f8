"""Top-k targets: search only the k classes each image most likely borders, at equal budgets.

Fashion-MNIST ``lenet5`` teacher (``_common.fmnist_teacher``), N real training images (the frontier benchmark's
seeded subsets), the paper's DB3KD (``plan="paper"``: ``mbd`` soft labels, the student trains on them only).
Every arm gets the same budget, ``N * (1 + B)`` queries: ``targets="all"`` spends ``B / 9`` queries on each other
class, ``targets=k`` spends ``B / k`` on each of k classes chosen by reference distance (no query). Reported:

* the student (``lenet5_half``, trained as in ``frontier.py``) on the 10,000 test images;
* distances, on the first ``--distance-images`` images: the median ratio of the nearest boundary each arm found
  to the nearest boundary the ``all`` arm found (below 1: top-k found nearer boundaries), and how often the
  ``all`` arm found its nearest boundary toward the same class.

    python benchmarks/top_k.py --images 500 --per-image 180 900 --ks 1 2 3 5 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, fmnist_teacher, machine_info  # noqa: E402

from db3_timm import DistillConfig, LabelingConfig, LabelOracle, TrainConfig, create_labeler, distill_student  # noqa: E402
from db3_timm import load_image_dataset  # noqa: E402
from db3_timm.labelers.base import References  # noqa: E402
from db3_timm.sources.soft import references_per_class  # noqa: E402


def nearest(teacher, images, targets, qpt, seed) -> tuple:
    """Returns ``(nearest distance (N,), nearest class (N,), searched (N, C) or None)`` from ``mbd`` on ``images``."""
    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=8192)
    labeler = create_labeler("mbd", oracle, queries_per_target=qpt, targets=targets, seed=seed)
    labels = oracle(images)
    idx = references_per_class(labels, 10, 10)
    soft = labeler.label(images, References(images[idx], labels[idx]), labels=labels)
    d = soft.distances.scatter(1, soft.labels.view(-1, 1), torch.inf)
    return d.min(1).values, d.argmin(1), soft.searched


def run(teacher, train, test, n, per_image, k, seed, args) -> dict:
    images = train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]]
    targets = "all" if k == 9 else k
    cfg = DistillConfig(plan="paper", labeling=LabelingConfig("mbd", options={"targets": targets}), val_fraction=0.0,
                        evaluate_teacher=False,
                        train=TrainConfig(epochs=60, max_samples=1_500_000, lr=2e-3, batch_size=128, seed=seed))
    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=8192)
    out = Path(args.work) / f"n{n}_s{seed}_b{per_image}_k{k}"
    t0 = time.time()
    result = distill_student(oracle, "lenet5_half", images, n * (1 + per_image), out, seed, test=(test.images, test.labels),
                             config=cfg, dataset="fashion-mnist", progress=False)
    wall = time.time() - t0
    qpt = per_image // k
    m = args.distance_images
    dist, cls, searched = nearest(teacher, images[:m], targets, qpt, seed)
    return {"images": n, "seed": seed, "per_image": per_image, "k": k, "queries_per_target": qpt,
            "accuracy": result.test_accuracy, "queries": result.queries["total"], "wall_s": round(wall, 1),
            "nearest": dist.tolist(), "nearest_class": cls.tolist()}


def table(records: list) -> str:
    """Mean +- sd over seeds per (budget, k); distance ratios against the ``all`` arm of the same seed."""
    lines = ["| budget per image | targets | queries per target | student (mean ± sd) | seeds | nearest boundary ÷ all's "
             "(median) | same nearest class as all | teacher queries | wall time |", "|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in records:
        groups.setdefault((r["images"], r["per_image"], r["k"]), []).append(r)
    base = {(r["images"], r["per_image"], r["seed"]): r for r in records if r["k"] == 9}
    for (n, b, k), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        accs = [100 * r["accuracy"] for r in rs]
        ratios, hits = [], []
        for r in rs:
            ref = base.get((n, b, r["seed"]))
            if ref is None:
                continue
            ratios += [a / max(c, 1e-12) for a, c in zip(r["nearest"], ref["nearest"])]
            hits += [a == c for a, c in zip(r["nearest_class"], ref["nearest_class"])]
        ratio = f"{statistics.median(ratios):.3f}" if ratios else "not measured"
        hit = f"{100 * sum(hits) / len(hits):.0f} %" if hits else "not measured"
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        lines.append(f"| {b} | {'all (9)' if k == 9 else k} | {rs[0]['queries_per_target']} | {statistics.mean(accs):.2f} "
                     f"± {sd:.2f} % | {len(rs)} | {ratio} | {hit} | {statistics.mean(r['queries'] for r in rs):,.0f} | "
                     f"{statistics.mean(r['wall_s'] for r in rs):.0f} s |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--per-image", type=int, nargs="+", default=[180, 900],
                    help="queries per image beyond its label (a multiple of 9 and of every k)")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--distance-images", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=str(REPO_ROOT / "benchmarks/results/top_k_work"))
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/top_k.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_info(), flush=True)
    teacher, _ = fmnist_teacher(verbose=False)
    train, test = load_image_dataset("fashion-mnist", "train"), load_image_dataset("fashion-mnist", "test")
    out = Path(args.out)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    keys = {(r["images"], r["per_image"], r["k"], r["seed"]) for r in done}
    with out.open("a") as fh:
        for seed in args.seeds:
            for b in args.per_image:
                for k in [9, *args.ks]:
                    if (args.images, b, k, seed) in keys:
                        continue
                    r = run(teacher, train, test, args.images, b, k, seed, args)
                    fh.write(json.dumps(r) + "\n")
                    fh.flush()
                    done.append(r)
                    print(f"seed {seed} budget {b}/image k={k}: {100 * r['accuracy']:.2f} %, {r['queries']:,} queries, "
                          f"{r['wall_s']:.0f} s", flush=True)
    print(table(done))


if __name__ == "__main__":
    main()
