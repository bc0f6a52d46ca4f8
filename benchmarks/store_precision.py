"""Does storing the teacher's answers at lower precision change them? And what do 8-bit queries cost?

Part 1 (store precision): a job's query store (the default plan's augmentations and mixes, and an ``mbd``
labeller's boundary probes) keeps float32 images. Re-ask the teacher about every stored image rounded to
float16 and to 8 bits: how many answers flip, by source? A flipped answer is a training row with a wrong label.

Part 2 (8-bit queries): ``LabelOracle(..., quantize="uint8")`` sends every query on the 8-bit grid, as an image
API would receive it. Compare ``mbd`` distances (median ratio to the float run, same pairs) at 100 and 400
queries per target.

    python benchmarks/store_precision.py --images 500 --out benchmarks/results/store_precision.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmnist_teacher, machine_info  # noqa: E402

from db3_timm import LabelOracle, create_labeler, load_image_dataset  # noqa: E402
from db3_timm._disk import read_columns  # noqa: E402
from db3_timm.labelers.base import References  # noqa: E402
from db3_timm.transfer.build import build_transfer_set  # noqa: E402
from db3_timm.transfer.plan import Plan, PlanStep  # noqa: E402


def flips(teacher, rows) -> dict:
    """Per source: rows, and answers that change when the stored image is rounded to float16 / 8 bits."""
    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=8192)
    x, y = rows["image"], rows["label"]
    out = {}
    for source in sorted(set(rows["source"])):
        keep = torch.tensor([s == source for s in rows["source"]])
        xs, ys = x[keep], y[keep]
        f16 = oracle(xs.half().float())
        u8 = oracle(xs.mul(255).round().div(255))
        out[source] = {"rows": int(keep.sum()), "float16_flips": int((f16 != ys).sum()), "uint8_flips": int((u8 != ys).sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--budget", type=int, default=50_000)
    ap.add_argument("--pairs-images", type=int, default=40, help="images whose mbd distances are compared in part 2")
    ap.add_argument("--out", default="benchmarks/results/store_precision.json")
    args = ap.parse_args()
    print(machine_info(), flush=True)
    teacher, acc = fmnist_teacher()
    train = load_image_dataset("fashion-mnist", "train")
    x = train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.images]]
    n, rest = args.images, args.budget - args.images
    qpt = rest // (2 * n * 9)
    plan = Plan("precision", [PlanStep("hard", n, ""), PlanStep("augment", rest // 4, ""),
                              PlanStep("mixes", rest // 4, ""),
                              PlanStep("db3", n * 9 * qpt, "", {"labeler": "mbd", "options": {"queries_per_target": qpt}})])
    with tempfile.TemporaryDirectory() as tmp:
        ts = build_transfer_set(LabelOracle.from_timm_model(teacher), plan, Path(tmp) / "t", images=x, progress=False)
        hard = ts.rows.filter(lambda r: r["kd_weight"] == 0)
        rows = {**read_columns(hard, ["image", "label"]), "source": hard["source"]}
    part1 = flips(teacher, rows)
    print("\n| source | stored answers | flipped at float16 | flipped at 8 bits |\n|---|---|---|---|")
    for source, r in part1.items():
        print(f"| {source} | {r['rows']:,} | {r['float16_flips']:,} ({r['float16_flips'] / r['rows']:.2%}) | "
              f"{r['uint8_flips']:,} ({r['uint8_flips'] / r['rows']:.2%}) |")

    part2 = []
    xs = x[:args.pairs_images]
    for q in (100, 400):
        dist = {}
        for mode in (None, "uint8"):
            oracle = LabelOracle.from_timm_model(teacher, quantize=mode)
            labels = oracle(x)
            refs = References(x, labels, 0)
            t0 = time.time()
            soft = create_labeler("mbd", oracle, queries_per_target=q).label(xs, refs, labels=labels[:args.pairs_images])
            d = soft.distances
            dist[mode] = (d, time.time() - t0)
        d32, d8 = dist[None][0], dist["uint8"][0]
        ok = torch.isfinite(d32) & torch.isfinite(d8) & (d32 > 0)
        ratio = (d8[ok] / d32[ok])
        part2.append({"queries_per_target": q, "pairs": int(ok.sum()), "median_ratio_uint8_to_float": float(ratio.median()),
                      "q25": float(ratio.quantile(0.25)), "q75": float(ratio.quantile(0.75))})
        print(f"mbd @{q}/target, {int(ok.sum())} pairs: 8-bit / float distance median {float(ratio.median()):.3f} "
              f"(q25 {float(ratio.quantile(0.25)):.3f}, q75 {float(ratio.quantile(0.75)):.3f})", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "teacher_acc": acc, "flips": part1, "distances": part2}, indent=2))


if __name__ == "__main__":
    main()
