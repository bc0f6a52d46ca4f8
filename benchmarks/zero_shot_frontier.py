"""Zero-shot students per teacher query: no real training image, every arm at equal budgets.

A ``lenet5`` teacher (Fashion-MNIST: ``_common.fmnist_teacher``; digits: trained on the spot), a ``lenet5_half``
student trained by the product's front door, ``db3_timm.distill_student(images=None, config=DistillConfig(plan=...))``
(Adam, lr 2e-3, cosine, batch 128, 60 epochs or 1.5M samples seen; final epoch), scored on the real test images:

* ``noise`` -- teacher-labelled smooth noise (the naive baseline);
* ``synth`` -- the ``synth`` generator's samples, the whole budget;
* ``synth+mixes`` -- the ``synth`` plan with a quarter of the budget on teacher-labelled mixes of its samples;
* ``noise+synth`` -- ``synth`` whose first 40 % of rounds are smooth noise (``noise_share``), warming the working
  student up before the generator steers;
* ``noise+synth 20%`` -- ``noise+synth`` with 20 % noise rounds instead of 40 %;
* ``noise+synth shift`` -- ``noise+synth`` whose generator loss and working student use 2-px shifts (the default
  before ``augment="none"`` was measured);
* ``noise+boundary`` -- ``synth`` with ``proposer="noise"``: smooth noise pushed toward the working student's
  boundaries every round, no generator;
* ``noise+synth rebalanced`` -- ``noise+synth`` aiming the generator at the classes the teacher has answered least
  (``targets="rare"``);
* ``synth IDEAL-scale`` -- ``synth`` at the published generator's scale: width 64, latent 256, 30 generator steps per
  round from a fresh generator (``reinit``), every class aimed at equally (``targets="balanced"``). Too slow for this
  CPU (minutes per round of 250 queries): a GPU arm (``--device cuda``);
* ``noise+offspring`` -- half the budget smooth noise, half its ``offspring``: children of two samples the teacher
  gave the same label (a blend plus smooth noise), the class drawn uniformly, in 4 generations. No model trained;
* ``noise stretched`` / ``noise+synth stretched`` -- ``noise`` / ``noise+synth`` whose noise is drawn on tall, wide
  and square grids (``noise_prior="stretched"``), not square ones only;
* ``noise stretched+offspring`` -- ``noise+offspring`` whose parents are stretched noise;
* ``noise elongated`` / ``noise elongated-fine`` -- ``noise`` with two priors this script adds to ``NOISE_PRIORS``
  (:func:`elongated_noise`, :func:`elongated_fine_noise`): thinner bars too, and finer detail on top. Measured no
  better than ``stretched``, so they stay here rather than in the library;
* ``noise stretched wd1e-3`` / ``wd3e-3`` -- ``noise stretched`` whose student trains with weight decay 1e-3 / 3e-3
  (Adam's L2 through timm's optimiser: not on biases);
* ``noise stretched 3M`` -- ``noise stretched`` whose student sees up to 3M samples instead of 1.5M (60 epochs of
  a 50k bank);
* ``zsdb3`` -- the paper's ZSDB3KD (plan ``zsdb3``) scaled to the budget (:func:`zsdb3_settings`): 40 % on the
  smooth-noise start pool, 40 % on growing ``budget / 250`` pseudo samples (4 iterations of 25 queries each), and
  MBD soft labels at 4 queries per pseudo sample and other class. Every answer is a training row.

Rows are appended to ``--out`` (JSON lines) and skipped when found there, so an interrupted run continues.
``--teacher-seed S`` trains the teacher the same way from another seed (cached beside the benchmark's) and tables
its rows apart, to show how much a figure owes to which teacher; the plot draws the benchmark's teacher only.

    python benchmarks/zero_shot_frontier.py --dataset fashion-mnist --budgets 20000 50000 --seeds 0 1 2 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, accuracy_axes, machine_info  # noqa: E402

from db3_timm.generators.priors import NOISE_PRIORS, STRETCHED_SCALES, smooth_noise  # noqa: E402


def zsdb3_settings(budget: int) -> tuple:
    """Returns ``(ZeroShotConfig settings, LabelingConfig settings)`` of the ``zsdb3`` arm at ``budget`` queries.

    The paper's schedule spends ~10^8 queries; here it gets the same budget as every other arm: 40 % start pool
    (noise answers, kept as rows), 40 % growing ``budget // 2500`` pseudo samples per class, the rest (at most
    14.4 %) on MBD soft labels of the pseudo samples. The plan refuses the budget if it does not fit.
    """
    pool = int(0.4 * budget)
    zero_shot = {"samples_per_class": max(1, budget // 2500), "iterations": 4, "queries_per_iteration": 25,
                 "options": {"start_pool": pool, "max_init_queries": pool}}
    return zero_shot, {"labeler": "mbd", "options": {"queries_per_target": 4}, "references_per_class": 0}


#: Grids of :func:`elongated_noise`: those of ``STRETCHED_SCALES`` and six thinner ones, up to 4:1.
ELONGATED_SCALES = STRETCHED_SCALES + ((12, 4), (4, 12), (14, 5), (5, 14), (7, 3), (3, 7))


def elongated_noise(n: int, shape: Sequence[int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Returns ``n`` images of ``smooth_noise`` drawn on :data:`ELONGATED_SCALES` grids (10 of 13 stretched)."""
    return smooth_noise(n, shape, generator, device, scales=ELONGATED_SCALES)


