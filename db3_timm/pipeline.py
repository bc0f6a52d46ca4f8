"""The front door: a label-only teacher in, a trained timm student with an honest model card out.

:func:`distill_student` plans the queries, refuses a plan over budget before spending anything, builds the
transfer set (:mod:`db3_timm.transfer.build`), trains the student with Accelerate
(:func:`db3_timm.training.train`), scores it, and writes ``out_dir/model`` in timm's Hub format with a card
counting every query. Everything is kept in ``out_dir``, so calling it again with the same arguments resumes
a killed run where it stopped and gives the same student.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ._checks import check_int, check_number
from ._io import PathLike, module_fingerprint, run_lock, write_json_atomic
from .models import create_image_model
from .oracle import LabelOracle
from .training import ArrowRows, TensorDictDataset, TrainConfig, TrainResult, make_accelerator, test_accuracy, train
from ._disk import read_columns
from .transfer.build import LabelingConfig, TransferSet, ZeroShotConfig, build_transfer_set, load_transfer_set
from .transfer.plan import PLANS, BudgetTooSmallError, Plan, PlanStep, make_plan, zero_shot_default

__all__ = ["DistillConfig", "DistillResult", "plan_queries", "distill_student", "BudgetTooSmallError",
           "holdout_split", "measure_throughput", "ZERO_SHOT_TRAIN", "default_train", "default_val_fraction"]

#: Training rows whose pixels take more bytes than this are read from disk batch by batch, not held in memory.
IN_MEMORY_BYTES = 1 << 30

#: The student's training on a transfer set with no real image (the zero-shot frontier's recipe; its tables in
#: benchmarks/RESULTS.md). The teacher's answers on noise are hard to fit: 10 epochs at lr 1e-3 leave points behind.
ZERO_SHOT_TRAIN = TrainConfig(epochs=60, max_samples=1_500_000, lr=2e-3)


def default_train(zero_shot: bool) -> TrainConfig:
    """Returns the student's training :func:`distill_student` uses when ``DistillConfig.train`` is ``None``:
    :data:`ZERO_SHOT_TRAIN` for a transfer set grown without images, else ``TrainConfig()``."""
    return replace(ZERO_SHOT_TRAIN) if zero_shot else TrainConfig()


def default_val_fraction(config: "DistillConfig", zero_shot: bool) -> float:
    """Returns the share of images (or answers) held out to pick the best epoch: ``config.val_fraction`` when set,
    else 0 for a transfer set grown without images and 0.1 otherwise.

    Why 0 without images: every held-out answer is a paid query the student does not learn from, and agreement on
    held-out answers about noise does not track real accuracy (benchmarks/RESULTS.md, "Zero-shot training defaults").
    """
    if config.val_fraction is not None:
        return config.val_fraction
    return 0.0 if zero_shot else 0.1


@dataclass
class DistillConfig:
    """Everything :func:`distill_student` does besides the teacher, the student and the images.

    Attributes:
        plan: how the budget is spent (:data:`~db3_timm.transfer.plan.PLANS`): ``default`` (the best student per
            query measured), ``paper`` (the paper's DB3KD), ``db3`` (its queries, every answer trained on), ``hard``,
            ``mixes``; without images, ``synth``, ``noise`` and ``zsdb3`` (``default`` then picks ``synth`` or
            ``noise`` by budget: :func:`~db3_timm.transfer.plan.zero_shot_default`; ``paper`` means ``zsdb3``).
        labeling: how images (or pseudo samples) are soft-labelled (``paper``, ``zsdb3``).
        zero_shot: how pseudo samples are grown when there are no images.
        train: the student's optimisation (``None``: :func:`default_train` for the transfer set, zero-shot or not).
        val_fraction: share of the images held out to pick the best epoch (0: keep the last epoch; ``None``:
            :func:`default_val_fraction`, 0 for a transfer set grown without images).
        evaluate_teacher: also score the teacher on the test images (one query per image, counted).
        student_pretrained: start the student from its pretrained timm weights.
        mixed_precision, gradient_accumulation_steps, cpu: Accelerate settings (``None``: the launcher decides).
    """

    plan: str = "default"
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    zero_shot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    train: Optional[TrainConfig] = None
    val_fraction: Optional[float] = None
    evaluate_teacher: bool = True
    student_pretrained: bool = False
    mixed_precision: Optional[str] = None
    gradient_accumulation_steps: Optional[int] = None
    cpu: bool = False

    def __post_init__(self) -> None:
        if self.val_fraction is not None:
            check_number("val_fraction", self.val_fraction, low=0, high=1, high_open=True)
        if self.plan not in PLANS:
            raise ValueError(f"unknown plan {self.plan!r}; plans: {', '.join(PLANS)}")


@dataclass
class DistillResult:
    """What :func:`distill_student` made.

    Attributes:
        model: the trained timm student (eval mode; the best-validation epoch's weights when one was picked).
        queries: every teacher query this student cost, by step, with ``total`` (earlier runs of a resumed job included).
        plan: the :class:`~db3_timm.transfer.plan.Plan` it followed.
        transfer: the transfer set it trained on.
        training: the training history.
        test_accuracy / teacher_accuracy: on the test images, when given.
        out_dir: where everything lives (``model/`` is the student folder to push).
    """

    model: nn.Module
    queries: Dict[str, int]
    plan: Plan
    transfer: TransferSet
    training: TrainResult
    test_accuracy: Optional[float]
    teacher_accuracy: Optional[float]
    out_dir: Path


def holdout_split(n: int, fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns a seeded split of ``range(n)`` into ``(train, held_out)`` indices, each ascending; ``round(fraction
    * n)`` are held out (at least one when ``fraction > 0``, and never all)."""
    n_val = 0 if fraction <= 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def plan_queries(oracle: LabelOracle, num_images: Optional[int], config: DistillConfig, *, test_images: int = 0,
                 budget: Optional[int] = None, seed: int = 0, transfer_dir: Optional[PathLike] = None,
                 with_labels: bool = False, prior: Any = None) -> Plan:
    """Returns the plan :func:`distill_student` will follow: queries per source, with why (sources are built, so
    their options are checked, but nothing is asked).

    Args:
        oracle: the teacher (its ``num_classes`` sizes the plan).
        num_images: images given (``None``: zero-shot).
        config: the run's settings (``config.plan`` names the plan).
        test_images: test images the teacher is scored on (when ``config.evaluate_teacher``).
        budget: the cap on the whole job.
        seed: the run's seed (it picks the held-out images).
        transfer_dir: an existing transfer set to train on (nothing is asked for it).
        with_labels: the images come with dataset labels, so ``val_fraction`` of them are held out for validation.
        prior: an optional white-box surrogate for ``mbd``.
    """
    evaluation = int(test_images) if config.evaluate_teacher else 0
    if transfer_dir is not None:
        steps = [PlanStep("evaluation", evaluation, "the teacher's accuracy on the test images")] if evaluation else []
        return Plan("transfer-dir", steps, budget)
    n = None
    if num_images is not None:
        held = holdout_split(int(num_images), default_val_fraction(config, False), seed)[1].numel() if with_labels else 0
        n = int(num_images) - held
    # Without images: the default depends on the budget (zero_shot_default); the paper's method is its ZSDB3KD.
    name = config.plan
    if n is None and name == "paper":
        name = "zsdb3"
    elif n is None and name == "default":
        name = zero_shot_default(None if budget is None else budget - evaluation, config.zero_shot)
    return make_plan(name, oracle, n, budget=budget, labeling=config.labeling, zero_shot=config.zero_shot,
                     prior=prior, evaluation=evaluation)


def measure_throughput(oracle: LabelOracle, images: Optional[torch.Tensor] = None, n: int = 256) -> float:
    """Returns the teacher's measured queries per second on ``n`` images (of ``images``, else smooth noise).

    The probe spends ``n`` queries (counted by the oracle like any others).
    """
    if images is None:
        from .generators.priors import smooth_noise

        shape = oracle.input_size or (1, 28, 28)
        images = smooth_noise(n, shape, torch.Generator().manual_seed(0), torch.device("cpu"))
    batch = images[:n]
    oracle(batch[: max(1, len(batch) // 8)])  # warm-up (first calls pay for lazy initialisation)
    t0 = time.perf_counter()
    oracle(batch)
    return len(batch) / max(time.perf_counter() - t0, 1e-9)


def _transfer(oracle: LabelOracle, images: Any, labels: Optional[torch.Tensor], plan: Plan, config: DistillConfig,
              out: Path, seed: int, class_names: Any, accelerator: Any, progress: bool):
    """Builds (or resumes) the transfer set; returns it with the rows to train on and the validation rows
    (held-out images with their dataset labels, else held-out transfer rows scored against the teacher's labels)."""
    if isinstance(images, Path):  # an existing transfer set
        transfer, val = load_transfer_set(images), None
    else:
        val = None
        if images is not None and labels is not None:
            keep, held = holdout_split(images.shape[0], default_val_fraction(config, False), seed)
            val = TensorDictDataset(images[held], labels[held]) if len(held) else None
            images = images[keep]
        transfer = build_transfer_set(oracle, plan, out / "transfer", images=images, class_names=class_names, seed=seed,
                                      accelerator=accelerator, progress=progress)
    rows = transfer.rows
    if plan.train_rows == "soft":  # the paper trains on the soft-labelled images only
        rows = rows.select(torch.nonzero(read_columns(rows, ["kd_weight"])["kd_weight"] > 0).flatten().tolist())
    if val is not None:
        return transfer, rows, val, "held-out images with their dataset labels"
    keep, held = holdout_split(len(rows), default_val_fraction(config, transfer.zero_shot), seed)
    if not len(held):
        return transfer, rows, None, None
    cols = read_columns(rows.select(held.tolist()), ["image", "label"])
    return (transfer, rows.select(keep.tolist()), TensorDictDataset(cols["image"], cols["label"]),
            "held-out transfer rows scored against the teacher's labels")


def _rows(ds: Any) -> Any:
    """The training rows: in memory when their pixels fit in :data:`IN_MEMORY_BYTES`, else read batch by batch
    from the memory-mapped Arrow files."""
    feature = ds.features["image"]
    pixel_bytes = len(ds) * math.prod(feature.shape) * (1 if feature.dtype == "uint8" else 4)
    if pixel_bytes > IN_MEMORY_BYTES:
        return ArrowRows(ds)
    cols = read_columns(ds, ["image", "label", "soft_logits", "kd_weight"])
    return TensorDictDataset(cols["image"], cols["label"], cols["soft_logits"], cols["kd_weight"])


def _evaluate(accelerator: Any, model: nn.Module, oracle: LabelOracle, test: Optional[Tuple[torch.Tensor, torch.Tensor]],
              cfg: DistillConfig, out: Path) -> Tuple[Optional[float], Optional[float], int]:
    """Scores the student (and once, the teacher) on the test images; returns ``(student, teacher, teacher queries)``."""
    if test is None:
        return None, None, 0
    student_acc = test_accuracy(accelerator, model, test[0], test[1], cfg.train.eval_batch_size)
    if not cfg.evaluate_teacher:
        return student_acc, None, 0
    path = out / "teacher_eval.json"
    if not path.is_file() and accelerator.is_main_process:  # asked once per run folder, kept
        before = oracle.queries
        acc = float((oracle(test[0]).cpu() == test[1]).float().mean())
        write_json_atomic(path, {"accuracy": acc, "queries": oracle.queries - before})
    accelerator.wait_for_everyone()
    saved = json.loads(path.read_text())
    return student_acc, saved["accuracy"], int(saved["queries"])


def _check_images(oracle: LabelOracle, images: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                  transfer_dir: Optional[PathLike]) -> None:
    if transfer_dir is not None and images is not None:
        raise ValueError("pass either images (to build a transfer set) or transfer_dir (to train on one), not both")
    if images is None:
        return
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point() or not len(images):
        raise ValueError(f"images must be a non-empty float tensor (N, C, H, W) in [0, 1], got "
                         f"{getattr(images, 'dtype', type(images).__name__)} of shape {tuple(getattr(images, 'shape', ()))}")
    if oracle.input_size is not None and images.shape[1] != oracle.input_size[0]:
        raise ValueError(f"images have {images.shape[1]} channel(s) but the teacher takes {oracle.input_size[0]} "
                         f"(teacher input size {oracle.input_size})")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != images.shape[:1]):
        raise ValueError(f"labels must be a tensor of shape ({images.shape[0]},), got {tuple(getattr(labels, 'shape', ()))}")


def _card(oracle: LabelOracle, student_name: str, dataset: str, cfg: DistillConfig, transfer: TransferSet,
          queries: Dict[str, int], accuracy: Tuple[Optional[float], Optional[float]], kind: str,
          training: TrainResult) -> Dict[str, Any]:
    info = transfer.info
    labeler, labeler_cfg = info.get("labeler"), {}
    if isinstance(labeler, dict):  # a `db3 label` output records the labeler's whole config
        labeler_cfg = {k: v for k, v in labeler.items() if k != "labeler"}
        labeler = labeler.get("labeler")
    else:
        soft = next((st["config"] for st in info.get("steps", []) if st["source"] == "db3"), {})
        labeler_cfg = dict(soft.get("options", {}))
    generator = (info.get("generator") or {}).get("generator")
    method = {"zsdb3": "zsdb3kd", "synth": "synth-kd"}.get(generator) or ("db3kd" if labeler else "label-kd")
    identity = str(getattr(oracle, "identity", ""))
    card = {"teacher": oracle.name, "dataset": dataset, "queries": queries["total"], "plan": info.get("plan"),
            "query_breakdown": {k: v for k, v in queries.items() if k != "total"},
            "transfer_rows": len(transfer.rows), "method": method, "labeler": labeler, "labeler_config": labeler_cfg,
            "hyperparameters": {"student": student_name, **cfg.train.to_dict(), "batch_size": training.batch_size},
            "student_accuracy": accuracy[0], "teacher_accuracy": accuracy[1], "accuracy_kind": kind,
            "teacher_fingerprint": identity.split(" weights ", 1)[1] if " weights " in identity else None}
    if info.get("generator"):
        card["generator"] = info["generator"].get("generator", cfg.zero_shot.generator)
        card["generator_config"] = info["generator"]
    return card


def distill_student(
    oracle: LabelOracle,
    student: str = "lenet5_half",
    images: Optional[torch.Tensor] = None,
    budget: Optional[int] = None,
    out_dir: PathLike = "runs/distill",
    seed: int = 0,
    *,
    labels: Optional[torch.Tensor] = None,
    test: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    class_names: Optional[Sequence[str]] = None,
    dataset: str = "custom images",
    config: Optional[DistillConfig] = None,
    transfer_dir: Optional[PathLike] = None,
    prior: Any = None,
    accelerator: Any = None,
    progress: bool = True,
) -> DistillResult:
    """Distils a timm ``student`` from a label-only teacher within ``budget`` queries.

    ``config.plan`` decides how the budget is spent on ``images`` (:func:`~db3_timm.transfer.plan.make_plan`; by
    default their labels, then augmentations and mixes of them); with ``images=None`` the teacher is asked about
    noise or generated samples (by default chosen by budget; ``plan="paper"``: ZSDB3KD). Every answer the teacher
    gives becomes a row of the transfer set. The student trains on it with Accelerate, picks its best epoch on
    held-out images (with ``labels``: their dataset labels; else held-out transfer rows scored against the teacher),
    is scored on ``test``, and is saved with its card to ``out_dir/model``.

    Args:
        oracle: the label-only teacher.
        student: a timm architecture name (``lenet5_half``, ``resnet18``, ...).
        images: ``(N, C, H, W)`` float images in ``[0, 1]``, or ``None`` for zero-shot.
        budget: most teacher queries the whole job may spend; a plan over it is refused before any query.
        out_dir: where the transfer set, checkpoints, ``results.json`` and ``model/`` go; rerun to resume.
        seed: seeds everything (labelling, generation, the student's initialisation and shuffles).
        labels: optional dataset labels of ``images`` (choose the references and score the validation split).
        test: optional ``(images, labels)`` to score the student (and the teacher, counted as queries) on.
        class_names: the teacher's class names (default: ``oracle.class_names``): data, reports, ``label_names``.
        dataset: what the images are, for the card (a spec such as ``fashion-mnist``; no local paths).
        config: the remaining settings (:class:`DistillConfig`).
        transfer_dir: train on this existing transfer set (a ``db3 label`` / ``db3 generate`` / ``db3 distill``
            output) instead of building one; its recorded queries count toward the student's.
        prior: optional white-box surrogate guiding the labeler's boundary search (see ``mbd``).
        accelerator: an ``accelerate.Accelerator`` (default: one made by :func:`~db3_timm.training.make_accelerator`).
        progress: show progress bars.

    Returns:
        The :class:`DistillResult`.

    Raises:
        BudgetTooSmallError: the plan needs more than ``budget`` queries (nothing was spent).
        RunLockedError: another job is writing into ``out_dir`` right now (nothing was spent).
    """
    cfg = config or DistillConfig()
    _check_images(oracle, images, labels, transfer_dir)
    check_int("seed", seed, 0)
    plan = plan_queries(oracle, None if images is None else images.shape[0], cfg,
                        test_images=0 if test is None else len(test[0]), budget=budget, seed=seed,
                        transfer_dir=transfer_dir, with_labels=labels is not None, prior=prior)
    plan.check()
    t0, out = time.monotonic(), Path(out_dir)
    accelerator = accelerator or make_accelerator(out, seed=seed, mixed_precision=cfg.mixed_precision,
                                                  gradient_accumulation_steps=cfg.gradient_accumulation_steps, cpu=cfg.cpu)
    source = images if transfer_dir is None else Path(transfer_dir)
    with run_lock(out, "distillation", accelerator), _capped(oracle, budget):
        transfer, train_rows, val, val_source = _transfer(oracle, source, labels, plan, cfg, out, seed, class_names,
                                                          accelerator, progress)
        cfg = _resolved(cfg, transfer.zero_shot)  # recorded as used
        model, training, kind = _train_student(accelerator, student, transfer, train_rows, val, cfg, seed, out, progress)
        accuracy = _evaluate(accelerator, model, oracle, test, cfg, out)
    queries = {k: v for k, v in transfer.queries.items() if k != "total"}
    queries.update({"evaluation": accuracy[2]} if accuracy[2] else {})
    queries["total"] = sum(queries.values())
    model = accelerator.unwrap_model(model).eval()
    results = {"student": student, "plan_name": plan.name, "plan": transfer.info.get("steps", []), "queries": queries,
               "transfer_rows": len(transfer.rows), "train_rows": len(train_rows), "validation": val_source,
               "accuracy_kind": kind, "test_accuracy": accuracy[0], "teacher_accuracy": accuracy[1],
               "training": asdict(training), "config": _jsonable(asdict(cfg)), "num_processes": accelerator.num_processes}
    card = _card(oracle, student, dataset, cfg, transfer, queries, accuracy[:2], kind, training)
    _save(accelerator, model, out, card, results, t0, _label_names(transfer))
    return DistillResult(model, queries, plan, transfer, training, accuracy[0], accuracy[1], out)


def _resolved(cfg: DistillConfig, zero_shot: bool) -> DistillConfig:
    """Returns ``cfg`` with the training and validation split it left to the transfer set filled in."""
    return replace(cfg, train=cfg.train or default_train(zero_shot), val_fraction=default_val_fraction(cfg, zero_shot))


@contextlib.contextmanager
def _capped(oracle: LabelOracle, budget: Optional[int]):
    """Lowers the oracle's budget so this call never spends more than ``budget``; restores it afterwards."""
    previous = oracle.budget
    if budget is not None and (previous is None or previous > oracle.queries + budget):
        oracle.budget = oracle.queries + budget
    try:
        yield
    finally:
        oracle.budget = previous


def _train_student(accelerator: Any, name: str, transfer: TransferSet, rows: Any, val: Any, cfg: DistillConfig, seed: int,
                   out: Path, progress: bool) -> Tuple[nn.Module, TrainResult, str]:
    """Trains (or resumes) the student; returns it with the best validation epoch's weights when one was picked."""
    from accelerate.utils import set_seed

    from .oracle import load_checkpoint_state_dict

    set_seed(seed)  # the student's initialisation does not depend on how the transfer set was made
    model = create_image_model(name, transfer.num_classes, transfer.image_shape, pretrained=cfg.student_pretrained)
    best_dir = out / "checkpoints" / "best"

    def on_best(epoch: int) -> None:
        _save_weights(accelerator, model, best_dir)

    training = train(accelerator, _task(model, cfg.train), model, _rows(rows), cfg.train, output_dir=out, val_set=val,
                     resume="latest", on_best=on_best, progress_bar=progress)
    if training.best_epoch is None or not (best_dir / "model.safetensors").is_file():
        return model, training, "final"
    accelerator.unwrap_model(model).load_state_dict(load_checkpoint_state_dict(best_dir / "model.safetensors"))
    return model, training, "val-selected"


def _label_names(transfer: TransferSet) -> Optional[list]:
    """The transfer set's class names, or ``None`` where they are only the indices (a teacher without names)."""
    names = transfer.rows.features["label"].names
    return None if names == [str(i) for i in range(len(names))] else names


def _save(accelerator: Any, model: nn.Module, out: Path, card: Dict[str, Any], results: Dict[str, Any], t0: float,
          label_names: Optional[Sequence[str]]) -> None:
    """Main process: the student folder with its card (and the teacher's class names), and ``results.json``."""
    from accelerate.utils import gather_object

    from .hub import save_student

    weights = gather_object([module_fingerprint(model)])  # every process must hold the same student
    if accelerator.is_main_process:
        save_student(model, out / "model", card=card, label_names=label_names)
        write_json_atomic(out / "results.json", {**results, "weights_per_process": weights,
                                                 "wall_s": round(time.monotonic() - t0, 2)})
    accelerator.wait_for_everyone()


def _task(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    from .training import DB3DistillationTask

    return DB3DistillationTask(model, temperature=cfg.temperature, task_loss_weight=cfg.ce_weight,
                               distill_loss_weight=cfg.kd_weight)


def _save_weights(accelerator: Any, model: nn.Module, folder: Path) -> None:
    from ._io import save_safetensors_atomic

    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors_atomic(folder / "model.safetensors", accelerator.unwrap_model(model).state_dict())
    accelerator.wait_for_everyone()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
