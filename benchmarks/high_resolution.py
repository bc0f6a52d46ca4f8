"""Boundary distances at 96 px: does probing on a ladder of coarse grids help large inputs?

Side by side in one run: the 28 px Fashion-MNIST ``lenet5`` teacher (benchmarks/_common.py) and a timm
``mobilenetv3_small_050`` trained here on Fashion-MNIST upsampled to 3x96x96 (cached under
``benchmarks/results/``). For N correctly classified training images x 9 targets per teacher: the white-box
minimum (FMN + C&W, benchmarks/whitebox.py) and ``mbd`` distances at several budgets, as the median ratio to
it, for two probe schemes:

* ``two-level`` -- today's default: probes on a 2x coarser grid or at full resolution;
* ``ladder`` -- ``min_probe_grid=8``: grids from the coarsest with >= 8 px a side down to full resolution
  (``(2, 1)`` at 28 px, the same as two-level; ``(8, 4, 2, 1)`` at 96 px).

Measured (RESULTS.md, "High resolution: 96 px"): at 500 queries per target the ladder was worse at 96 px (median
ratio 34.3 against 28.2), so two levels stay the default.

    python benchmarks/high_resolution.py --samples 20 --budgets 500 --train-images 20000 --epochs 5 --teachers 96
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _common import REPO_ROOT, correct_subset, fmnist_teacher, machine_info
from whitebox import PixelSpace, min_norm_targeted

from db3_timm import LabelOracle, create_labeler
from db3_timm.data import load_image_dataset

TEACHER96_DIR = REPO_ROOT / "benchmarks/results/teacher_fmnist96_mobilenetv3_small_050"
SCHEMES = {"two-level": {}, "ladder": {"min_probe_grid": 8}}


def upsampled(images: torch.Tensor, size: int = 96) -> torch.Tensor:
    """Fashion-MNIST images as 3 x size x size uint8 (bilinear, antialiased; gray replicated to RGB)."""
    from db3_timm._preprocess import resize_square

    out = torch.empty(len(images), 3, size, size, dtype=torch.uint8)
    for s in range(0, len(images), 4096):
        part = resize_square(images[s:s + 4096], size)
        out[s:s + 4096] = part.mul(255).round_().to(torch.uint8).expand(-1, 3, -1, -1)
    return out


def teacher96(train_images: int, epochs: int) -> tuple:
    """The 96 px teacher: trained once on the first ``train_images`` Fashion-MNIST images, then reloaded."""
    import timm
    from timm.models import load_checkpoint, save_for_hf

    from db3_timm.training import evaluate, fit

    model = timm.create_model("mobilenetv3_small_050", num_classes=10, in_chans=3)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 96, 96), "num_classes": 10}
    test = load_image_dataset("fashion-mnist", "test")
    info = TEACHER96_DIR / "db3_teacher.json"
    if info.is_file():
        weights = TEACHER96_DIR / "model.safetensors"
        load_checkpoint(model, str(weights if weights.is_file() else TEACHER96_DIR / "pytorch_model.bin"))
        return model.eval(), json.loads(info.read_text())["test_accuracy"]
    train = load_image_dataset("fashion-mnist", "train", limit=train_images)
    torch.manual_seed(0)
    t = time.time()
    fit(model, upsampled(train.images), train.labels, epochs=epochs, batch_size=128, lr=2e-3, seed=0, progress=True)
    acc = evaluate(model, upsampled(test.images), test.labels)
    save_for_hf(model, str(TEACHER96_DIR), safe_serialization=True)
    info.write_text(json.dumps({"test_accuracy": acc, "train_images": train_images, "epochs": epochs,
                                "train_seconds": round(time.time() - t)}))
    return model.eval(), acc


def measure(name: str, teacher, x: torch.Tensor, y: torch.Tensor, budgets, refs, out: Path) -> list:
    """White-box distances, then mbd under each scheme and budget; one row per (scheme, budget), each appended to
    ``out`` as soon as it is measured (a killed run keeps what it finished)."""
    others = torch.ones(len(y), 10, dtype=torch.bool).scatter_(1, y[:, None], False)
    pair_sample, pair_target = others.nonzero(as_tuple=True)
    t = time.time()
    wb = min_norm_targeted(PixelSpace(teacher), x[pair_sample], pair_target, chunk_size=64)
    print(f"{name}: white-box FMN + C&W on {len(wb)} pairs in {time.time() - t:.0f}s, median {wb.median():.3f}",
          flush=True)
    oracle = LabelOracle.from_timm_model(teacher)
    rows = []
    for scheme, options in SCHEMES.items():
        for q in budgets:
            lab = create_labeler("mbd", oracle, queries_per_target=q, search=options)
            checked = lab.check_references(*refs)
            before, t = oracle.queries, time.perf_counter()
            soft = lab.label(x, checked)
            ratio = soft.distances[pair_sample, pair_target].cpu() / wb
            row = {"teacher": name, "scheme": scheme, "queries_per_target": q, "pairs": len(wb),
                   "median_ratio": round(float(ratio.median()), 3), "p90_ratio": round(float(ratio.quantile(0.9)), 3),
                   "queries": oracle.queries - before, "seconds": round(time.perf_counter() - t, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(out, "a") as fh:
                fh.write(json.dumps({**row, "machine": machine_info()}) + "\n")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--budgets", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--references", type=int, default=500, help="training images serving as references")
    ap.add_argument("--train-images", type=int, default=30_000, help="for the 96 px teacher")
    ap.add_argument("--epochs", type=int, default=6, help="for the 96 px teacher")
    ap.add_argument("--teachers", nargs="+", default=["28", "96"], choices=["28", "96"], help="which sides to run")
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/high_resolution.jsonl"))
    args = ap.parse_args()

    print(machine_info(), flush=True)
    train = load_image_dataset("fashion-mnist", "train")
    pool, pool_y = train.images[:-args.references], train.labels[:-args.references]
    ref_x, ref_y = train.images[-args.references:], train.labels[-args.references:]
    lenet, acc28 = fmnist_teacher()
    big, acc96 = teacher96(args.train_images, args.epochs)
    print(f"teachers: lenet5 28 px {acc28:.2%}, mobilenetv3_small_050 3x96x96 {acc96:.2%}", flush=True)
    rows, out = [], Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "28" in args.teachers:
        x, y = correct_subset(lenet, pool, pool_y, args.samples, seed=0)
        rows += measure("lenet5 28px", lenet, x, y, args.budgets, (ref_x, ref_y), out)
    if "96" in args.teachers:
        x96 = upsampled(pool[:4 * args.samples]).float().div_(255)  # candidates enough for N correct ones
        x, y = correct_subset(big, x96, pool_y[:4 * args.samples], args.samples, seed=0)
        rows += measure("mobilenetv3 96px", big, x, y, args.budgets, (upsampled(ref_x).float().div_(255), ref_y), out)
    print("| teacher | scheme | queries/target | median ratio to white-box | p90 | wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['teacher']} | {r['scheme']} | {r['queries_per_target']} | {r['median_ratio']:.3f} | "
              f"{r['p90_ratio']:.3f} | {r['seconds']} |")


if __name__ == "__main__":
    main()
