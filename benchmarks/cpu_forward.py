"""CPU teacher forwards: the oracle's chunking and allocator settings, before and after, in one run.

Two teachers on real Fashion-MNIST test images: the frontier's ``lenet5`` at 1x28x28 (8,192 images per call) and a
1000-class timm ``mobilenetv3_small_050`` (seeded random weights) at 3x224x224 (the images upsampled, 192 per
call). Arms, each in its own process (glibc's settings are per process), interleaved over repeats:

* ``before`` -- the previous default: ``max_batch_size = 2**24 // (C*H*W)`` (21,399 / 111 images per forward),
  glibc as it comes;
* ``after`` -- today's ``LabelOracle.from_timm_model`` default: ``2**18 // (C*H*W)`` images, at least 8 (334 / 8),
  and :func:`db3_timm._cpu_memory.keep_activation_buffers`.

Reported per arm (median over repeats): images/s of ``oracle(x)``, and the process's user and system CPU
seconds and minor page faults per 1,000 images.

    python benchmarks/cpu_forward.py --repeats 5
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TEACHERS = {"lenet5 1x28x28": 8192, "mobilenetv3_small_050 3x224x224": 192}


def child(teacher: str, arm: str, calls: int) -> dict:
    """Runs in a fresh process: times ``calls`` oracle calls after one warm-up call."""
    import torch

    from _common import fmnist_teacher
    from db3_timm import LabelOracle, load_image_dataset

    torch.set_num_threads(1)
    n = TEACHERS[teacher]
    images = load_image_dataset("fashion-mnist", "test").images[:n]
    if teacher.startswith("lenet5"):
        model, _ = fmnist_teacher(verbose=False)
    else:
        import timm

        from high_resolution import upsampled

        torch.manual_seed(0)
        model = timm.create_model("mobilenetv3_small_050", num_classes=1000).eval()
        images = upsampled(images, 224).float().div_(255)
    chw = images[0].numel()
    kwargs = {"max_batch_size": max(1, (1 << 24) // chw)} if arm == "before" else {}
    if arm == "before":
        import db3_timm._cpu_memory as cpu_memory

        cpu_memory._state["done"] = True  # glibc as it comes
    oracle = LabelOracle.from_timm_model(model, **kwargs)
    oracle(images)
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(calls):
        oracle(images)
    seconds, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    per_k = 1000 / (n * calls)
    return {"teacher": teacher, "arm": arm, "batch": oracle.max_batch_size, "images_per_s": n * calls / seconds,
            "user_s_per_1k": (r1.ru_utime - r0.ru_utime) * per_k, "sys_s_per_1k": (r1.ru_stime - r0.ru_stime) * per_k,
            "faults_per_1k": (r1.ru_minflt - r0.ru_minflt) * per_k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3, help="timed oracle calls per process")
    ap.add_argument("--child", nargs=2, metavar=("TEACHER", "ARM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.calls)))
        return
    from _common import machine_info

    print(machine_info(), flush=True)
    runs: dict = {}
    for r in range(args.repeats):
        for teacher in TEACHERS:
            for arm in (("before", "after") if r % 2 == 0 else ("after", "before")):
                out = subprocess.run([sys.executable, __file__, "--child", teacher, arm, "--calls", str(args.calls)],
                                     check=True, capture_output=True, text=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                runs.setdefault((teacher, arm), []).append(row)
                print(json.dumps(row), flush=True)
    print("| teacher | arm | images per forward | images/s | user s / 1k images | system s / 1k images | "
          "page faults / 1k images |\n|---|---|---|---|---|---|---|")
    for (teacher, arm), rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("images_per_s", "user_s_per_1k", "sys_s_per_1k",
                                                                    "faults_per_1k")}
        print(f"| {teacher} | {arm} | {rows[0]['batch']} | {med['images_per_s']:,.0f} | {med['user_s_per_1k']:.2f} | "
              f"{med['sys_s_per_1k']:.2f} | {med['faults_per_1k']:,.0f} |")
    for teacher in TEACHERS:
        before = statistics.median(r["images_per_s"] for r in runs[(teacher, "before")])
        after = statistics.median(r["images_per_s"] for r in runs[(teacher, "after")])
        print(f"{teacher}: after / before = {after / before:.2f}")


if __name__ == "__main__":
    main()
