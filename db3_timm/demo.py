"""The end-to-end demo behind ``make demo`` / ``db3 demo``: scikit-learn digits, CPU, a few minutes."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Union

import torch

__all__ = ["run_demo"]


def _teacher(out: Path, train: Any, test: Any, seed: int, device: str, print_fn: Callable[..., None]) -> Any:
    """Trains (once) a ``lenet5`` on digits and returns it as a label-only oracle."""
    import timm

    from .oracle import LabelOracle
    from .training import fit

    folder = out / "teacher"
    if not (folder / "model.safetensors").is_file():
        t0 = time.time()
        torch.manual_seed(seed)
        teacher = timm.create_model("lenet5", num_classes=10)
        fit(teacher, train.images, train.labels, epochs=20, lr=2e-3, seed=seed, device=device)
        timm.models.save_for_hf(teacher, folder, safe_serialization=True)
        print_fn(f"teacher lenet5 trained in {time.time() - t0:.1f}s -> {folder}")
    return LabelOracle.from_timm(f"local-dir:{folder}", device=device)


def _arms(samples: int, queries_per_target: int, budget: int, zs: Dict[str, Any]) -> List[Dict[str, Any]]:
    from .pipeline import DistillConfig
    from .training import TrainConfig
    from .transfer.build import LabelingConfig, ZeroShotConfig

    def cfg(plan: str, epochs: int = 40, **extra: Any) -> DistillConfig:
        return DistillConfig(plan=plan, train=TrainConfig(epochs=epochs, max_samples=600_000, lr=2e-3, batch_size=64),
                             evaluate_teacher=False, **extra)

    mbd = LabelingConfig("mbd", {"queries_per_target": queries_per_target})
    return [
        {"name": f"hard labels ({samples} images)", "images": True, "budget": None, "config": cfg("hard")},
        {"name": f"paper: DB3 mbd @{queries_per_target}/target", "images": True, "budget": None,
         "config": cfg("paper", labeling=mbd)},
        {"name": f"default plan, {budget:,} queries", "images": True, "budget": budget, "config": cfg("default")},
        {"name": "zero-shot ZSDB3, no real image", "images": False, "budget": None,
         "config": cfg("zsdb3", epochs=8, labeling=mbd, zero_shot=ZeroShotConfig(**zs))},
    ]


def run_demo(
    out_dir: Union[str, Path] = ".demo",
    *,
    seed: int = 0,
    device: str = "cpu",
    samples: int = 300,
    queries_per_target: int = 100,
    progress: bool = True,
    print_fn: Callable[..., None] = print,
) -> Dict[str, Any]:
    """Trains a LeNet-5 teacher on digits, hides it behind a label-only oracle and distils ``lenet5_half`` students
    with :func:`~db3_timm.pipeline.distill_student` from ``samples`` training images: the teacher's hard labels, the
    paper's ``mbd`` soft labels, the default plan at 100 queries per image, and a zero-shot student from ZSDB3
    pseudo samples. Each is scored on the held-out digits.

    Writes ``out_dir/students/<arm>/`` (each with ``model/`` and its card), ``results.json``,
    ``accuracy_vs_queries.png`` and the pseudo-sample grids (``students/zero-shot/transfer/grids``).

    Returns:
        ``{"rows": [...]}``, one row per student (also in ``results.json``).
    """
    from ._io import write_json_atomic
    from .data import load_image_dataset
    from .pipeline import distill_student
    from .report import plot_points

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = load_image_dataset("digits", "train", image_size=28)
    test = load_image_dataset("digits", "test", image_size=28)
    print_fn(f"digits: {len(train)} train / {len(test)} test images, upsampled to 28x28")
    oracle = _teacher(out, train, test, seed, device, print_fn)
    teacher_acc = float((oracle(test.images) == test.labels).float().mean())
    print_fn(f"teacher test accuracy through {len(test)} label queries: {teacher_acc:.2%}")
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:samples]
    zs = {"samples_per_class": 30, "iterations": 4, "queries_per_iteration": 100,
          "options": {"start": "smooth", "start_pool": 5_000, "max_init_queries": 100_000}}
    rows: List[Dict[str, Any]] = [{"student": "teacher (lenet5)", "accuracy": teacher_acc, "queries": None, "wall_s": None}]
    for k, arm in enumerate(_arms(samples, queries_per_target, 100 * samples, zs)):
        print_fn(f"[{k + 1}/4] {arm['name']}")
        t0 = time.time()
        result = distill_student(oracle, "lenet5_half", train.images[idx] if arm["images"] else None, arm["budget"],
                                 out / "students" / ("zero-shot" if not arm["images"] else f"arm{k}"), seed,
                                 labels=train.labels[idx] if arm["images"] else None, test=(test.images, test.labels),
                                 class_names=train.class_names, dataset="digits", config=arm["config"], progress=progress)
        rows.append({"student": arm["name"], "accuracy": result.test_accuracy, "queries": result.queries["total"],
                     "wall_s": round(time.time() - t0, 1)})
        print_fn(f"    test accuracy {result.test_accuracy:.2%} for {result.queries['total']:,} teacher queries "
                 f"({rows[-1]['wall_s']} s) -> {result.out_dir / 'model'}")
    plot_points({r["student"]: (r["queries"], r["accuracy"]) for r in rows if r["queries"]},
                out / "accuracy_vs_queries.png", xlabel="teacher queries", ylabel="student test accuracy",
                title="digits: lenet5 teacher -> lenet5_half students", hline=(teacher_acc, "teacher"))
    write_json_atomic(out / "results.json", rows)
    print_fn("\n| student (lenet5_half) | test accuracy | teacher queries |\n|---|---|---|")
    for r in rows:
        print_fn(f"| {r['student']} | {r['accuracy']:.2%} | {'–' if r['queries'] is None else format(r['queries'], ',')} |")
    print_fn(f"\nresults: {out / 'results.json'}; plot: {out / 'accuracy_vs_queries.png'}; pseudo samples: "
             f"{out / 'students' / 'zero-shot' / 'transfer' / 'grids'}")
    return {"rows": rows}
