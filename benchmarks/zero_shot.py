"""Zero-shot students (ZSDB3): test accuracy vs total teacher queries, no real training image used.

Real data is used only to train the teacher and for the final test. For each schedule the
pseudo samples are generated (start prior, push-away iterations), soft-labelled with MBD against
each other, the start pool (teacher-labelled start noise, plus teacher-labelled mixes of two images) is soft-labelled
with SD against the pseudo samples, and a LeNet-5-half student is trained on the union. The first row repeats the
smallest schedule with the paper's per-pixel start noise and no pool, side by side. The
reference schedule's cost for the same number of pseudo samples (40 iterations x 5,000 queries
per step per sample) is printed beside ours.

    python benchmarks/zero_shot.py --dataset digits                 # minutes
    python benchmarks/zero_shot.py --dataset fashion-mnist          # CPU hour scale
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TEACHER_DIR, fmnist_teacher, machine_info  # noqa: E402

import timm  # noqa: E402

from db3_timm import LabelOracle  # noqa: E402
from db3_timm.data import load_image_dataset  # noqa: E402
from db3_timm.training import evaluate, fit  # noqa: E402
from db3_timm.transfer.build import LabelingConfig, ZeroShotConfig, generate_zero_shot  # noqa: E402

# (start prior, samples per class, iterations, queries per iteration, MBD queries per target, start pool, mixes)
SCHEDULES = {
    "digits": [("reference", 20, 4, 100, 50, 0, 0), ("smooth", 20, 4, 100, 50, 5_000, 0),
               ("smooth", 50, 6, 100, 100, 20_000, 0), ("smooth", 100, 8, 100, 100, 50_000, 0)],
    "fashion-mnist": [("reference", 50, 5, 100, 100, 0, 0), ("smooth", 50, 5, 100, 100, 20_000, 0),
                      ("smooth", 100, 8, 100, 100, 100_000, 0), ("smooth", 100, 8, 100, 100, 400_000, 0),
                      ("smooth", 100, 8, 100, 100, 100_000, 50_000)],
}


def teacher_for(dataset: str, seed: int = 0):
    """Returns ``(teacher, test accuracy, test split)``: the benchmarks' ``lenet5`` (``seed`` 0), or one trained the
    same way from another seed (Fashion-MNIST: cached beside the first)."""
    if dataset == "fashion-mnist":
        model, acc = fmnist_teacher(TEACHER_DIR if seed == 0 else f"{TEACHER_DIR}_seed{seed}", seed=seed)
        return model, acc, load_image_dataset("fashion-mnist", "test")
    train = load_image_dataset("digits", "train", image_size=28)
    test = load_image_dataset("digits", "test", image_size=28)
    torch.manual_seed(seed)  # the same teacher in every process: its initialisation is seeded too
    model = timm.create_model("lenet5", num_classes=10)
    fit(model, train.images, train.labels, epochs=20, lr=2e-3, seed=seed)
    return model, evaluate(model, test.images, test.labels), test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(SCHEDULES), default="digits")
    ap.add_argument("--epochs", type=int, default=60, help="epochs for small transfer sets")
    ap.add_argument("--train-images", type=int, default=1_500_000,
                    help="cap on images seen in training (epochs shrink for big transfer sets, at least 5)")
    ap.add_argument("--kd-weight", type=float, default=1.0,
                    help="weight of the soft-label KD term (0: train on the teacher's labels only)")
    ap.add_argument("--schedules", type=int, nargs="*", default=None, help="run only these schedule rows (0-based)")
    ap.add_argument("--save", action="store_true",
                    help="also save each transfer set (images, labels, soft logits) for benchmarks/students.py --zero-shot")
    ap.add_argument("--out", default=None)
    ap.add_argument("--work", default="benchmarks/results/zero_shot_work",
                    help="where each schedule's transfer set is built (resumable; delete it for a fresh run)")
    args = ap.parse_args()

    print(machine_info(), flush=True)
    teacher, teacher_acc, test = teacher_for(args.dataset)
    print(f"teacher lenet5 on {args.dataset}: test accuracy {teacher_acc:.2%}", flush=True)
    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=4096)
    rows = []
    plan = SCHEDULES[args.dataset]
    for i in args.schedules if args.schedules is not None else range(len(plan)):
        start, spc, iters, qpi, qpt, pool, mixes = plan[i]
        t = time.perf_counter()
        work = Path(args.work) / f"{args.dataset}_{i}"
        zs = ZeroShotConfig(samples_per_class=spc, iterations=iters, queries_per_iteration=qpi,
                            options={"start": start, "start_pool": pool, "mixes": mixes})
        ts = generate_zero_shot(oracle, work, zs, LabelingConfig("mbd", {"queries_per_target": qpt}), progress=False)
        cols = ts.tensors()
        images, labels, logits = cols["image"], cols["label"], cols["soft_logits"]
        gen_q, total = ts.queries["generation"], ts.queries["total"]
        secs = time.perf_counter() - t
        n = ts.info["parts"][0]["rows"]
        robustness = json.loads((work / "generation.json").read_text())["mean_robustness"]
        epochs = max(5, min(args.epochs, math.ceil(args.train_images / len(images))))
        t = time.perf_counter()
        torch.manual_seed(0)
        model = timm.create_model("lenet5_half", num_classes=10)
        fit(model, images, labels, logits, epochs=epochs, lr=2e-3, seed=0, kd_weight=args.kd_weight)
        acc = evaluate(model, test.images, test.labels)
        row = {"start": start, "samples_per_class": spc, "iterations": iters, "queries_per_iteration": qpi,
               "queries_per_target": qpt, "start_pool": pool, "mixes": mixes, "samples": n, "transfer_rows": len(images),
               "generation_queries": gen_q, "total_queries": total, "seconds": secs, "epochs": epochs,
               "train_seconds": time.perf_counter() - t, "kd_weight": args.kd_weight, "student_acc": acc, "reference_schedule_queries": n * 40 * 5000,
               "robustness_first_last": [robustness[0], robustness[-1]] if robustness else []}
        rows.append(row)
        print(f"  start {start:9s} {spc}/class x {iters} it x {qpi} q/it, MBD @{qpt}, pool {pool:,d}, mixes {mixes:,d}: "
              f"{total:,d} queries "
              f"({secs:.0f}s) -> student {acc:.2%}  (reference schedule: {row['reference_schedule_queries']:,d} queries "
              f"for {n} samples)", flush=True)
        if args.save:
            from safetensors.torch import save_file

            path = Path(f"benchmarks/results/zs_{args.dataset}_{i}.safetensors")
            save_file({"images": images.contiguous(), "labels": labels, "logits": logits.contiguous()}, str(path))
            path.with_suffix(".json").write_text(json.dumps(row, indent=2))
    print("\n| start | pseudo samples | start pool | mixes | total teacher queries | student test accuracy | "
          "reference-schedule queries |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['start']} | {r['samples']} | {r['start_pool']:,d} | {r['mixes']:,d} | {r['total_queries']:,d} | "
              f"{r['student_acc']:.2%} | "
              f"{r['reference_schedule_queries']:,d} |")
    out = Path(args.out or f"benchmarks/results/zero_shot_{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "teacher_acc": teacher_acc, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
