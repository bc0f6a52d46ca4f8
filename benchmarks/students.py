"""Student accuracy from label-only soft labels vs hard labels and white-box KD, side by side.

Students (LeNet-5-half, and any other ``--models``) are trained on the same subset of real
Fashion-MNIST training images with
  (a) the teacher's hard labels, (b) white-box KD on the teacher's logits (T=20 as the reference,
  and T=4), (c) DB3 soft labels from ``--labelers`` at the given budgets,
  (d) optionally a zero-shot transfer set saved by ``benchmarks/zero_shot.py --save`` (no real image),
and scored on the full real test set. Each row lists the teacher queries it cost and its wall time
(labelling + training). Accuracy is reported twice and labelled: at the final epoch, and at the
epoch picked on a held-out validation split of real training images (never the test set).

    python benchmarks/students.py --samples 1000 --budgets 100 250
    python benchmarks/students.py --samples 2000 --labelers mbd --budgets 100 \\
        --models lenet5_half lenet5_fifth --zero-shot benchmarks/results/zs_fashion-mnist_2000.safetensors
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
from db3_timm._preprocess import PixelTransform  # noqa: E402
from db3_timm.training import evaluate, fit  # noqa: E402


def train_student(arch, x, labels, soft, *, epochs, seed, temperature, val, test):
    """Returns (final test acc, test acc at the best validation epoch, best epoch, seconds)."""
    best = [-1.0, 0, 0.0]  # val acc, epoch, test acc at that epoch

    def on_epoch(epoch, model):
        v = evaluate(model, *val)
        if v > best[0]:
            best[:] = [v, epoch, evaluate(model, *test)]

    t = time.perf_counter()
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=10)
    fit(model, x, labels, soft, epochs=epochs, lr=2e-3, seed=seed, temperature=temperature, on_epoch=on_epoch)
    return evaluate(model, *test), best[2], best[1], time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--labelers", nargs="*", default=["sd", "bd", "mbd"])
    ap.add_argument("--skip-baselines", action="store_true", help="leave out rows (a) and (b)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[100, 250])
    ap.add_argument("--models", nargs="+", default=["lenet5_half"])
    ap.add_argument("--zero-shot", nargs="*", default=[], help="transfer sets saved by zero_shot.py --save")
    ap.add_argument("--epochs", type=int, default=60, help="epochs for small transfer sets")
    ap.add_argument("--train-images", type=int, default=1_500_000,
                    help="cap on images seen in training (epochs shrink for big transfer sets, at least 5)")
    ap.add_argument("--val", type=int, default=5000, help="held-out real training images for model selection")
    ap.add_argument("--seeds", type=int, default=1, help="students per row (different seeds); the mean is reported")
    ap.add_argument("--out", default="benchmarks/results/students.json")
    args = ap.parse_args()

    print(machine_info(), flush=True)
    teacher, teacher_acc = fmnist_teacher()
    train = load_image_dataset("fashion-mnist", "train")
    test = load_image_dataset("fashion-mnist", "test")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    idx, val_idx = perm[: args.samples], perm[-args.val:]
    x = train.images[idx]
    val, tst = (train.images[val_idx], train.labels[val_idx]), (test.images, test.labels)
    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=4096)
    print(f"teacher lenet5: test accuracy {teacher_acc:.2%}; students {', '.join(args.models)} on {args.samples} "
          f"training images, {args.epochs} epochs; {args.val} held-out training images for model selection", flush=True)

    # (name, images, labels, soft logits, temperature, queries, labelling seconds)
    targets = []
    t = time.perf_counter()
    hard = oracle(x)
    if not args.skip_baselines:
        targets.append(("(a) hard labels", x, hard, None, 20.0, args.samples, time.perf_counter() - t))
        with torch.inference_mode():
            logits = teacher(PixelTransform.for_model(teacher, resize_to_model="never")(x))
        for temp in (20.0, 4.0):
            targets.append((f"(b) white-box KD, T={temp:g}", x, hard, logits.clone(), temp, 0, 0.0))
    specs = [(n, {}) if n == "sd" else (n, {"queries_per_target": q}) for n in args.labelers for q in (
        [None] if n == "sd" else args.budgets)]
    for name, cfg in specs:
        before, t = oracle.queries, time.perf_counter()
        soft = create_labeler(name, oracle, **cfg).label(x, (x, train.labels[idx]))
        spent, secs = oracle.queries - before, time.perf_counter() - t
        label = f"(c) DB3 {name}" + (f" @{cfg['queries_per_target']}/target" if cfg else "")
        print(f"  {label}: {spent:,d} queries in {secs:.0f}s", flush=True)
        targets.append((label, x, soft.labels, soft.logits, 20.0, spent, secs))
    for path in args.zero_shot:
        from safetensors.torch import load_file

        zs = load_file(path)
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        rows_desc = f"{meta['samples']} pseudo samples + {meta.get('start_pool', 0):,d} start-pool images"
        targets.append((f"(d) zero-shot, {rows_desc}", zs["images"], zs["labels"],
                        zs["logits"], 20.0, int(meta["total_queries"]), float(meta["seconds"])))

    rows = []
    for name, images, labels, soft_logits, temp, spent, secs in targets:
        row = {"student": name, "queries": spent, "label_seconds": secs, "temperature": temp, "models": {}}
        epochs = max(5, min(args.epochs, -(-args.train_images // len(images))))
        row["epochs"] = epochs
        for arch in args.models:
            runs = [train_student(arch, images, labels, soft_logits, epochs=epochs, seed=s, temperature=temp,
                                  val=val, test=tst) for s in range(args.seeds)]
            final = sum(r[0] for r in runs) / len(runs)
            best = sum(r[1] for r in runs) / len(runs)
            row["models"][arch] = {"final": final, "best_on_val": best, "finals": [r[0] for r in runs],
                                   "best_epochs": [r[2] for r in runs], "train_seconds": sum(r[3] for r in runs) / len(runs)}
            print(f"  {name:38s} {arch:13s} final {final:.2%}  best-on-val {best:.2%}  queries {spent:>11,d}", flush=True)
        rows.append(row)

    cols = " | ".join(f"{a} final | {a} val-selected" for a in args.models)
    print(f"\n| transfer set ({args.samples} real FMNIST images unless zero-shot) | {cols} | teacher queries | wall time |")
    print("|---|" + "---|" * (2 * len(args.models)) + "---|---|")
    print("| teacher lenet5 | " + " | ".join(f"{teacher_acc:.2%} | -" for _ in args.models) + " | - | - |")
    for r in rows:
        accs = " | ".join(f"{r['models'][a]['final']:.2%} | {r['models'][a]['best_on_val']:.2%}" for a in args.models)
        wall = r["label_seconds"] + sum(m["train_seconds"] for m in r["models"].values())
        print(f"| {r['student']} | {accs} | {r['queries']:,d} | {wall:.0f}s |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "teacher_acc": teacher_acc, "samples": args.samples,
                               "epochs": args.epochs, "val": args.val, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
