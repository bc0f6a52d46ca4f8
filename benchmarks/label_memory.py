"""Peak memory of labelling big images: ``db3 label`` streaming a saved dataset vs the same run from one tensor.

The images are real: the first N Fashion-MNIST train images, upsampled to 224x224 RGB and saved once as a
Hugging Face dataset of PNGs (``datasets`` ``Image`` feature, ``save_to_disk``) under ``benchmarks/results/``.
The teacher is a 1000-class timm model (random weights: memory and speed do not depend on them). Each arm runs in
its own process; its peak resident set comes from the kernel (``wait4`` rusage):

* ``stream``: ``db3 label --data hf:DIR`` -- the split is opened with ``open_image_dataset`` and read one shard
  at a time;
* ``in-memory``: ``load_image_dataset`` (the whole split as one float32 tensor) then ``label_dataset`` on it.
  Its peak comes with the load, so ``--in-memory-budget Q`` may stop it after Q queries (the rest of the run
  holds the same memory); the arms' outputs are then compared over the shards both finished.

    python benchmarks/label_memory.py [--images 10000] [--arms stream in-memory]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import REPO_ROOT, machine_info  # noqa: E402

_IN_MEMORY = """
import sys, torch
import db3_timm
from db3_timm import LabelOracle, create_labeler, label_dataset, load_image_dataset
data, out, teacher, weights, labeler, targets, qpt, budget = sys.argv[1:9]
oracle = LabelOracle.from_timm(teacher, weights, budget=int(budget) if budget != "none" else None)
data = load_image_dataset(data, image_size=224)
lab = create_labeler(labeler, oracle, targets=int(targets), queries_per_target=int(qpt))
try:
    label_dataset(lab, data.images, out, progress=False)
except db3_timm.QueryBudgetExceeded:
    print("stopped by the budget")
"""


def make_images(n: int, out: Path) -> Path:
    """Saves the first ``n`` Fashion-MNIST train images as 224x224 RGB PNGs in a ``save_to_disk`` folder."""
    if (out / "state.json").is_file():
        return out
    import datasets
    from PIL import Image

    from db3_timm.data import FASHION_MNIST_CLASSES, fashion_mnist_dir, read_idx

    x = read_idx(f"{fashion_mnist_dir()}/train-images-idx3-ubyte.gz", count=n)
    y = read_idx(f"{fashion_mnist_dir()}/train-labels-idx1-ubyte.gz")[:n]

    def rows():
        for img, label in zip(x, y):
            yield {"image": Image.fromarray(img).resize((224, 224), Image.BILINEAR).convert("RGB"), "label": int(label)}

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)})
    tmp = out.with_name(out.name + ".tmp")
    datasets.Dataset.from_generator(rows, features=features, cache_dir=str(tmp / "cache")).save_to_disk(str(tmp / "ds"))
    (tmp / "ds").rename(out)
    shutil.rmtree(tmp)
    return out


def make_teacher(name: str, out: Path) -> Path:
    """Saves seeded random weights of the 1000-class timm model ``name``, so both arms ask the same teacher."""
    if not out.is_file():
        import timm
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        save_file(timm.create_model(name, num_classes=1000).state_dict(), str(out))
    return out


def run_arm(arm: str, data: Path, weights: Path, out: Path, args: argparse.Namespace) -> dict:
    """Runs one arm in a child process; returns its peak RSS, wall time and queries."""
    shutil.rmtree(out, ignore_errors=True)
    if arm == "stream":
        cmd = ["db3", "label", "--teacher", args.teacher, "--teacher-checkpoint", str(weights), "--data", f"hf:{data}", "--labeler", args.labeler,
               "--targets", str(args.targets), "--queries-per-target", str(args.queries_per_target),
               "--references-per-class", "0", "--out", str(out), "--no-progress"]
    else:
        cmd = [sys.executable, "-c", _IN_MEMORY, f"hf:{data}", str(out), args.teacher, str(weights), args.labeler,
               str(args.targets), str(args.queries_per_target), str(args.in_memory_budget or "none")]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    text = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{arm} failed:\n{text[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"arm": arm, "images": args.images, "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),
            "wall_s": round(time.monotonic() - t0, 1), "queries": manifest["queries"]["total"],
            "shards_done": f"{manifest['num_finished_shards']}/{manifest['num_shards']}"}


def same_shards(work: Path, arms) -> bool:
    """Whether the arms' shards finished by both hold the same labels, soft labels and query counts."""
    import datasets
    import numpy as np

    folders = [work / f"out-{arm}" / "train" for arm in arms]
    names = set.intersection(*({p.name for p in f.glob("data-shard-*.arrow")} for f in folders))
    for name in sorted(names):
        a, b = (datasets.Dataset.from_file(str(f / name)) for f in folders)
        if not all(np.array_equal(np.asarray(a[c]), np.asarray(b[c])) for c in ("label", "soft_logits", "queries")):
            return False
    return bool(names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--arms", nargs="+", default=["stream", "in-memory"], choices=["stream", "in-memory"])
    ap.add_argument("--teacher", default="mobilenetv3_small_050", help="a 1000-class timm model (random weights)")
    ap.add_argument("--labeler", default="bd")
    ap.add_argument("--targets", type=int, default=2)
    ap.add_argument("--queries-per-target", type=int, default=2)
    ap.add_argument("--in-memory-budget", type=int, help="stop the in-memory arm after this many queries")
    ap.add_argument("--work", default=str(REPO_ROOT / "benchmarks/results/label_memory"))
    args = ap.parse_args()

    print(machine_info())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = make_images(args.images, work / f"fmnist224-{args.images}")
    weights = make_teacher(args.teacher, work / f"{args.teacher}-seed0.safetensors")
    rows = []
    for arm in args.arms:
        row = run_arm(arm, data, weights, work / f"out-{arm}", args)
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(work.parent / "label_memory.jsonl", "a") as fh:
            fh.write(json.dumps({**row, "teacher": args.teacher, "labeler": args.labeler, "targets": args.targets,
                                 "queries_per_target": args.queries_per_target}) + "\n")
    if len(rows) == 2:
        print(f"peak RSS stream / in-memory: {rows[0]['peak_rss_gb'] / rows[1]['peak_rss_gb']:.2f}")
        print(f"both arms wrote the same labels, soft labels and query counts: {same_shards(work, args.arms)}")


if __name__ == "__main__":
    main()
