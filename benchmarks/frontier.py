"""The best student per teacher query: every plan side by side at equal budgets, with real images.

Fashion-MNIST ``lenet5`` teacher (``_common.fmnist_teacher``), students ``lenet5_half`` / ``lenet5_fifth``, N real
training images (a seeded random subset), budgets of ``m x N`` queries. Every arm is the product's own front
door, ``db3_timm.distill_student`` with ``DistillConfig(plan=ARM)``, trained the same way (Adam, lr 2e-3, cosine,
batch 128, 60 epochs or 1.5M samples seen, whichever is less; final epoch, no selection), scored on the 10,000
real test images:

* ``hard`` -- the teacher's labels of the N images (N queries, whatever the budget);
* ``paper`` -- the paper's DB3KD: ``mbd`` soft labels, the budget split over the images' other classes;
* ``db3`` -- the same queries, every probe answer trained on too;
* ``mixes`` -- labels, then teacher-labelled mixes of two images;
* ``default`` -- the default plan;
* ``default-8bit`` -- the default plan with every query on the 8-bit grid (``LabelOracle(quantize="uint8")``).

A ``ceiling`` row trains the same students on the teacher's labels of all 60,000 real training images. Runs are
appended to ``--out`` (JSON lines) and skipped when found there, so an interrupted benchmark continues.

    python benchmarks/frontier.py --images 500 2000 --multipliers 1 10 100 1000 --seeds 0 1 2 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, accuracy_axes, fmnist_teacher, machine_info  # noqa: E402

ARMS = ("hard", "paper", "db3", "mixes", "default", "default-8bit")
STUDENTS = ("lenet5_half", "lenet5_fifth")


def _key(r: dict) -> tuple:
    return (r["images"], r["seed"], r["multiplier"], r["arm"], r["student"])


def run_one(job: dict) -> list:
    """One transfer set (one arm, budget, seed, N), and every student trained on it."""
    import torch

    torch.set_num_threads(job["threads"])
    from db3_timm import DistillConfig, LabelingConfig, LabelOracle, TrainConfig, distill_student, load_image_dataset
    from db3_timm.transfer.plan import BudgetTooSmallError

    teacher, _ = fmnist_teacher(verbose=False)
    train = load_image_dataset("fashion-mnist", "train")
    test = load_image_dataset("fashion-mnist", "test")
    if job["arm"] == "ceiling":
        images = train.images
    else:
        images = train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(job["seed"]))[:job["images"]]]
    plan = {"ceiling": "hard", "default-8bit": "default"}.get(job["arm"], job["arm"])
    cfg = DistillConfig(plan=plan, labeling=LabelingConfig("mbd"), val_fraction=0.0, evaluate_teacher=False,
                        train=TrainConfig(epochs=60, max_samples=1_500_000, lr=2e-3, batch_size=128, seed=job["seed"]))
    budget = len(images) if job["arm"] == "ceiling" else job["images"] * job["multiplier"]
    work = Path(job["work"])
    rows = []
    for student in job["students"]:
        oracle = LabelOracle.from_timm_model(teacher, max_batch_size=8192,
                                             quantize="uint8" if job["arm"] == "default-8bit" else None)
        out = work / student
        out.mkdir(parents=True, exist_ok=True)
        if student != job["students"][0] and not (out / "transfer").exists():
            os.symlink((work / job["students"][0] / "transfer").resolve(), out / "transfer")  # the same transfer set
        record = {"images": job["images"], "seed": job["seed"], "multiplier": job["multiplier"], "arm": job["arm"],
                  "student": student, "budget": budget}
        t0 = time.time()
        try:
            result = distill_student(oracle, student, images, budget, out, job["seed"], test=(test.images, test.labels),
                                     config=cfg, dataset="fashion-mnist", progress=False)
        except BudgetTooSmallError as err:
            rows.append({**record, "refused": str(err).splitlines()[0]})
            continue
        done = json.loads((out / "results.json").read_text())
        rows.append({**record, "accuracy": result.test_accuracy, "queries": result.queries["total"],
                     "spent_now": oracle.queries, "train_rows": done["train_rows"], "wall_s": round(time.time() - t0, 1),
                     "train_s": done["wall_s"], "epochs": result.training.epochs})
    return rows


def _jobs(args) -> list:
    done = set()
    if Path(args.out).is_file():
        done = {_key(json.loads(line)) for line in Path(args.out).read_text().splitlines() if line.strip()}
    jobs = []
    for n in args.images:
        for seed in args.seeds:
            for m in args.multipliers:
                for arm in args.arms:
                    if arm == "hard" and m != args.multipliers[0]:
                        continue  # hard labels spend N whatever the budget: one run per N and seed
                    students = [s for s in args.students if (n, seed, m, arm, s) not in done]
                    if students:
                        jobs.append({"images": n, "seed": seed, "multiplier": m, "arm": arm, "students": students,
                                     "threads": args.threads, "work": str(Path(args.work) / f"n{n}_s{seed}" / f"m{m}_{arm}")})
    if args.ceiling:
        for seed in args.seeds:
            students = [s for s in args.students if (60000, seed, 1, "ceiling", s) not in done]
            if students:
                jobs.append({"images": 60000, "seed": seed, "multiplier": 1, "arm": "ceiling", "students": students,
                             "threads": args.threads, "work": str(Path(args.work) / f"ceiling_s{seed}")})
    return jobs


def table(records: list) -> str:
    """Mean +- sd over seeds per (N, budget, arm, student), with mean queries and wall time."""
    groups: dict = {}
    for r in records:
        if "accuracy" in r:
            groups.setdefault((r["student"], r["images"], r["multiplier"], r["arm"]), []).append(r)
    lines = ["| student | N | budget | arm | accuracy (mean ± sd) | seeds | teacher queries | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for (student, n, m, arm), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], ARMS.index(kv[0][3])
                                                                           if kv[0][3] in ARMS else 99)):
        accs = [100 * r["accuracy"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        budget = "all 60k" if arm == "ceiling" else f"{m}×N = {m * n:,}"
        lines.append(f"| {student} | {n:,} | {budget} | {arm} | {statistics.mean(accs):.2f} ± {sd:.2f} % | {len(rs)} | "
                     f"{statistics.mean(r['queries'] for r in rs):,.0f} | {statistics.mean(r['wall_s'] for r in rs):.0f} s |")
    return "\n".join(lines)


def plot(records: list, path: Path) -> None:
    """Student accuracy vs teacher queries (log x), one panel per (student, N), one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["student"], r["images"]) for r in records if "accuracy" in r and r["arm"] != "ceiling"})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), dpi=120, squeeze=False)
    for ax, (student, n) in zip(axes[0], panels):
        for arm in ARMS:
            pts: dict = {}  # budget -> (queries, accuracies): seeds of one budget may spend a few queries less
            for r in records:
                if r.get("accuracy") is not None and (r["student"], r["images"], r["arm"]) == (student, n, arm):
                    q, accs = pts.setdefault(r["multiplier"], ([], []))
                    q.append(r["queries"] if arm != "hard" else n)
                    accs.append(100 * r["accuracy"])
            if pts:
                ms = sorted(pts)
                ax.errorbar([statistics.mean(pts[m][0]) for m in ms], [statistics.mean(pts[m][1]) for m in ms],
                            yerr=[statistics.stdev(pts[m][1]) if len(pts[m][1]) > 1 else 0 for m in ms], marker="o",
                            label=arm, capsize=3)
        ceiling = [100 * r["accuracy"] for r in records if r["arm"] == "ceiling" and r["student"] == student and "accuracy" in r]
        if ceiling:
            ax.axhline(statistics.mean(ceiling), color="gray", linestyle="--", label="all 60k real, hard labels")
        accuracy_axes(ax, f"{student}, {n:,} real images")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--multipliers", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--students", nargs="+", default=list(STUDENTS))
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--work", default=str(REPO_ROOT / "benchmarks/results/frontier_work"))
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/frontier.jsonl"))
    ap.add_argument("--plot", default=str(REPO_ROOT / "benchmarks/results/frontier.png"))
    args = ap.parse_args()
    print(machine_info(), flush=True)
    fmnist_teacher()  # trained once, before the workers load it
    jobs = _jobs(args)
    print(f"{len(jobs)} runs to do", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    import multiprocessing

    # Spawned workers: forking a process that has run OpenMP regions can deadlock them.
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool, \
            open(args.out, "a") as fh:
        for rows in pool.map(run_one, jobs):
            for r in rows:
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                print(json.dumps(r), flush=True)
    records = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    print(table(records))
    plot(records, Path(args.plot))
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
