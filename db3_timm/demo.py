"""The end-to-end demo behind ``make demo`` / ``db3 demo``: scikit-learn digits, CPU, a few minutes."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Union

import torch

__all__ = ["run_demo"]


def run_demo(
    out_dir: Union[str, Path] = ".demo",
    *,
    seed: int = 0,
    device: str = "cpu",
    samples: int = 300,
    queries_per_target: int = 100,
    zs_per_class: int = 30,
    zs_iterations: int = 4,
    zs_queries_per_iteration: int = 100,
    zs_start: str = "smooth",
    zs_pool: int = 5_000,
    print_fn=print,
) -> Dict[str, Any]:
    """Trains a LeNet-5 teacher on digits, hides it behind a label-only oracle and distils LeNet-5-half students.

    Students are trained on ``samples`` training images with (a) the teacher's hard labels,
    (b) SD soft labels and (c) MBD soft labels at ``queries_per_target``, and (d) on a zero-shot
    ZSDB3 transfer set grown from ``zs_start`` noise, plus ``zs_pool`` teacher-labelled start images;
    all are scored on the held-out digits split. Writes
    ``results.json``, ``pseudo_samples/*.png`` and ``accuracy_vs_queries.png`` to ``out_dir``.

    Returns:
        The results table as a dict (also written to ``out_dir/results.json``).
    """
    import timm

    from . import LabelOracle, create_generator, create_labeler
    from .generators import label_pseudo_samples
    from .data import load_image_dataset
    from .distill import evaluate, fit
    from .report import plot_points, save_class_grids

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train = load_image_dataset("digits", "train", image_size=28)
    test = load_image_dataset("digits", "test", image_size=28)
    print_fn(f"digits: {len(train)} train / {len(test)} test images, upsampled to 28x28")

    t0 = time.time()
    teacher = timm.create_model("lenet5", num_classes=10)
    fit(teacher, train.images, train.labels, epochs=20, lr=2e-3, seed=seed, device=device)
    timm.models.save_for_hf(teacher, out / "teacher", safe_serialization=True)
    oracle = LabelOracle.from_timm(f"local-dir:{out / 'teacher'}", device=device)
    teacher_acc = float((oracle(test.images) == test.labels).float().mean())
    print_fn(f"teacher lenet5 trained in {time.time() - t0:.1f}s, saved to {out / 'teacher'}; "
             f"test accuracy through {oracle.queries} label queries: {teacher_acc:.2%}")

    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:samples]
    x = train.images[idx]
    rows: List[Dict[str, Any]] = [{"student": "teacher (lenet5)", "accuracy": teacher_acc, "queries": 0}]

    def student(name: str, images: torch.Tensor, labels: torch.Tensor, logits=None, queries: int = 0) -> None:
        t = time.time()
        model = timm.create_model("lenet5_half", num_classes=10)
        epochs = max(5, min(40, 60_000 // len(images)))  # big transfer sets need fewer passes
        fit(model, images, labels, logits, epochs=epochs, lr=2e-3, seed=seed, device=device)
        acc = evaluate(model, test.images, test.labels)
        rows.append({"student": name, "accuracy": acc, "queries": queries})
        print_fn(f"  {name:28s} acc {acc:.2%}  queries {queries:>10,d}  ({time.time() - t:.1f}s)")

    before = oracle.queries
    hard = oracle(x)
    print_fn(f"students: lenet5_half on {samples} training images")
    student("hard labels", x, hard, queries=oracle.queries - before)
    for name, cfg in (("sd", {}), ("mbd", {"queries_per_target": queries_per_target})):
        before, t = oracle.queries, time.time()
        soft = create_labeler(name, oracle, seed=seed, **cfg).label(x, (train.images, train.labels))
        spent = oracle.queries - before
        print_fn(f"  {name} soft labels: {spent:,d} queries in {time.time() - t:.1f}s")
        student(f"DB3 {name}" + (f" @{queries_per_target}/target" if cfg else ""), x, soft.labels, soft.logits, spent)

    # Zero-shot: no training image is used from here on; pseudo samples are grown from noise.
    before, t = oracle.queries, time.time()
    gen = create_generator("zsdb3", oracle, seed=seed, start=zs_start, start_pool=zs_pool, max_init_queries=100_000)
    pseudo = gen.generate(zs_per_class, zs_iterations, zs_queries_per_iteration, progress=False)
    mbd = create_labeler("mbd", oracle, seed=seed, queries_per_target=queries_per_target)
    images, labels, logits = label_pseudo_samples(pseudo, mbd)
    spent = oracle.queries - before
    print_fn(f"  zero-shot: {len(pseudo.labels)} pseudo samples ({zs_start} start) + {zs_pool:,d} start-pool images, "
             f"{spent:,d} queries in {time.time() - t:.1f}s "
             f"(mean robustness {pseudo.robustness[0].mean():.2f} -> {pseudo.robustness[-1].mean():.2f})")
    student("ZSDB3 (no real data)", images, labels, logits, spent)
    save_class_grids(pseudo.images, pseudo.labels, out / "pseudo_samples")
    plot_points({r["student"]: (r["queries"], r["accuracy"]) for r in rows if r["queries"] > 0},
                out / "accuracy_vs_queries.png", xlabel="teacher queries", ylabel="student test accuracy",
                title="digits: lenet5 teacher -> lenet5_half students", hline=(teacher_acc, "teacher"))
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print_fn("\n| student | test accuracy | teacher queries |\n|---|---|---|")
    for r in rows:
        print_fn(f"| {r['student']} | {r['accuracy']:.2%} | {r['queries']:,d} |")
    print_fn(f"\nresults: {out / 'results.json'}; pseudo samples: {out / 'pseudo_samples'}; plot: {out / 'accuracy_vs_queries.png'}")
    return {"rows": rows}
