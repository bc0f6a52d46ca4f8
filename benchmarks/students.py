"""Student accuracy from label-only soft labels vs hard labels and white-box KD, side by side.

LeNet-5-half students are trained on the same subset of real Fashion-MNIST training images with
  (a) the teacher's hard labels, (b) white-box KD on the teacher's logits, (c) DB3 soft labels
  from ``sd``, ``bd`` and ``mbd`` at the given budgets,
and scored on the full real test set. The table lists the teacher queries each student cost.

    python benchmarks/students.py --samples 1000 --budgets 100 250
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

from db3_timm import LabelOracle, create_labeler  # noqa: E402
from db3_timm.data import load_image_dataset  # noqa: E402
from db3_timm.distill import evaluate, fit, normalizer_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--budgets", type=int, nargs="+", default=[100, 250])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=1, help="students per row (different seeds); the mean is reported")
    ap.add_argument("--out", default="benchmarks/results/students.json")
    args = ap.parse_args()

    print(machine_info(), flush=True)
    teacher, teacher_acc = fmnist_teacher()
    train = load_image_dataset("fashion-mnist", "train")
    test = load_image_dataset("fashion-mnist", "test")
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.samples]
    x = train.images[idx]
    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=4096)
    print(f"teacher lenet5: test accuracy {teacher_acc:.2%}; students: lenet5_half on {args.samples} training images, "
          f"{args.epochs} epochs", flush=True)

    targets = []  # (name, labels, soft logits, queries, labelling seconds)
    hard = oracle(x)
    targets.append(("hard labels", hard, None, args.samples, 0.0))
    with torch.inference_mode():
        logits = teacher(normalizer_for(teacher)(x))
    targets.append(("white-box KD (teacher logits)", hard, logits.clone(), 0, 0.0))
    specs = [("sd", {})] + [(n, {"queries_per_target": q}) for q in args.budgets for n in ("bd", "mbd")]
    for name, cfg in specs:
        before, t = oracle.queries, time.perf_counter()
        soft = create_labeler(name, oracle, **cfg).label(x, (x, train.labels[idx]))
        spent, secs = oracle.queries - before, time.perf_counter() - t
        label = f"DB3 {name}" + (f" @{cfg['queries_per_target']}/target" if cfg else "")
        print(f"  {label}: {spent:,d} queries in {secs:.0f}s", flush=True)
        targets.append((label, soft.labels, soft.logits, spent, secs))

    rows = []
    for name, labels, soft_logits, spent, secs in targets:
        accs = []
        t = time.perf_counter()
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = timm.create_model("lenet5_half", num_classes=10)
            fit(model, x, labels, soft_logits, epochs=args.epochs, lr=2e-3, seed=seed)
            accs.append(evaluate(model, test.images, test.labels))
        acc = sum(accs) / len(accs)
        rows.append({"student": name, "accuracy": acc, "accuracies": accs, "queries": spent, "label_seconds": secs,
                     "train_seconds": time.perf_counter() - t})
        print(f"  {name:34s} acc {acc:.2%}  queries {spent:>11,d}", flush=True)

    print(f"\n| student (lenet5_half, {args.samples} FMNIST images) | test accuracy (final epoch) | teacher queries | labelling time |")
    print("|---|---|---|---|")
    print(f"| teacher lenet5 | {teacher_acc:.2%} | - | - |")
    for r in rows:
        print(f"| {r['student']} | {r['accuracy']:.2%} | {r['queries']:,d} | {r['label_seconds']:.0f}s |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "teacher_acc": teacher_acc, "samples": args.samples,
                               "epochs": args.epochs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
