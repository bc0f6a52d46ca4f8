"""The GPU path: how close the labeller's query rate comes to the bare teacher forward, and what top-k costs.

On one device, side by side in one run, a timm teacher (random weights, 1000 classes; default ``resnet50`` at
224x224) at each precision (``fp32``; ``bf16`` + channels-last):

* **bare** -- ``model(norm(x)).argmax(1)`` under ``inference_mode`` on device-resident batches of ``--batch``;
* **oracle** -- ``LabelOracle.from_timm_model(model, precision=..., channels_last=...)`` on the same batches;
* **labeller** -- ``mbd`` at ``--qpt`` queries per target on ``--targets`` classes per image (no references:
  the classes come from noisy copies), images on the device: the oracle's queries per second of wall time,
  the search's own work included.

Ratios are to the bare forward at the same precision. Also checked: every image costs at most
``1 + selection + k * Q`` queries and has finite distances for exactly the classes it searched.

    python benchmarks/gpu.py                                   # on a GPU
    python benchmarks/gpu.py --device cpu --model resnet10t --size 64 --batch 64 --images 4 --qpt 20   # smoke
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, machine_info  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn, x: torch.Tensor, seconds: float) -> float:
    """Images/s of ``fn(x)`` over at least ``seconds`` (after one warm-up call)."""
    fn(x)
    _sync(x.device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(x)
        n += x.shape[0]
    _sync(x.device)
    return n / (time.perf_counter() - t0)


def labeller_rate(oracle, x: torch.Tensor, qpt: int, targets, memory_mb: int) -> dict:
    """Runs ``mbd`` on ``x``: queries/s of wall time, and the per-image cost and searched-class checks."""
    from db3_timm import create_labeler

    labeler = create_labeler("mbd", oracle, queries_per_target=qpt, targets=targets, chunk_memory_mb=memory_mb)
    start = oracle.queries
    _sync(x.device)
    t0 = time.perf_counter()
    soft = labeler.label(x)
    _sync(x.device)
    wall = time.perf_counter() - t0
    spent = oracle.queries - start
    others = soft.distances.scatter(1, soft.labels.view(-1, 1), torch.inf)
    finite = torch.isfinite(others)
    searched = soft.searched if soft.searched is not None else torch.ones_like(finite).scatter_(1, soft.labels.view(-1, 1), False)
    return {"queries": spent, "wall_s": round(wall, 2), "queries_per_s": spent / wall,
            "max_per_image": int(soft.queries.max()), "bound_per_image": 1 + labeler.queries_per_image(references=False),
            "searched_per_image": searched.sum(1).tolist(), "finite_exactly_searched": bool(torch.equal(finite, searched))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--images", type=int, default=64, help="images the labeller labels")
    ap.add_argument("--qpt", type=int, default=100, help="queries per searched class")
    ap.add_argument("--targets", default="5", help="classes searched per image ('all' or k)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--memory-mb", type=int, default=32768, help="the labeller's chunk_memory_mb")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/gpu.json"))
    args = ap.parse_args()
    import timm

    from db3_timm import LabelOracle
    from db3_timm._preprocess import PixelTransform

    device = torch.device(args.device)
    print(machine_info(), torch.cuda.get_device_name(device) if device.type == "cuda" else "", flush=True)
    targets = args.targets if args.targets == "all" else int(args.targets)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    rows = []
    for precision in args.precisions:
        model = timm.create_model(args.model, num_classes=1000).to(device).eval()
        fast = precision != "fp32"
        oracle = LabelOracle.from_timm_model(model, precision=precision, channels_last=fast, max_batch_size=args.batch)
        norm = PixelTransform.for_model(model)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

        def bare(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                z = norm(batch)
                return model(z.contiguous(memory_format=torch.channels_last) if fast else z).argmax(1)

        row = {"model": args.model, "size": args.size, "batch": args.batch, "precision": precision,
               "bare_img_s": rate(bare, x, args.seconds), "oracle_img_s": rate(oracle, x, args.seconds)}
        row["oracle_ratio"] = row["oracle_img_s"] / row["bare_img_s"]
        lab = labeller_rate(oracle, x[:args.images], args.qpt, targets, args.memory_mb)
        row.update({f"labeller_{k}": v for k, v in lab.items()})
        row["labeller_ratio"] = lab["queries_per_s"] / row["bare_img_s"]
        if device.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
        rows.append(row)
        print(f"{precision}: bare {row['bare_img_s']:,.0f} img/s, oracle {row['oracle_img_s']:,.0f} "
              f"(x{row['oracle_ratio']:.2f}), labeller {lab['queries_per_s']:,.0f} queries/s "
              f"(x{row['labeller_ratio']:.2f}); per image at most {lab['max_per_image']} of "
              f"{lab['bound_per_image']} allowed, finite distances exactly on the searched classes: "
              f"{lab['finite_exactly_searched']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
