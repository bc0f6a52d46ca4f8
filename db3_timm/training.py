"""Training students on a label-only teacher's answers.

* :func:`kd_loss` -- the objective: CE on the teacher's labels + ``T^2``-scaled KL to the soft labels, the
  KL weighted per row (rows with only a hard label weigh 0 there).
* :class:`DB3DistillationTask` -- the same objective as a :class:`timm.task.TrainingTask`: a drop-in for timm's
  ``LogitDistillationTask`` when the teacher's answers arrive with the batch instead of from a forward pass.
* :func:`fit` / :func:`evaluate` -- a compact single-process loop over tensors in memory (tests, quick runs).
* :class:`TrainConfig`, :func:`make_accelerator`, :func:`train` -- the Accelerate loop the recipes and
  ``db3 distill`` use: global batches split across processes, seeded shuffles, ``save_state`` checkpoints
  and mid-epoch resumption, best-epoch selection on a validation set with ``gather_for_metrics``.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.task import TrainingTask

from ._checks import check_int, check_number
from ._distributed import check_launch
from ._io import ConfigMismatchError, PathLike, config_diff, write_json_atomic
from ._preprocess import PixelTransform

__all__ = [
    "kd_loss", "kd_loss_terms", "split_kd_target", "DB3DistillationTask", "fit", "evaluate",
    "TensorDictDataset", "ArrowRows", "TrainConfig", "TrainResult", "make_accelerator", "train", "evaluate_accuracy",
    "adapted_batch_size", "find_checkpoint", "test_accuracy",
]


# ---------------------------------------------------------------------- the objective
def kd_loss_terms(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    soft_logits: Optional[torch.Tensor] = None,
    *,
    temperature: float = 20.0,
    scale_by_t2: bool = True,
    kd_weight: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Returns the two unweighted terms of :func:`kd_loss`: ``(CE(s, y), [T^2] * KL(softmax(z/T) || softmax(s/T)))``.

    The KL term is ``None`` without ``soft_logits``; it is averaged over the batch, each row's KL multiplied by
    its ``kd_weight`` (``(N,)``; default 1 for every row).
    """
    ce = F.cross_entropy(student_logits, labels)
    if soft_logits is None:
        return ce, None
    t = float(temperature)
    log_p = F.log_softmax(soft_logits.to(student_logits.dtype) / t, dim=1)
    log_q = F.log_softmax(student_logits / t, dim=1)
    if kd_weight is None:
        kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    else:
        per_row = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)
        kl = (kd_weight.to(per_row.dtype) * per_row).sum() / max(1, per_row.shape[0])
    return ce, kl * (t * t if scale_by_t2 else 1.0)


def kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    soft_logits: Optional[torch.Tensor] = None,
    *,
    temperature: float = 20.0,
    ce_weight: float = 1.0,
    kd_weight: Union[float, torch.Tensor] = 1.0,
    scale_by_t2: bool = True,
) -> torch.Tensor:
    """Returns the DB3KD objective ``ce_weight * CE(s, y) + kd_weight * [T^2] * KL(softmax(z/T) || softmax(s/T))``.

    Args:
        student_logits: ``(N, C)`` student outputs.
        labels: ``(N,)`` teacher labels.
        soft_logits: ``(N, C)`` soft-label logits ``z`` (or ``None``: plain cross-entropy).
        temperature: softmax temperature ``T`` (DB3KD reference: 20).
        ce_weight: weight of the hard-label term.
        kd_weight: weight of the soft-label term: a number, or ``(N,)`` per-row weights (0 for rows whose
            ``soft_logits`` are only a placeholder).
        scale_by_t2: multiply the KL term by ``T^2`` (Hinton et al.) so its gradients keep their scale.
    """
    per_row = kd_weight if isinstance(kd_weight, torch.Tensor) else None
    scalar = 1.0 if per_row is not None else float(kd_weight)
    ce, kl = kd_loss_terms(student_logits, labels, soft_logits if scalar else None, temperature=temperature,
                           scale_by_t2=scale_by_t2, kd_weight=per_row)
    loss = ce_weight * ce if ce_weight else student_logits.new_zeros(())
    return loss if kl is None else loss + scalar * kl


