"""Shared helpers for the benchmarks: machine description, the cached Fashion-MNIST teacher, sample picking.

The teacher is a ``lenet5`` trained on the full real Fashion-MNIST train split (IDX files
of Debian's ``dataset-fashion-mnist``) and cached with ``timm.models.save_for_hf`` under
``benchmarks/results/`` (git-ignored), so every benchmark attacks / distils the same model
and only the first run pays for training.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Tuple, Union

import torch
import torch.nn as nn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/x.py` without an installed package
    sys.path.insert(0, str(REPO_ROOT))

__all__ = ["REPO_ROOT", "machine_info", "fmnist_teacher", "correct_subset", "TEACHER_DIR"]

#: Default teacher cache, relative to the repository root.
TEACHER_DIR = "benchmarks/results/teacher_fmnist_lenet5"

# Tuned on 2 Xeon cores (torch 2.x CPU): ~9 s per epoch at batch 128 -> ~2 min, ~90.5-91% test.
TEACHER_EPOCHS = 12
TEACHER_BATCH_SIZE = 128
TEACHER_LR = 2e-3

_META = "db3_teacher.json"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> str:
    """One line: CPU model, usable / total cores, torch version and threads, CUDA device if any."""
    total = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = total
    cores = f"{usable} cores" if usable == total else f"{usable} of {total} cores"
    if torch.cuda.is_available():
        cuda = f"CUDA {torch.cuda.get_device_name(0)}" + (
            f" (+{torch.cuda.device_count() - 1} more)" if torch.cuda.device_count() > 1 else ""
        )
    else:
        cuda = "no CUDA device"
    return (
        f"{_cpu_model()}, {cores}, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{cuda}, Python {platform.python_version()}"
    )


def _resolve(path: Union[str, os.PathLike]) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def fmnist_teacher(
    cache_dir: Union[str, os.PathLike] = TEACHER_DIR,
    epochs: int = TEACHER_EPOCHS,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    *,
    batch_size: int = TEACHER_BATCH_SIZE,
    lr: float = TEACHER_LR,
    force: bool = False,
    verbose: bool = True,
) -> Tuple[nn.Module, float]:
    """The Fashion-MNIST ``lenet5`` teacher: trained once, then reloaded from ``cache_dir``.

    Training uses :func:`db3_timm.training.fit` (Adam, cosine schedule, the model's own
    mean/std) on all 60,000 real training images; the folder gets ``config.json`` +
    ``model.safetensors`` from ``timm.models.save_for_hf`` and ``db3_teacher.json`` with
    the test accuracy, the settings and the training time (``db3_teacher.json`` is written
    last, so a half-written folder is retrained). A cache made with other settings
    (epochs, seed, batch size, lr) raises instead of being silently overwritten, since other
    benchmarks share it: pass another ``cache_dir``, or ``force=True`` to retrain in place.

    Args:
        cache_dir: the folder; relative paths are taken from the repository root.
        epochs, seed, batch_size, lr: training settings (seed fixes init and shuffling).
        device: where the returned model lives (and where it trains).
        force: retrain even if a cache exists.
        verbose: print what happened.

    Returns:
        ``(model, test_accuracy)``: the eval-mode timm model (no gradients required on its
        parameters) and its top-1 accuracy on the 10,000 test images.
    """
    import timm

    import db3_timm  # noqa: F401  (registers lenet5)
    from db3_timm.data import load_image_dataset
    from db3_timm.training import evaluate, fit

    folder = _resolve(cache_dir)
    meta_path = folder / _META
    settings = {"arch": "lenet5", "epochs": int(epochs), "seed": int(seed), "batch_size": int(batch_size), "lr": float(lr)}
    meta = None
    if meta_path.is_file() and (folder / "config.json").is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = None
        if meta is not None and meta.get("settings") != settings and not force:
            raise ValueError(
                f"teacher cache {folder} was trained with {meta.get('settings')}, not {settings}; "
                f"pass a different cache_dir, or force=True to retrain and overwrite it"
            )
    if meta is not None and not force:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
        model = model.to(device).eval().requires_grad_(False)
        acc = float(meta["test_acc"])
        if verbose:
            print(f"[teacher] loaded {folder} (test acc {acc:.4f}, trained in {meta['train_seconds']:.0f}s)")
        return model, acc

    train = load_image_dataset("fashion-mnist", "train")
    test = load_image_dataset("fashion-mnist", "test")
    torch.manual_seed(seed)
    model = timm.create_model("lenet5", num_classes=10)
    if verbose:
        print(f"[teacher] training lenet5 on {len(train)} Fashion-MNIST images: {settings} ...", flush=True)
    t0 = time.perf_counter()
    fit(model, train.images, train.labels, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    secs = time.perf_counter() - t0
    acc = float(evaluate(model, test.images, test.labels))
    model = model.cpu().eval()
    folder.mkdir(parents=True, exist_ok=True)
    timm.models.save_for_hf(model, str(folder), safe_serialization=True)
    meta = {
        "settings": settings,
        "test_acc": acc,
        "train_acc": float(evaluate(model, train.images, train.labels)),
        "train_seconds": secs,
        "machine": machine_info(),
        "load_average_1_5_15min_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    if verbose:
        print(f"[teacher] trained in {secs:.0f}s: test acc {acc:.4f}, train acc {meta['train_acc']:.4f}; saved to {folder}")
    return model.to(device).eval().requires_grad_(False), acc


@torch.inference_mode()
def _predict(model, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Labels from a LabelOracle-like callable (pixel in, labels out) or a timm model (normalised here)."""
    from db3_timm import LabelOracle

    if isinstance(model, LabelOracle):
        return torch.cat([model(images[s:s + batch_size]) for s in range(0, len(images), batch_size)]).cpu()
    from db3_timm._preprocess import PixelTransform

    was_training = model.training
    model.eval()
    norm = PixelTransform.for_model(model, resize_to_model="never")
    dev = next(model.parameters()).device
    out = torch.cat([
        model(norm(images[s:s + batch_size].to(dev))).argmax(1).cpu() for s in range(0, len(images), batch_size)
    ])
    model.train(was_training)
    return out


