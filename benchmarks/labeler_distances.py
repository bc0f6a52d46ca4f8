"""How close do label-only distances get to a white-box minimum, and at what throughput?

Side by side in one run, on the Fashion-MNIST LeNet-5 teacher (benchmarks/_common.py):
  * white-box minimum-norm targeted L2 distances (FMN + C&W, benchmarks/whitebox.py) for every
    (sample, other class) pair of N correctly classified training images;
  * our SD / BD / MBD distances at several budgets, as the median ratio to the white-box distance;
  * with ``--prior ARCH``, MBD guided by a white-box surrogate: an ARCH model trained on the teacher's
    labels of the reference images (answers the reference check already paid for, so no extra queries);
  * optionally the DB3KD paper's reference refinement, Sign-OPT from the same BD starts
    (``--labelers mbd signopt``, benchmarks/reference_signopt.py);
  * throughput: the labeler's oracle images/s divided by the bare teacher's forward images/s at
    the same batch size, and the share of wall time spent inside the teacher.

    python benchmarks/labeler_distances.py --samples 100 --budgets 250 500 1000 2000 4000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import distance_setup, machine_info  # noqa: E402
from reference_signopt import ReferenceSignOPTLabeler  # noqa: E402
from whitebox import PixelSpace, min_norm_targeted  # noqa: E402

from db3_timm import LabelOracle, create_labeler  # noqa: E402
from db3_timm.data import load_image_dataset  # noqa: E402

#: Labelers that live in the benchmarks, not in the library registry.
BENCHMARK_LABELERS = {"signopt": ReferenceSignOPTLabeler}


def bare_forward_rate(model: torch.nn.Module, batch: int, seconds: float = 3.0) -> float:
    """Images/s of ``argmax(model(normalise(x)))`` under inference mode: the ceiling for any oracle."""
    from db3_timm._preprocess import PixelTransform

    norm = PixelTransform.for_model(model, resize_to_model="never")
    x = torch.rand(batch, 1, 28, 28)
    with torch.inference_mode():
        model(norm(x)).argmax(1)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            model(norm(x.clamp(0, 1))).argmax(1)
            n += batch
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--budgets", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    ap.add_argument("--references", type=int, default=2000, help="training images serving as references")
    ap.add_argument("--labelers", nargs="+", default=["sd", "bd", "mbd"],
                    help="labeler names (registered, or 'signopt' for the reference Sign-OPT), optionally with "
                         "settings as JSON: 'mbd{\"directions\": 2}'")
    ap.add_argument("--prior", metavar="ARCH", help="also run mbd guided by an ARCH surrogate fitted on the references")
    ap.add_argument("--prior-epochs", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/labeler_distances.json")
    args = ap.parse_args()

    teacher, acc, refs, x, y = distance_setup(args.samples, args.references)
    others = torch.ones(len(y), 10, dtype=torch.bool).scatter_(1, y[:, None], False)
    pair_sample, pair_target = others.nonzero(as_tuple=True)

    t = time.time()
    wb = min_norm_targeted(PixelSpace(teacher), x[pair_sample], pair_target)
    wb_time = time.time() - t
    print(f"white-box FMN + C&W: {len(wb)} pairs in {wb_time:.0f}s, median distance {wb.median():.3f}", flush=True)

    oracle = LabelOracle.from_timm_model(teacher, max_batch_size=4096)
    inner, in_teacher = oracle._predict, [0.0]

    def timed(batch: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = inner(batch)
        in_teacher[0] += time.perf_counter() - t0
        return out

    oracle._predict = timed
    specs, surrogate = list(args.labelers), None
    if args.prior:
        import timm

        from db3_timm.training import fit

        checked = create_labeler("sd", oracle).check_references(*refs)
        t = time.time()
        surrogate = fit(timm.create_model(args.prior, num_classes=10), checked.images, checked.labels,
                        epochs=args.prior_epochs, seed=0)
        with torch.no_grad():
            test = load_image_dataset("fashion-mnist", "test")
            agree = (PixelSpace(surrogate)(test.images).argmax(1) == PixelSpace(teacher)(test.images).argmax(1)).float().mean()
        print(f"surrogate {args.prior} on {len(checked.labels)} teacher-labelled references: agrees with the teacher on "
              f"{agree:.2%} of the test set ({time.time() - t:.0f}s)", flush=True)
        specs += ["mbd+prior" + spec[3:] for spec in args.labelers if spec.startswith("mbd")]
    rows = []
    for spec in specs:
        name, _, extra = spec.partition("{")
        extra_cfg = json.loads("{" + extra) if extra else {}
        if name == "mbd+prior":
            name, extra_cfg["prior"] = "mbd", surrogate
        for q in ([None] if name == "sd" else args.budgets):
            cfg = dict(extra_cfg) if q is None else {"queries_per_target": q, **extra_cfg}
            lab = BENCHMARK_LABELERS[name](oracle, **cfg) if name in BENCHMARK_LABELERS else create_labeler(name, oracle, **cfg)
            checked = lab.check_references(*refs)
            before, in_teacher[0] = oracle.queries, 0.0
            t = time.perf_counter()
            soft = lab.label(x, checked)
            wall = time.perf_counter() - t
            spent = oracle.queries - before
            ratio = soft.distances[pair_sample, pair_target] / wb
            row = {
                "labeler": spec, "queries_per_target": q, "median_ratio": float(ratio.median()),
                "p90_ratio": float(ratio.quantile(0.9)), "min_ratio": float(ratio.min()),
                "queries": spent, "seconds": wall, "queries_per_s": spent / wall,
                "teacher_share": in_teacher[0] / wall,
            }
            rows.append(row)
            print(f"{spec:9s} q/target {str(q):>5s}: median ratio {row['median_ratio']:.3f} (p90 {row['p90_ratio']:.3f}, "
                  f"min {row['min_ratio']:.3f}); {spent:,d} queries in {wall:.0f}s = {row['queries_per_s']:,.0f}/s, "
                  f"{row['teacher_share']:.0%} of the time in the teacher", flush=True)

    bare = bare_forward_rate(teacher, 4096)
    for row in rows:
        row["throughput_ratio"] = row["queries_per_s"] / bare
    print(f"\nbare teacher forward at batch 4096: {bare:,.0f} images/s")
    print("| labeler | queries/target | median ratio to white-box | p90 | queries/s | ÷ bare forward | time in teacher |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['labeler']} | {r['queries_per_target'] or '-'} | {r['median_ratio']:.3f} | {r['p90_ratio']:.3f} | "
              f"{r['queries_per_s']:,.0f} | {r['throughput_ratio']:.2f} | {r['teacher_share']:.0%} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "teacher_acc": acc, "samples": len(y), "pairs": len(wb),
                               "whitebox_seconds": wb_time, "bare_forward_per_s": bare, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