_LABEL_KEYS = ("labels", "label", "target", "targets")
_SOFT_KEYS = ("soft_logits", "logits", "soft_labels")


def split_kd_target(target: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Splits a :class:`DB3DistillationTask` target into ``(teacher labels, soft logits or None, kd weights or None)``.

    Accepted forms: a label tensor ``(N,)``; a ``(labels, soft_logits[, kd_weight])`` tuple or list; a mapping
    with ``labels``/``label``/``target`` and optionally ``soft_logits``/``logits`` and ``kd_weight`` (a batch of
    a db3 transfer set).
    """
    if isinstance(target, torch.Tensor):
        return target, None, None
    if isinstance(target, Mapping):
        labels = next((target[k] for k in _LABEL_KEYS if k in target), None)
        if labels is None:
            raise KeyError(f"target mapping has no labels (looked for {_LABEL_KEYS}); keys: {sorted(target)}")
        return labels, next((target[k] for k in _SOFT_KEYS if k in target), None), target.get("kd_weight")
    if isinstance(target, (tuple, list)) and len(target) in (2, 3):
        return target[0], target[1], target[2] if len(target) == 3 else None
    raise TypeError("target must be a label tensor, a (labels, soft_logits[, kd_weight]) tuple or a mapping with "
                    f"'labels' and 'soft_logits', got {type(target).__name__}")


class DB3DistillationTask(TrainingTask):
    """Decision-based (label-only) knowledge distillation as a timm :class:`~timm.task.TrainingTask`.

    A drop-in for timm's ``LogitDistillationTask`` when the teacher answers only labels: there is no teacher
    forward pass; the teacher's answers come with the batch as ``target = (labels, soft_logits[, kd_weight])``
    (see :func:`split_kd_target`). ``forward`` returns timm's dictionary: ``loss``, ``output`` (student logits),
    ``task_loss`` (CE on the teacher labels) and ``kd_loss`` (``T^2``-scaled KL, zero without soft logits), with
    ``loss = task_loss_weight * task_loss + distill_loss_weight * kd_loss``.

    Weights follow ``LogitDistillationTask``: ``distill_loss_weight`` given -> independent weights (task weight
    defaults to 1); only ``task_loss_weight`` given -> ``distill = 1 - task``; neither -> both 1.

    Args:
        student_model: the student (a timm model).
        temperature: softmax temperature ``T`` (DB3KD reference: 20).
        task_loss_weight: weight of the hard-label CE term.
        distill_loss_weight: weight of the soft-label KL term.
        scale_by_t2: multiply the KL by ``T^2`` (as timm and Hinton et al. do).
        normalize_input: inputs are pixel-space ``[0, 1]`` images; normalise them with the student's data
            config (mean/std) first. Default ``False``: inputs are already normalised, as timm's loaders give them.
        device, dtype, verbose: :class:`~timm.task.TrainingTask` options.
    """

    def __init__(self, student_model: nn.Module, *, temperature: float = 20.0, task_loss_weight: Optional[float] = None,
                 distill_loss_weight: Optional[float] = None, scale_by_t2: bool = True, normalize_input: bool = False,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None, verbose: bool = False) -> None:
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        self.trainable_module = student_model
        self.temperature = check_number("temperature", temperature, low=0, low_open=True)
        self.scale_by_t2 = bool(scale_by_t2)
        if distill_loss_weight is not None:
            self.distill_loss_weight = float(distill_loss_weight)
            self.task_loss_weight = 1.0 if task_loss_weight is None else float(task_loss_weight)
        elif task_loss_weight is not None:
            self.task_loss_weight = float(task_loss_weight)
            self.distill_loss_weight = 1.0 - self.task_loss_weight
        else:
            self.task_loss_weight = self.distill_loss_weight = 1.0
        self.normalize_input = bool(normalize_input)
        self.transform = PixelTransform.for_model(student_model, resize_to_model="never") if normalize_input else None

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, task_loss_weight={self.task_loss_weight}, "
                f"distill_loss_weight={self.distill_loss_weight}, scale_by_t2={self.scale_by_t2}")

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs: Any) -> "DB3DistillationTask":
        """Wraps the student in ``DistributedDataParallel`` (there is no teacher module to leave out); returns ``self``."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = "inductor", mode: Optional[str] = None, **compile_kwargs: Any) -> nn.Module:
        """Compiles the student (used for training and evaluation alike) before any DDP wrapping; returns it."""
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = self.trainable_module
        return self.trainable_module

    def forward(self, input: torch.Tensor, target: Any) -> Dict[str, torch.Tensor]:
        """Returns ``{'loss', 'output', 'task_loss', 'kd_loss'}`` for a batch ``input`` and the teacher's ``target``."""
        labels, soft, weight = split_kd_target(target)
        if self.transform is not None:
            input = self.transform(input).to(input.dtype if input.is_floating_point() else torch.float32)
        output = self.trainable_module(input)
        # The loss in float32 even under autocast: log-softmax at T=20 of low-precision logits loses the tail.
        task_loss, kd = kd_loss_terms(output.float(), labels.long(), None if soft is None else soft.float(),
                                      temperature=self.temperature, scale_by_t2=self.scale_by_t2, kd_weight=weight)
        if kd is None:
            kd = task_loss.new_zeros(())
        loss = self.task_loss_weight * task_loss + self.distill_loss_weight * kd
        return {"loss": loss, "output": output, "task_loss": task_loss, "kd_loss": kd}


# ---------------------------------------------------------------------- small in-memory trainer
def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    soft_logits: Optional[torch.Tensor] = None,
    *,
    kd_weights: Optional[torch.Tensor] = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    temperature: float = 20.0,
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
    on_epoch: Optional[Callable[[int, nn.Module], None]] = None,
) -> nn.Module:
    """Trains ``model`` in place on pixel-space ``images`` with :func:`kd_loss` (Adam, cosine schedule).

    Args:
        model: timm classifier (its data config supplies the normalisation).
        images: ``(N, C, H, W)`` in ``[0, 1]`` (or uint8 in ``[0, 255]``).
        labels: ``(N,)`` teacher labels.
        soft_logits: optional ``(N, C)`` soft-label logits.
        kd_weights: optional ``(N,)`` per-row weights of the soft-label term (0: the row has only a hard label).
        epochs, batch_size, lr, weight_decay: optimisation settings.
        temperature, ce_weight, kd_weight: see :func:`kd_loss`.
        seed: seeds the shuffling, so a run is reproducible.
        device: where to train.
        progress: show a tqdm bar over epochs.
        on_epoch: called as ``on_epoch(epoch, model)`` after each epoch (1-based), e.g. to score a validation
            split; the model is put back in train mode afterwards.

    Returns:
        The trained model (in eval mode).
    """
    from tqdm.auto import tqdm

    for name, col in (("labels", labels), ("soft_logits", soft_logits), ("kd_weights", kd_weights)):
        if col is not None and col.shape[0] != images.shape[0]:
            raise ValueError(f"images ({images.shape[0]}) and {name} ({col.shape[0]}) differ in length")
    model.to(device).train()
    norm = PixelTransform.for_model(model, resize_to_model="never")
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-images.shape[0] // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for epoch in tqdm(range(epochs), desc="train", disable=not progress, leave=False):
        order = torch.randperm(images.shape[0], generator=gen)
        for start in range(0, images.shape[0], batch_size):
            idx = order[start:start + batch_size]
            soft = None if soft_logits is None else soft_logits[idx].to(device)
            weight = kd_weight if kd_weights is None else kd_weight * kd_weights[idx].to(device)
            loss = kd_loss(model(norm(images[idx].to(device))), labels[idx].to(device), soft,
                           temperature=temperature, ce_weight=ce_weight, kd_weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if on_epoch is not None:
            with torch.no_grad():
                on_epoch(epoch + 1, model)
            model.train()
    return model.eval()


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Returns the top-1 accuracy (in [0, 1]) of ``model`` on pixel-space ``images``."""
    model.eval()
    device = next(model.parameters()).device
    norm = PixelTransform.for_model(model, resize_to_model="fixed")
    correct = 0
    with torch.inference_mode():  # no autograd graph: activations freed batch by batch
        for start in range(0, images.shape[0], batch_size):
            pred = model(norm(images[start:start + batch_size].to(device))).argmax(1)
            correct += int((pred.cpu() == labels[start:start + batch_size]).sum())
    return correct / max(1, images.shape[0])


# ---------------------------------------------------------------------- data
class TensorDictDataset(torch.utils.data.Dataset):
    """In-memory rows ``{"image", "label"[, "soft_logits", "kd_weight"]}`` over tensors of equal length."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, soft_logits: Optional[torch.Tensor] = None,
                 kd_weight: Optional[torch.Tensor] = None):
        self.tensors = {"image": images, "label": labels.long()}
        if soft_logits is not None:
            self.tensors["soft_logits"] = soft_logits
        if kd_weight is not None:
            self.tensors["kd_weight"] = kd_weight.float()
        if any(t.shape[0] != images.shape[0] for t in self.tensors.values()):
            raise ValueError("images, labels, soft_logits and kd_weight must have the same length")

    def __len__(self) -> int:
        return int(self.tensors["label"].shape[0])

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, idx: List[int]) -> Dict[str, torch.Tensor]:
        # Batched fetch (torch's DataLoader uses it when present): one gather per column, no per-row dicts;
        # `collate_batch` passes the batch through.
        index = torch.as_tensor(idx, dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}


