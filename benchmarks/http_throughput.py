"""What does a label-only teacher over HTTP cost? In-process oracle vs ``LabelOracle.from_url`` on loopback.

A uvicorn server (:func:`db3_timm.serve.create_app`, one worker, background thread of this
process) serves the LeNet-5 teacher on 127.0.0.1; for each batch size the same images go
through ``LabelOracle.from_timm_model(model)`` (in-process) and
``LabelOracle.from_url(...)`` (one request per batch) over both wires -- JSON numbers, and the OIP binary
tensor extension -- interleaved, median over repeats. ``ratio`` = HTTP / in-process throughput. The teacher is the cached
Fashion-MNIST ``lenet5`` (:func:`benchmarks._common.fmnist_teacher`) when its cache exists,
else a random-weight ``lenet5`` (throughput does not depend on the weights).

    python benchmarks/http_throughput.py [--batch-sizes 64 256 1024] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks._common import REPO_ROOT, TEACHER_DIR, fmnist_teacher, machine_info  # noqa: E402
from benchmarks.oracle_throughput import _rate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=0.3)
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/http_throughput.json"))
    args = ap.parse_args()

    import timm
    import uvicorn
    from timm.data import resolve_model_data_config

    import db3_timm  # noqa: F401
    from db3_timm import LabelOracle
    from db3_timm.serve import create_app

    print(machine_info())
    print(f"torch threads: {torch.get_num_threads()}")
    if (REPO_ROOT / TEACHER_DIR / "config.json").is_file():
        model, acc = fmnist_teacher()
        teacher = f"lenet5 Fashion-MNIST (test acc {acc:.4f})"
    else:
        torch.manual_seed(0)
        model, teacher = timm.create_model("lenet5", num_classes=10).eval(), "lenet5 (random weights)"
    print(f"teacher: {teacher}")
    cfg = resolve_model_data_config(model)
    app = create_app(model, model_name="lenet5", mean=cfg["mean"], std=cfg["std"], input_size=cfg["input_size"],
                     max_batch_size=max(args.batch_sizes))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)

    local = LabelOracle.from_timm_model(model)
    wires = {w: LabelOracle.from_url(f"http://127.0.0.1:{port}", "lenet5", max_batch_size=max(args.batch_sizes), wire=w)
             for w in ("json", "binary")}
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"\n{'batch':>6} {'in-process img/s':>17} {'JSON img/s':>11} {'ratio':>7} {'binary img/s':>13} {'ratio':>7}")
    for bs in args.batch_sizes:
        x = torch.rand(bs, *cfg["input_size"], generator=g)
        assert all(torch.equal(local(x), remote(x)) for remote in wires.values())
        rates = {"local": [], "json": [], "binary": []}
        callers = [("local", local), *wires.items()]
        for r in range(args.repeats):
            for name, fn in callers[r % 3:] + callers[:r % 3]:  # rotate the order: no fixed position advantage
                rates[name].append(_rate(fn, x, args.min_seconds))
        med = {k: statistics.median(v) for k, v in rates.items()}
        rows.append({"batch_size": bs, "in_process_per_s": med["local"], "json_per_s": med["json"],
                     "json_ratio": med["json"] / med["local"], "binary_per_s": med["binary"],
                     "binary_ratio": med["binary"] / med["local"]})
        print(f"{bs:>6} {med['local']:>17,.0f} {med['json']:>11,.0f} {med['json'] / med['local']:>7.3f} "
              f"{med['binary']:>13,.0f} {med['binary'] / med['local']:>7.3f}")
    server.should_exit = True
    thread.join(10)
    result = {"machine": machine_info(), "teacher": teacher, "torch_threads": torch.get_num_threads(),
              "repeats": args.repeats, "rows": rows,
              "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