def correct_subset(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    seed: int = 0,
    *,
    return_index: bool = False,
):
    """The first ``n`` images (in a seeded random order) that ``model`` classifies correctly.

    Args:
        model: a timm model (its timm mean/std is applied to the pixel-space images)
            or a :class:`db3_timm.LabelOracle` (called as is; spends its queries).
        images: ``(N, C, H, W)`` pixel-space images.
        labels: ``(N,)`` true labels.
        n: how many to return.
        seed: seeds the shuffle (``torch.Generator().manual_seed(seed)``).
        return_index: also return the picked indices into ``images``.

    Returns:
        ``(images[idx], labels[idx])`` (plus ``idx`` if asked).

    Raises:
        ValueError: fewer than ``n`` images are classified correctly.
    """
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    picked = []
    need = int(n)
    # predict in growing slices of the shuffled order so small n stays cheap
    start, step = 0, max(64, 2 * need)
    while need > 0 and start < len(order):
        idx = order[start:start + step]
        ok = _predict(model, images[idx]) == labels[idx].cpu()
        good = idx[ok][:need]
        picked.append(good)
        need -= len(good)
        start += step
    if need > 0:
        raise ValueError(f"only {int(n) - need} of {len(images)} images are classified correctly; {n} requested")
    idx = torch.cat(picked)
    out = (images[idx], labels[idx])
    return (*out, idx) if return_index else out


def distance_setup(samples: int, references: int):
    """The distance benchmarks' shared set-up: prints the machine and teacher, then splits Fashion-MNIST train.

    Returns:
        ``(teacher, acc, refs, x, y)``: the LeNet-5 teacher and its test accuracy, ``refs = (images, labels)``
        (the last ``references`` training images) and ``samples`` correctly classified images from the rest.
    """
    from db3_timm.data import load_image_dataset

    print(machine_info(), flush=True)
    teacher, acc = fmnist_teacher()
    print(f"teacher lenet5 on Fashion-MNIST: test accuracy {acc:.2%}")
    train = load_image_dataset("fashion-mnist", "train")
    refs = (train.images[-references:], train.labels[-references:])
    x, y = correct_subset(teacher, train.images[:-references], train.labels[:-references], samples, seed=0)
    return teacher, acc, refs, x, y


def accuracy_axes(ax, title: str, xlabel: str = "teacher queries") -> None:
    """Styles an accuracy-vs-queries panel the way every benchmark plot here does (log x, grid, small legend)."""
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("student test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