class ArrowRows(torch.utils.data.Dataset):
    """Rows of a saved ``datasets.Dataset`` read batch by batch from its memory-mapped Arrow files, in the form
    :class:`TensorDictDataset` gives them: for transfer sets bigger than memory.

    Args:
        ds: a ``datasets.Dataset`` with ``image`` and ``label`` columns (``soft_logits``, ``kd_weight`` optional).
        columns: the columns to read (default: those four, when present).
    """

    def __init__(self, ds: Any, columns: Sequence[str] = ("image", "label", "soft_logits", "kd_weight")):
        self.columns = [c for c in columns if c in ds.column_names]
        # Stored dtypes kept: `datasets` would widen uint8 pixels to int64 (8x the bytes of every batch).
        self.dtypes = {c: getattr(ds.features[c], "dtype", None) for c in self.columns}
        self.ds = ds.with_format("numpy", columns=self.columns)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, idx: List[int]) -> Dict[str, torch.Tensor]:
        rows = self.ds[list(idx)]
        out = {}
        for c in self.columns:
            value = np.ascontiguousarray(rows[c], dtype=self.dtypes[c] if self.dtypes[c] in ("uint8", "float32") else None)
            out[c] = torch.from_numpy(value)
        out["label"] = out["label"].long()
        if "kd_weight" in out:
            out["kd_weight"] = out["kd_weight"].float()
        return out

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([int(i)]).items()}


