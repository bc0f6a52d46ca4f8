"""Zero-shot students (ZSDB3): test accuracy vs total teacher queries, no real training image used.

Real data is used only to train the teacher and for the final test. For each schedule the
pseudo samples are generated, soft-labelled with MBD against each other, and a LeNet-5-half
student is trained on them. The reference schedule's cost for the same number of samples
(40 iterations x 5,000 queries per step per sample) is printed beside ours.

    python benchmarks/zero_shot.py --dataset digits                 # minutes
    python benchmarks/zero_shot.py --dataset fashion-mnist          # CPU hour scale
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmnist_teacher, machine_info  # noqa: E402

import timm  # noqa: E402

from db3_timm import LabelOracle, create_generator, create_labeler  # noqa: E402
from db3_timm.data import load_image_dataset  # noqa: E402
from db3_timm.distill import evaluate, fit  # noqa: E402

# (samples per class, iterations, queries per iteration, MBD queries per target)
SCHEDULES = {
    "digits": [(20, 4, 100, 50), (50, 6, 200, 100), (100, 8, 300, 200)],
    "fashion-mnist": [(50, 5, 200, 100), (100, 10, 300, 200), (200, 15, 500, 300)],
}


def teacher_for(dataset: str):
    if dataset == "fashion-mnist":
        model, acc = fmnist_teacher()
        return model, acc, load_image_dataset("fashion-mnist", "test")
    train = load_image_dataset("digits", "train", image_size=28)
    test = load_image_dataset("digits", "test", image_size=28)
    model = timm.create_model("lenet5", num_classes=10)
    fit(model, train.images, train.labels, epochs=20, lr=2e-3, seed=0)
    return model, evaluate(model, test.images, test.labels), test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(SCHEDULES), default="digits")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--schedules", type=int, default=None, help="run only the first N schedules")
    ap.add_argument("--save", action="store_true",
                    help="also save each transfer set (images, labels, soft logits) for benchmarks/students.py --zero-shot")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    print(machine_info(), flush=True)
    teacher, teacher_acc, test = teacher_for(args.dataset)
    print(f"teacher lenet5 on {args.dataset}: test accuracy {teacher_acc:.2%}", flush=True)
    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=4096)
    rows = []
    for spc, iters, qpi, qpt in SCHEDULES[args.dataset][: args.schedules]:
        before, t = oracle.queries, time.perf_counter()
        pseudo = create_generator("zsdb3", oracle, seed=0).generate(spc, iters, qpi, progress=False)
        gen_q = oracle.queries - before
        soft = create_labeler("mbd", oracle, queries_per_target=qpt).label(pseudo.images, (pseudo.images, pseudo.labels))
        total = oracle.queries - before
        secs = time.perf_counter() - t
        model = timm.create_model("lenet5_half", num_classes=10)
        fit(model, pseudo.images, soft.labels, soft.logits, epochs=args.epochs, lr=2e-3, seed=0)
        acc = evaluate(model, test.images, test.labels)
        n = int(pseudo.labels.shape[0])
        row = {"samples_per_class": spc, "iterations": iters, "queries_per_iteration": qpi, "queries_per_target": qpt,
               "samples": n, "generation_queries": gen_q, "total_queries": total, "seconds": secs, "student_acc": acc,
               "reference_schedule_queries": n * 40 * 5000,
               "robustness_first_last": [float(pseudo.robustness[0].mean()), float(pseudo.robustness[-1].mean())]}
        rows.append(row)
        if args.save:
            from safetensors.torch import save_file

            path = Path(f"benchmarks/results/zs_{args.dataset}_{n}.safetensors")
            save_file({"images": pseudo.images.contiguous(), "labels": soft.labels, "logits": soft.logits.contiguous()}, str(path))
            path.with_suffix(".json").write_text(json.dumps(row, indent=2))
        print(f"  {spc}/class x {iters} it x {qpi} q/it, MBD @{qpt}: {total:,d} queries ({secs:.0f}s) -> student "
              f"{acc:.2%}  (reference schedule: {row['reference_schedule_queries']:,d} queries for {n} samples)", flush=True)
    print(f"\n| pseudo samples | total teacher queries | student test accuracy | reference-schedule queries |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['samples']} | {r['total_queries']:,d} | {r['student_acc']:.2%} | {r['reference_schedule_queries']:,d} |")
    out = Path(args.out or f"benchmarks/results/zero_shot_{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "teacher_acc": teacher_acc, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