def elongated_fine_noise(n: int, shape: Sequence[int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Returns ``n`` images of :func:`elongated_noise` with finer detail: Gaussian noise drawn at half the
    resolution, upsampled and added (scale 0.7) before the squashing ``sigmoid``."""
    c, h, w = (int(v) for v in shape)
    x = elongated_noise(n, shape, generator, device)
    fine = torch.randn(n, c, max(1, h // 2), max(1, w // 2), generator=generator, device=device)
    fine = F.interpolate(fine, size=(h, w), mode="bicubic", align_corners=False)
    # Back to the pre-sigmoid values (clamped so saturated pixels stay finite), add the detail, squash again.
    return torch.sigmoid(torch.logit(x.clamp(1e-4, 1 - 1e-4)) + 0.7 * fine)


# Registered at import, so the worker processes (which import this module for run_one) know them too.
NOISE_PRIORS.update({"elongated": elongated_noise, "elongated-fine": elongated_fine_noise})


# The student's training in every arm, unless the arm overrides some of it (a third element in ARMS).
TRAIN = {"epochs": 60, "max_samples": 1_500_000, "lr": 2e-3, "batch_size": 128}

# arm -> (plan, ZeroShotConfig settings or a function of the budget returning them and LabelingConfig settings,
#         [TrainConfig settings that replace TRAIN's, or PRODUCT: DistillConfig's defaults for training and validation])
PRODUCT = "product defaults"
ARMS = {
    "noise": ("noise", {"noise_prior": "smooth"}),  # smooth by name: the plan's own default is stretched now
    "synth": ("synth", {"noise_share": 0.0}),
    "synth+mixes": ("synth", {"noise_share": 0.0, "mix_share": 0.25}),
    "noise+synth": ("synth", {"noise_share": 0.4}),
    "noise+synth 20%": ("synth", {"noise_share": 0.2}),
    "noise+synth shift": ("synth", {"noise_share": 0.4, "synth": {"augment": "shift"}}),
    "noise+boundary": ("synth", {"noise_share": 0.0, "synth": {"proposer": "noise"}}),
    "noise+synth rebalanced": ("synth", {"noise_share": 0.4, "synth": {"targets": "rare"}}),
    "synth IDEAL-scale": ("synth", {"noise_share": 0.0, "synth": {
        "targets": "balanced", "reinit": True, "width": 64, "latent_dim": 256, "generator_steps": 30,
        "generator_lr": 1e-3}}),
    "noise+offspring": ("noise", {"noise_prior": "smooth", "offspring_share": 0.5}),
    "noise stretched": ("noise", {"noise_prior": "stretched"}),
    "noise+synth stretched": ("synth", {"noise_share": 0.4, "noise_prior": "stretched"}),
    "noise stretched+offspring": ("noise", {"noise_prior": "stretched", "offspring_share": 0.5}),
    "noise elongated": ("noise", {"noise_prior": "elongated"}),
    "noise elongated-fine": ("noise", {"noise_prior": "elongated-fine"}),
    "noise stretched 3M": ("noise", {"noise_prior": "stretched"}, {"max_samples": 3_000_000}),
    "noise stretched wd1e-3": ("noise", {"noise_prior": "stretched"}, {"weight_decay": 1e-3}),
    "noise stretched wd3e-3": ("noise", {"noise_prior": "stretched"}, {"weight_decay": 3e-3}),
    # The product's training defaults before zero-shot runs got their own (TrainConfig(): 10 epochs at lr 1e-3).
    "noise stretched 10ep": ("noise", {"noise_prior": "stretched"}, {"epochs": 10, "max_samples": None, "lr": 1e-3}),
    # What `db3 distill --zero-shot --plan noise --noise-prior stretched` does: its training, 10 % of the answers held out.
    "noise stretched product": ("noise", {"noise_prior": "stretched"}, PRODUCT),
    "zsdb3": ("zsdb3", zsdb3_settings),  # its settings depend on the budget
}


# Published hard-label data-free students on Fashion-MNIST at 50k queries (issue #15's table: LeNet-5 teacher at
# ~90.9 %, 5 runs, re-run in a later paper). Plotted as reference points, not measured here.
PUBLISHED_FMNIST_50K = {"IDEAL": 82.84, "DFHL-RS": 83.89, "DIP-KD": 83.98}


def _key(r: dict) -> tuple:
    return (r["dataset"], r["budget"], r["arm"], r["seed"], r.get("teacher_seed", 0))


def _run_folder(work: Path, dataset: str, budget: int, arm: str, seed: int, teacher_seed: int = 0) -> Path:
    """Returns the folder one run resumes from and saves its student in (another teacher's runs end in ``_t{S}``)."""
    return Path(work) / f"{dataset}_b{budget}_{arm}_s{seed}{f'_t{teacher_seed}' if teacher_seed else ''}"


def run_one(job: dict) -> dict:
    """One zero-shot student: its arm, budget and seed."""
    import torch

    torch.set_num_threads(job["threads"])
    from zero_shot import teacher_for

    from db3_timm import DistillConfig, LabelOracle, TrainConfig, distill_student
    from db3_timm.transfer.build import LabelingConfig, ZeroShotConfig

    teacher, teacher_acc, test = teacher_for(job["dataset"], job["teacher_seed"])
    plan, settings, *train = ARMS[job["arm"]]
    settings, labeling = settings(job["budget"]) if callable(settings) else (settings, {})
    if train == [PRODUCT]:  # DistillConfig's own training and validation split, as a user gets them
        cfg = DistillConfig(plan=plan, zero_shot=ZeroShotConfig(**settings), labeling=LabelingConfig(**labeling),
                            evaluate_teacher=False)
    else:
        cfg = DistillConfig(plan=plan, zero_shot=ZeroShotConfig(**settings), labeling=LabelingConfig(**labeling),
                            val_fraction=0.0, evaluate_teacher=False,
                            train=TrainConfig(**{**TRAIN, **(train[0] if train else {})}, seed=job["seed"]))
    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=8192, device=job["device"])
    t0 = time.time()
    result = distill_student(oracle, "lenet5_half", None, job["budget"], job["work"], job["seed"],
                             test=(test.images, test.labels), config=cfg, dataset=job["dataset"], progress=False)
    done = json.loads((Path(job["work"]) / "results.json").read_text())
    return {"dataset": job["dataset"], "budget": job["budget"], "arm": job["arm"], "seed": job["seed"],
            "accuracy": result.test_accuracy, "teacher_accuracy": teacher_acc, "queries": result.queries["total"],
            "spent_now": oracle.queries, "train_rows": done["train_rows"], "wall_s": round(time.time() - t0, 1),
            "train_s": done["wall_s"], "device": job["device"],
            **({"teacher_seed": job["teacher_seed"]} if job["teacher_seed"] else {})}


def _runs(records: list) -> dict:
    """Returns the per-seed ``records`` grouped by ``(dataset, budget, arm, teacher seed)``."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["dataset"], r["budget"], r["arm"], r.get("teacher_seed", 0)), []).append(r)
    return groups


def table(records: list) -> str:
    """Returns the markdown table: mean ± sd over seeds per (budget, arm), with queries and wall time."""
    groups = _runs(records)
    lines = ["| data | budget | arm | student test accuracy (mean ± sd) | seeds | queries | wall time per run |",
             "|---|---|---|---|---|---|---|"]
    for (data, budget, arm, teacher), rs in sorted(groups.items(),
                                                   key=lambda kv: (kv[0][0], kv[0][3], kv[0][1], list(ARMS).index(kv[0][2]))):
        data = f"{data}, teacher seed {teacher}" if teacher else data
        acc = [100 * r["accuracy"] for r in rs]
        sd = f" ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
        wall = statistics.mean(r["wall_s"] for r in rs)
        where = "/".join(sorted({r.get("device", "cpu") for r in rs}))
        lines.append(f"| {data} | {budget:,} | {arm} | {statistics.mean(acc):.2f}{sd} % | {len(rs)} | "
                     f"{max(r['queries'] for r in rs):,} | {wall:,.0f} s{'' if where == 'cpu' else f' ({where})'} |")
    return "\n".join(lines)


def per_class(records: list, work: Path, budget: int) -> str:
    """Returns a markdown table: the teacher's and each saved ``budget`` student's accuracy per class on the real
    test images (the students are read back from their run folders with ``LabelOracle.from_timm``)."""
    from zero_shot import teacher_for

    from db3_timm import LabelOracle

    data = records[0]["dataset"]
    teacher, _, test = teacher_for(data)
    names = test.class_names or [str(c) for c in range(int(test.labels.max()) + 1)]

    def row(name: str, pred) -> str:
        hits = [100 * (pred[test.labels == c] == c).float().mean().item() for c in range(len(names))]
        total = 100 * (pred == test.labels).float().mean().item()
        return f"| {name} | " + " | ".join(f"{h:.1f}" for h in hits) + f" | {total:.2f} |"

    lines = ["| model | " + " | ".join(names) + " | all |", "|---" * (len(names) + 2) + "|",
             row("teacher", LabelOracle.from_timm_model(teacher)(test.images).cpu())]
    for r in sorted((r for r in records if r["budget"] == budget), key=lambda r: (list(ARMS).index(r["arm"]), r["seed"])):
        folder = _run_folder(work, data, budget, r["arm"], r["seed"], r.get("teacher_seed", 0)) / "model"
        if folder.is_dir():
            lines.append(row(f"{r['arm']} s{r['seed']}", LabelOracle.from_timm(f"local-dir:{folder}")(test.images).cpu()))
    return "\n".join(lines)


#: Rows whose per-seed records are gone, as their RESULTS tables give them (mean ± sd); ``--plot`` draws them too.
EARLIER_ROWS = REPO_ROOT / "benchmarks" / "zero_shot_rows.csv"
REFERENCES = REPO_ROOT / "benchmarks" / "results" / "zero_shot_references.jsonl"
#: The arms the plot draws (the rest are in the tables): the baselines, the defaults, the paper's method.
PLOT_ARMS = ("noise", "noise stretched", "noise+synth", "noise+offspring", "synth", "zsdb3")


def summaries(records: list, earlier: Path = EARLIER_ROWS) -> dict:
    """Returns ``{(dataset, arm): {mean queries: (mean %, sd %)}}`` from the per-seed ``records`` of one teacher,
    filled in from ``earlier`` (a CSV of table rows) where the records have no row for that dataset, budget and arm."""
    teachers = sorted({r.get("teacher_seed", 0) for r in records})
    if len(teachers) > 1:
        raise ValueError(f"summaries() takes the rows of one teacher, got teacher seeds {teachers}")
    groups = {k[:3]: rs for k, rs in _runs(records).items()}
    out: dict = {}
    for (data, _, arm), rs in groups.items():
        acc = [100 * r["accuracy"] for r in rs]
        queries = statistics.mean(r["queries"] for r in rs)
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        out.setdefault((data, arm), {})[queries] = (statistics.mean(acc), sd)
    if earlier.is_file():
        import csv

        for row in csv.DictReader(line for line in earlier.read_text().splitlines() if not line.startswith("#")):
            if (row["dataset"], int(row["budget"]), row["arm"]) not in groups:
                out.setdefault((row["dataset"], row["arm"]), {})[float(row["queries"])] = (float(row["mean"]),
                                                                                           float(row["sd"]))
    return out


def plot(records: list, path: Path, dataset: str = "fashion-mnist") -> None:
    """Student accuracy vs the queries spent (log x), one line per :data:`PLOT_ARMS` arm, mean ± sd over seeds;
    on Fashion-MNIST also the reference points (50k real images, IDEAL's protocol) and the published results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from db3_timm.transfer.plan import NOISE_FROM

    defaults = {"noise stretched": f" (default from {NOISE_FROM // 1000}k)",
                "noise+synth": f" (default under {NOISE_FROM // 1000}k)"}
    fig, ax = plt.subplots(figsize=(8.5, 4.2), dpi=120)
    lines = summaries(records)
    for arm in PLOT_ARMS:
        pts = lines.get((dataset, arm))
        if pts:
            xs = sorted(pts)
            ax.errorbar(xs, [pts[x][0] for x in xs], yerr=[pts[x][1] for x in xs], marker="o", capsize=3,
                        label=arm + defaults.get(arm, ""), linewidth=2.5 if arm in defaults else 1.2)
    refs = [json.loads(line) for line in REFERENCES.read_text().splitlines() if line.strip()] \
        if REFERENCES.is_file() else []
    if dataset == "fashion-mnist":
        for mode, label, marker in (("real", "50k real images (the ceiling)", "*"),
                                    ("ideal", "IDEAL's protocol, run here", "D")):
            rs = [r for r in refs if r["mode"] == mode]
            if rs:
                acc = [r["accuracy"] for r in rs]
                ax.errorbar([statistics.mean(r["queries"] for r in rs)], [statistics.mean(acc)], capsize=3,
                            yerr=[statistics.stdev(acc) if len(acc) > 1 else 0], marker=marker, markersize=9,
                            color="black", linestyle="none", label=label)
        for (name, acc), marker in zip(PUBLISHED_FMNIST_50K.items(), "^sv"):
            ax.plot([50_000], [acc], marker=marker, color="black", linestyle="none", markerfacecolor="none",
                    label=f"{name} (published, their teacher)")
    teacher = next((100 * r["teacher_accuracy"] for r in records if r["dataset"] == dataset), None)
    if teacher is not None:
        ax.axhline(teacher, color="gray", linestyle="--", label="teacher")
    accuracy_axes(ax, f"zero-shot lenet5_half, {dataset}", "teacher queries spent (no real image)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the lines fill the panel
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    ap.add_argument("--budgets", type=int, nargs="+", default=[20_000, 50_000])
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--device", default="cpu", help="where the teacher, the generator and the working student run "
                                                    "(the student trains where Accelerate puts it)")
    ap.add_argument("--teacher-seed", type=int, default=0,
                    help="train the teacher with this seed (same recipe; 0 is the benchmark's teacher, the only one "
                         "plotted); its rows are tabled apart")
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "zero_shot_frontier.jsonl"))
    ap.add_argument("--work", default=str(REPO_ROOT / "benchmarks" / "results" / "zero_shot_work"))
    ap.add_argument("--table", action="store_true", help="print the table of what --out holds, run nothing")
    ap.add_argument("--plot", default=None, help="also write the accuracy-vs-queries plot here (PNG)")
    ap.add_argument("--per-class", type=int, default=None, metavar="BUDGET",
                    help="also print each saved student's accuracy per class at this budget, beside the teacher's")
    args = ap.parse_args()
    out = Path(args.out)
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.is_file() else []
    if not args.table:
        done = {_key(r) for r in records}
        t = args.teacher_seed
        jobs = [{"dataset": args.dataset, "budget": b, "arm": a, "seed": s, "teacher_seed": t, "threads": args.threads,
                 "device": args.device,
                 "work": str(_run_folder(args.work, args.dataset, b, a, s, t))}
                for b in args.budgets for s in args.seeds for a in args.arms
                if (args.dataset, b, a, s, t) not in done]
        print(f"{len(jobs)} runs; machine: {machine_info()}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for future in as_completed([pool.submit(run_one, job) for job in jobs]):
                row = future.result()
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
                records.append(row)
    mine = [r for r in records if r["dataset"] == args.dataset]
    print(table(mine))
    benchmark_teacher = [r for r in mine if not r.get("teacher_seed")]  # other teachers are in the table only
    if args.plot:
        plot(benchmark_teacher, Path(args.plot), args.dataset)
    if args.per_class and benchmark_teacher:
        print(per_class(benchmark_teacher, Path(args.work), args.per_class))


if __name__ == "__main__":
    main()