def collate_batch(batch: Any) -> Any:
    """The DataLoader ``collate_fn`` for :class:`TensorDictDataset`: its batches arrive whole; other datasets'
    rows are collated as usual."""
    return batch if isinstance(batch, dict) else torch.utils.data.default_collate(batch)


def _batch_target(batch: Mapping[str, torch.Tensor]) -> Any:
    if "soft_logits" not in batch:
        return batch["label"]
    return batch["label"], batch["soft_logits"], batch.get("kd_weight")


# ---------------------------------------------------------------------- the Accelerate loop
@dataclass
class TrainConfig:
    """Optimisation settings of :func:`train` (checked on construction).

    Attributes:
        epochs: passes over the training set.
        max_samples: a cap on the samples seen (big transfer sets train fewer epochs, at least one; ``None``: no cap).
        batch_size: the *global* batch, split across processes (so 1 and N processes train on the same batches).
        eval_batch_size: batch of validation passes.
        opt, lr, momentum, weight_decay: timm's ``create_optimizer_v2`` settings.
        sched: ``cosine`` (to 0 over all steps), ``step`` (times ``gamma`` at each of ``milestones`` epochs) or ``none``.
        milestones, gamma: the step schedule.
        seed: seeds the student's shuffles (and, in the recipes, its initialisation).
        temperature, ce_weight, kd_weight: the objective (see :func:`kd_loss`).
        min_steps_per_epoch: a transfer set too small for this many batches per epoch trains with a smaller
            batch (a power of two), and says so: one big batch per epoch barely trains.
        checkpoint_every: also checkpoint every this many optimizer steps (0: epoch ends only).
        keep_checkpoints: newest checkpoints kept (0: all).
        num_workers: DataLoader workers.
    """

    epochs: int = 10
    max_samples: Optional[int] = None
    batch_size: int = 128
    eval_batch_size: int = 512
    opt: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    sched: str = "cosine"
    milestones: Sequence[int] = ()
    gamma: Sequence[float] = (0.1,)
    seed: int = 0
    temperature: float = 20.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    min_steps_per_epoch: int = 8
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    num_workers: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            check_int(name, getattr(self, name), 1)
        if self.max_samples is not None:
            check_int("max_samples", self.max_samples, 1)
        for name in ("min_steps_per_epoch", "checkpoint_every", "keep_checkpoints", "num_workers"):
            check_int(name, getattr(self, name), 0)
        check_number("lr", self.lr, low=0, low_open=True)
        for name in ("momentum", "weight_decay", "ce_weight", "kd_weight"):
            check_number(name, getattr(self, name), low=0)
        check_number("temperature", self.temperature, low=0, low_open=True)
        if self.sched not in ("cosine", "step", "none"):
            raise ValueError(f"sched must be 'cosine', 'step' or 'none', got {self.sched!r}")
        self.milestones = tuple(check_int("milestones", m, 0) for m in self.milestones)
        self.gamma = tuple(check_number("gamma", g, low=0) for g in self.gamma)
        if len(self.gamma) not in (1, len(self.milestones)) and self.sched == "step":
            raise ValueError(f"gamma needs one value or one per milestone ({len(self.milestones)}), got {len(self.gamma)}")

    def epochs_for(self, rows: int) -> int:
        """Returns the epochs a transfer set of ``rows`` rows trains for (``epochs``, fewer under ``max_samples``)."""
        return self.epochs if self.max_samples is None else max(1, min(self.epochs, -(-self.max_samples // max(1, rows))))

    def to_dict(self) -> Dict[str, Any]:
        """Returns the settings as a plain dict (results, model cards)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class TrainResult:
    """What :func:`train` did: per-epoch history, the best epoch on the validation set, the batch size used."""

    history: List[Dict[str, Any]] = field(default_factory=list)
    best_epoch: Optional[int] = None
    best_metric: Optional[float] = None
    global_steps: int = 0
    batch_size: int = 0
    epochs: int = 0


@dataclass
class _Progress:
    """Where a run stands; registered with ``accelerator.register_for_checkpointing`` so it resumes too."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    history: List[Dict[str, Any]] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)  # what the weights depend on, compared on resume

    def state_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def make_accelerator(output_dir: PathLike, *, seed: int = 0, mixed_precision: Optional[str] = None,
                     gradient_accumulation_steps: Optional[int] = None, cpu: bool = False,
                     log_with: Optional[Sequence[str]] = None) -> Any:
    """Returns the run's ``accelerate.Accelerator``: global batches split across processes, seeded shuffles.

    ``mixed_precision`` and ``gradient_accumulation_steps`` left ``None`` are decided by the launcher
    (``accelerate launch --mixed_precision bf16``, an ``accelerate config`` file); given, they win.

    Raises:
        DistributedSetupError: ``WORLD_SIZE > 1`` but accelerate set up a single process.
    """
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed

    out = Path(output_dir)
    plugin = None if gradient_accumulation_steps is None else GradientAccumulationPlugin(num_steps=int(gradient_accumulation_steps))
    accelerator = Accelerator(
        cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_plugin=plugin,
        log_with=list(log_with) if log_with is not None else None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True, data_seed=seed),
    )
    check_launch(accelerator)
    set_seed(seed)
    return accelerator


def adapted_batch_size(rows: int, batch_size: int, num_processes: int, min_steps: int) -> int:
    """Returns ``batch_size``, or the largest power-of-two multiple of ``num_processes`` below it that gives
    ``rows`` at least ``min_steps`` batches per epoch (never below ``num_processes``)."""
    if min_steps <= 0 or rows // batch_size >= min_steps:
        return batch_size
    size = batch_size
    while size > num_processes and rows // size < min_steps:
        size //= 2
    return max(num_processes, size - size % num_processes)


def _loader(dataset: Any, batch_size: int, *, shuffle: bool, num_workers: int) -> torch.utils.data.DataLoader:
    # Training drops the last incomplete batch (as timm's train.py does): accelerate would otherwise pad it with
    # repeated samples on some processes, and 1 and N processes would no longer train on the same batches.
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                       drop_last=shuffle and len(dataset) >= batch_size, collate_fn=collate_batch)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, epochs: int) -> Any:
    total = max(1, epochs * steps_per_epoch)
    gammas = list(cfg.gamma) * (len(cfg.milestones) if len(cfg.gamma) == 1 else 1)

    def factor(step: int) -> float:
        if cfg.sched == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        if cfg.sched == "step":
            return math.prod(g for m, g in zip(cfg.milestones, gammas) if step // steps_per_epoch >= m)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


PROGRESS_NAME = "progress.json"


def _checkpoint_key(folder: Path) -> Optional[Tuple[int, int, int]]:
    try:
        p = json.loads((folder / PROGRESS_NAME).read_text())
        return int(p["global_step"]), int(p["epoch"]), int(p["batch_in_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_checkpoint(resume: str, checkpoint_dir: PathLike) -> Optional[Path]:
    """Resolves a resume request: ``"latest"`` -> the newest complete checkpoint under ``checkpoint_dir`` (or
    ``None``), else the named folder (which must be a complete checkpoint)."""
    if resume == "latest":
        root = Path(checkpoint_dir)
        found = [(k, d) for d in root.glob("*") if d.is_dir() and (k := _checkpoint_key(d)) is not None] if root.is_dir() else []
        return max(found)[1] if found else None
    if _checkpoint_key(Path(resume)) is None:
        raise FileNotFoundError(f"--resume {resume!r}: not a complete checkpoint folder (no {PROGRESS_NAME})")
    return Path(resume)


def _save_checkpoint(accelerator: Any, progress: _Progress, folder: Path, keep: int) -> None:
    accelerator.save_state(output_dir=str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Written last: a folder counts as a checkpoint once every process has saved into it.
        write_json_atomic(folder / PROGRESS_NAME, {k: getattr(progress, k) for k in
                                                   ("epoch", "batch_in_epoch", "global_step", "best_metric", "best_epoch")})
        if keep > 0:
            done = sorted((k, d) for d in folder.parent.glob("*") if d.is_dir() and (k := _checkpoint_key(d)) is not None)
            for _, old in done[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


@torch.no_grad()
def evaluate_accuracy(accelerator: Any, model: nn.Module, loader: Any, transform: Callable) -> float:
    """Returns the top-1 accuracy of ``model`` over a prepared loader of ``{"image", "label"}`` batches, all
    processes together (``gather_for_metrics`` drops the samples duplicated to even out the last batch)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        with accelerator.autocast():
            logits = model(transform(batch["image"]))
        pred, labels = accelerator.gather_for_metrics((logits.argmax(-1), batch["label"]))
        correct += int((pred == labels).sum())
        total += int(labels.numel())
    model.train(was_training)
    return correct / max(total, 1)


def test_accuracy(accelerator: Any, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  batch_size: int = 512) -> float:
    """Returns the top-1 accuracy of ``model`` on pixel-space ``images`` (split across processes)."""
    n = accelerator.num_processes
    loader = accelerator.prepare(_loader(TensorDictDataset(images, labels), math.ceil(batch_size / n) * n,
                                         shuffle=False, num_workers=0))
    return evaluate_accuracy(accelerator, model, loader, PixelTransform.for_model(model, resize_to_model="fixed"))


def _weight_settings(cfg: TrainConfig, batch_size: int, epochs: int, rows: int) -> Dict[str, Any]:
    """The settings a run's weights depend on (not where or how often it checkpoints, nor the process count)."""
    settings = {**cfg.to_dict(), "batch_size": batch_size, "epochs": epochs, "rows": rows}
    for key in ("max_samples", "eval_batch_size", "checkpoint_every", "keep_checkpoints", "num_workers"):
        settings.pop(key)
    return settings


def _resume(accelerator: Any, progress: _Progress, resume: Optional[str], checkpoint_dir: Path) -> None:
    if not resume:
        if find_checkpoint("latest", checkpoint_dir) is not None:
            accelerator.print(f"note: {checkpoint_dir} holds checkpoints of an earlier run; starting from scratch "
                              f"(resume to continue it)")
        return
    folder = find_checkpoint(resume, checkpoint_dir)
    if folder is None:
        if resume != "latest":
            accelerator.print(f"no checkpoint in {checkpoint_dir} yet; starting from scratch")
        return
    wanted = progress.settings
    accelerator.load_state(str(folder))
    changed = config_diff(progress.settings, wanted) if progress.settings else ""  # older checkpoints carry none
    if changed:
        raise ConfigMismatchError(f"{str(folder)!r} was trained with other settings ({changed}); "
                                  f"resuming would mix two schedules: use a new output_dir, or the old settings")
    progress.settings = wanted
    accelerator.print(f"resumed from {folder} (epoch {progress.epoch + 1}, batch {progress.batch_in_epoch}, "
                      f"step {progress.global_step})")


def _epoch(accelerator: Any, task: nn.Module, optimizer: Any, scheduler: Any, loader: Any, transform: Callable,
           progress: _Progress, cfg: TrainConfig, checkpoint_dir: Path, bar: Any) -> None:
    """Trains the rest of the current epoch (mid-epoch resumption skips the batches already trained)."""
    local_sum, local_count = torch.zeros((), dtype=torch.float64, device=accelerator.device), 0

    def flush() -> None:
        # Summed over processes at checkpoints and epoch ends only (a resumed run flushes alike).
        nonlocal local_sum, local_count
        totals = accelerator.reduce(torch.stack([local_sum, local_sum.new_tensor(float(local_count))]), "sum")
        progress.loss_sum, progress.loss_count = progress.loss_sum + float(totals[0]), progress.loss_count + int(round(float(totals[1])))
        local_sum, local_count = torch.zeros_like(local_sum), 0

    task.train()
    loader.set_epoch(progress.epoch)
    steps = len(loader)
    batches = accelerator.skip_first_batches(loader, progress.batch_in_epoch) if progress.batch_in_epoch else loader
    for batch in batches:
        with accelerator.accumulate(task):
            out = task(transform(batch["image"]), _batch_target(batch))
            accelerator.backward(out["loss"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        local_sum += out["loss"].detach().double()
        local_count += 1
        progress.batch_in_epoch += 1
        bar.update(1)
        if accelerator.sync_gradients:
            progress.global_step += 1
            if cfg.checkpoint_every and progress.global_step % cfg.checkpoint_every == 0 and progress.batch_in_epoch < steps:
                flush()
                _save_checkpoint(accelerator, progress, checkpoint_dir / f"step_{progress.global_step}", cfg.keep_checkpoints)
    flush()


def train(
    accelerator: Any,
    task: nn.Module,
    model: nn.Module,
    train_set: Any,
    cfg: TrainConfig,
    *,
    output_dir: PathLike,
    val_set: Any = None,
    resume: Optional[str] = None,
    on_best: Optional[Callable[[int], None]] = None,
    progress_bar: bool = True,
) -> TrainResult:
    """Trains ``task`` (whose trainable module is ``model``) on ``train_set`` rows with Accelerate.

    Each batch ``{"image", "label"[, "soft_logits", "kd_weight"]}`` of pixel-space images becomes
    ``task(transform(image), target)``; its ``"loss"`` is back-propagated under ``accelerator.accumulate``.
    After every epoch the validation accuracy on ``val_set`` is measured (``on_best(epoch)`` on a new best) and
    ``save_state`` writes ``output_dir/checkpoints/epoch_E``. ``resume`` (``"latest"`` or a folder) restores
    all of it, skipping the batches of the interrupted epoch already trained: a resumed run ends with the
    same weights as an uninterrupted one.

    Returns:
        The :class:`TrainResult`.
    """
    from tqdm.auto import tqdm

    n = accelerator.num_processes
    batch_size = adapted_batch_size(len(train_set), cfg.batch_size, n, cfg.min_steps_per_epoch)
    if batch_size != cfg.batch_size:
        accelerator.print(f"note: {len(train_set)} training rows make only {len(train_set) // cfg.batch_size} batch(es) "
                          f"of {cfg.batch_size} per epoch; training with batch size {batch_size} instead")
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} must be a multiple of the number of processes ({n})")
    loader = _loader(train_set, batch_size, shuffle=True, num_workers=cfg.num_workers)
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    epochs = cfg.epochs_for(len(train_set))
    scheduler = _scheduler(optimizer, cfg, math.ceil(len(loader) / accelerator.gradient_accumulation_steps), epochs)
    val_loader = None
    if val_set is not None and len(val_set):
        val_loader = accelerator.prepare(_loader(val_set, math.ceil(cfg.eval_batch_size / n) * n, shuffle=False,
                                                 num_workers=cfg.num_workers))
    task, optimizer, loader, scheduler = accelerator.prepare(task, optimizer, loader, scheduler)
    transform = PixelTransform.for_model(model, resize_to_model="fixed")
    progress = _Progress(settings=_weight_settings(cfg, batch_size, epochs, len(train_set)))
    accelerator.register_for_checkpointing(progress)
    checkpoint_dir = Path(output_dir) / "checkpoints"
    _resume(accelerator, progress, resume, checkpoint_dir)
    bar = tqdm(total=epochs * len(loader), initial=progress.epoch * len(loader) + progress.batch_in_epoch,
               desc="train", unit="batch", dynamic_ncols=True, disable=not (progress_bar and accelerator.is_main_process))
    while progress.epoch < epochs:
        _epoch(accelerator, task, optimizer, scheduler, loader, transform, progress, cfg, checkpoint_dir, bar)
        record = {"epoch": progress.epoch + 1, "train_loss": progress.loss_sum / max(progress.loss_count, 1),
                  "lr": float(scheduler.get_last_lr()[0]), "global_step": progress.global_step}
        if val_loader is not None:
            record["val_acc"] = evaluate_accuracy(accelerator, model, val_loader, transform)
            if progress.best_metric is None or record["val_acc"] > progress.best_metric:
                progress.best_metric, progress.best_epoch = record["val_acc"], record["epoch"]
                if on_best is not None:
                    on_best(record["epoch"])
        progress.history.append(record)
        progress.epoch, progress.batch_in_epoch, progress.loss_sum, progress.loss_count = progress.epoch + 1, 0, 0.0, 0
        accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=progress.global_step)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("train_loss", "val_acc")}, refresh=False)
        _save_checkpoint(accelerator, progress, checkpoint_dir / f"epoch_{progress.epoch}", cfg.keep_checkpoints)
    bar.close()
    return TrainResult(list(progress.history), progress.best_epoch, progress.best_metric, progress.global_step, batch_size,
                       epochs)
