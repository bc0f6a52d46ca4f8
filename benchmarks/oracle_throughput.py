"""How much does the LabelOracle wrapper cost? Bare teacher forward vs the oracle, images/s.

For each batch size, times side by side (interleaved repeats, alternating which one goes
first, median over repeats):

* **bare**: ``model(norm(x)).argmax(1)`` under ``torch.inference_mode()``, ``norm`` being
  the model's timm mean/std (:class:`db3_timm._preprocess.PixelTransform`);
* **oracle**: ``LabelOracle.from_timm_model(model)(x)`` (input checks, clamping, fused
  normalisation, query accounting).

The teacher is the cached Fashion-MNIST ``lenet5`` (:func:`benchmarks._common.fmnist_teacher`),
the inputs are real Fashion-MNIST test images. ``ratio`` = oracle / bare throughput
(1.0 = free). Results also go to ``benchmarks/results/oracle_throughput.json``.

    python benchmarks/oracle_throughput.py [--batch-sizes 64 256 1024 4096] [--repeats 15]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks._common import REPO_ROOT, fmnist_teacher, machine_info  # noqa: E402


def _rate(fn, x: torch.Tensor, min_seconds: float) -> float:
    """Images/s of ``fn(x)``, calling it until at least ``min_seconds`` have passed."""
    calls, t0 = 0, time.perf_counter()
    while True:
        fn(x)
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return calls * x.shape[0] / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    ap.add_argument("--repeats", type=int, default=15, help="interleaved timings per batch size")
    ap.add_argument("--min-seconds", type=float, default=0.1, help="minimum duration of one timing")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/oracle_throughput.json"))
    args = ap.parse_args()

    from db3_timm import LabelOracle
    from db3_timm.data import load_image_dataset
    from db3_timm._preprocess import PixelTransform

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(machine_info())
    load_before = os.getloadavg()[0]
    model, acc = fmnist_teacher(device=args.device)
    print(f"teacher: lenet5 on Fashion-MNIST, test acc {acc:.4f}, device {args.device}\n")
    norm = PixelTransform.for_model(model, resize_to_model="never")
    oracle = LabelOracle.from_timm_model(model)
    test = load_image_dataset("fashion-mnist", "test")
    gen = torch.Generator().manual_seed(0)

    def bare(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(norm(x)).argmax(1)

    rows = []
    header = f"{'batch':>6} {'bare img/s':>12} {'oracle img/s':>13} {'ratio':>7} {'ratio IQR':>13}"
    print(header)
    print("-" * len(header))
    for bs in args.batch_sizes:
        idx = torch.randint(len(test), (bs,), generator=gen)
        x = test.images[idx].to(args.device)
        if not torch.equal(bare(x).cpu(), oracle(x).cpu()):
            raise SystemExit(f"bare forward and oracle disagree on batch size {bs}")
        for _ in range(3):  # warm-up (allocator, oneDNN kernel choice)
            bare(x), oracle(x)
        b_rates, o_rates, ratios = [], [], []
        for r in range(args.repeats):
            pair = [(bare, b_rates), (oracle, o_rates)]
            for fn, sink in (pair if r % 2 == 0 else pair[::-1]):
                sink.append(_rate(fn, x, args.min_seconds))
            ratios.append(o_rates[-1] / b_rates[-1])
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
        row = {
            "batch_size": bs,
            "bare_img_s": statistics.median(b_rates),
            "oracle_img_s": statistics.median(o_rates),
            "ratio_median": statistics.median(ratios),
            "ratio_q1": q[0],
            "ratio_q3": q[2],
        }
        rows.append(row)
        print(f"{bs:>6} {row['bare_img_s']:>12,.0f} {row['oracle_img_s']:>13,.0f} {row['ratio_median']:>7.3f} "
              f"{'[' + format(q[0], '.3f') + ', ' + format(q[2], '.3f') + ']':>13}", flush=True)
    load = [load_before, os.getloadavg()[0]]
    print(f"\nratio = oracle / bare (median of {args.repeats} interleaved paired repeats, IQR in brackets); "
          f"oracle queries spent: {oracle.queries:,}; 1-min load average before/after: {load[0]:.1f}/{load[1]:.1f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": machine_info(), "teacher_test_acc": acc, "device": args.device,
                   "torch_threads": torch.get_num_threads(), "load_average_1min_before_after": load,
                   "repeats": args.repeats, "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
