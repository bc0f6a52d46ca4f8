"""Students at 96 px beside 28 px: the same plans, budgets and real images, one run.

Two teachers on Fashion-MNIST: the frontier's 28 px ``lenet5`` (``_common.fmnist_teacher``) and the 3x96x96
``mobilenetv3_small_050`` of ``high_resolution.py`` (the images upsampled, gray replicated to RGB). For each, N real
training images (the frontier's seeded subsets, upsampled for the 96 px teacher) go through the product's front
door, ``distill_student(oracle, STUDENT, images, budget, config=DistillConfig(plan=ARM))``:

* ``hard`` -- the teacher's labels of the N images (1 x N queries);
* ``paper`` -- the paper's DB3KD, ``mbd`` soft labels over the budget (m x N queries);
* ``default`` -- the default plan: labels, augmentations and mixes (m x N queries).

Each side has the student made for its size (``--student-28``: ``lenet5_half``, the frontier's; ``--student-96``: a
timm ``mobilenetv3_small_050``, ``in_chans`` from the images; a timm net that downsamples 32x is a poor fit for
28 px). Both train the same way (Adam, lr 2e-3, cosine, batch 128, 60 epochs or ``--max-samples`` samples seen,
whichever is less; final epoch) and are scored on the 10,000 real test images (upsampled for 96 px). The teachers
and students differ, so the comparable figures are each plan's gain over ``hard`` on its side and the student's
fraction of its teacher's test accuracy. Runs are appended to ``--out`` and skipped when found there, so an
interrupted benchmark continues.

    python benchmarks/high_resolution_students.py --images 500 --multiplier 10 --seeds 0 1 2 --max-samples 120000
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
from high_resolution import teacher96, upsampled  # noqa: E402

from db3_timm import DistillConfig, LabelingConfig, LabelOracle, TrainConfig, distill_student  # noqa: E402
from db3_timm import load_image_dataset  # noqa: E402
from db3_timm.training import evaluate  # noqa: E402

ARMS = ("hard", "default", "paper")
SIDES = {"28": "lenet5 28px", "96": "mobilenetv3 96px"}


def side_data(side: str, args) -> tuple:
    """``(teacher, teacher test accuracy, 28 px train images, test images, test labels)`` of one side, float in
    [0, 1] (test images at the side's size; train subsets are upsampled per run)."""
    train = load_image_dataset("fashion-mnist", "train")
    test = load_image_dataset("fashion-mnist", "test")
    if side == "28":
        teacher, _ = fmnist_teacher(verbose=False)
        return teacher, evaluate(teacher, test.images, test.labels), train.images, test.images, test.labels
    teacher, acc = teacher96(args.train_images, args.epochs)
    return teacher, acc, train.images, upsampled(test.images).float().div_(255), test.labels


def run_one(side: str, arm: str, seed: int, data: tuple, args) -> dict:
    """One transfer set and student; returns its JSON row."""
    teacher, teacher_acc, train_images, test_x, test_y = data
    n = args.images
    order = torch.randperm(60_000, generator=torch.Generator().manual_seed(seed))[:n]  # the frontier's subsets
    images = train_images[order] if side == "28" else upsampled(train_images[order]).float().div_(255)
    budget = n if arm == "hard" else n * args.multiplier
    cfg = DistillConfig(plan=arm, labeling=LabelingConfig("mbd"), val_fraction=0.0, evaluate_teacher=False,
                        train=TrainConfig(epochs=60, max_samples=args.max_samples, lr=2e-3, batch_size=128, seed=seed))
    oracle = LabelOracle.from_timm_model(teacher)
    out = Path(args.work) / f"{side}px_{arm}_m{budget // n}_s{seed}_cap{args.max_samples}"
    t0 = time.time()
    student = args.student_28 if side == "28" else args.student_96
    result = distill_student(oracle, student, images, budget, out, seed, test=(test_x, test_y), config=cfg,
                             dataset="fashion-mnist", progress=False)
    return {"side": side, "teacher": SIDES[side], "teacher_accuracy": teacher_acc, "student": student,
            "images": n, "arm": arm, "multiplier": 1 if arm == "hard" else args.multiplier, "seed": seed,
            "accuracy": result.test_accuracy, "queries": result.queries["total"], "spent_now": oracle.queries,
            "epochs": result.training.epochs, "max_samples": args.max_samples, "wall_s": round(time.time() - t0, 1)}


def _key(r: dict) -> tuple:
    return (r["side"], r["student"], r["images"], r["arm"], r["multiplier"], r["seed"], r["max_samples"])


def table(rows: list) -> str:
    """Mean +- sd over seeds per (side, arm), its gain over ``hard`` on the same side, beside the teacher's accuracy."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["side"], r["arm"], r["multiplier"]), []).append(r)
    mean = {k: statistics.mean(100 * r["accuracy"] for r in rs) for k, rs in groups.items()}
    lines = ["| teacher (test acc) | student | arm | budget | student acc (mean ± sd) | − hard | ÷ teacher | seeds | "
             "queries | wall |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (side, arm, m), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], ARMS.index(kv[0][1]))):
        accs = [100 * r["accuracy"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        t = 100 * rs[0]["teacher_accuracy"]
        hard = next((v for (s_, a, _), v in mean.items() if s_ == side and a == "hard"), None)
        gain = "" if arm == "hard" or hard is None else f"{statistics.mean(accs) - hard:+.2f}"
        lines.append(f"| {rs[0]['teacher']} ({t:.2f} %) | {rs[0]['student']} | {arm} | {m}×N = {m * rs[0]['images']:,} | "
                     f"{statistics.mean(accs):.2f} ± {sd:.2f} % | {gain} | {statistics.mean(accs) / t:.3f} | {len(rs)} | "
                     f"{statistics.mean(r['queries'] for r in rs):,.0f} | {statistics.mean(r['wall_s'] for r in rs):.0f} s |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--multiplier", type=int, default=10, help="budget m x N of the paper and default arms")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--student-28", default="lenet5_half")
    ap.add_argument("--student-96", default="mobilenetv3_small_050")
    ap.add_argument("--max-samples", type=int, default=120_000, help="training samples seen per student")
    ap.add_argument("--train-images", type=int, default=20_000, help="for the 96 px teacher (high_resolution.py)")
    ap.add_argument("--epochs", type=int, default=5, help="for the 96 px teacher (high_resolution.py)")
    ap.add_argument("--work", default=str(REPO_ROOT / "benchmarks/results/high_resolution_students"))
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/high_resolution_students.jsonl"))
    args = ap.parse_args()

    print(machine_info(), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.is_file() else []
    done = {_key(r) for r in rows}
    for side in args.sides:
        data = side_data(side, args)
        for seed in args.seeds:
            for arm in args.arms:
                student = args.student_28 if side == "28" else args.student_96
                probe = {"side": side, "student": student, "images": args.images, "arm": arm, "seed": seed,
                         "multiplier": 1 if arm == "hard" else args.multiplier, "max_samples": args.max_samples}
                if _key(probe) in done:
                    continue
                row = run_one(side, arm, seed, data, args)
                print(json.dumps(row), flush=True)
                with open(out, "a") as fh:
                    fh.write(json.dumps({**row, "machine": machine_info()}) + "\n")
                rows.append(row)
    wanted = [r for r in rows if r["student"] in (args.student_28, args.student_96) and r["images"] == args.images
              and r["max_samples"] == args.max_samples and r["side"] in args.sides]
    print(table(wanted))


if __name__ == "__main__":
    main()
