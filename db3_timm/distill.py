"""Knowledge-distillation objective, a timm training task, and a small in-memory trainer for students.

* :func:`kd_loss` -- the DB3KD objective (CE on the teacher's labels + ``T^2``-scaled KL to the
  softened DB3 soft labels).
* :class:`DB3DistillationTask` -- the same objective as a :class:`timm.task.TrainingTask`, so code
  written for timm's ``LogitDistillationTask`` can swap in a label-only (decision-based) teacher:
  the teacher's answers arrive with the batch (``target = (labels, soft_logits)``) instead of from
  a teacher forward pass.
* :func:`fit` / :func:`evaluate` -- the compact single-process loop used by the demo, the
  benchmarks and the tests, over tensors already in memory. The Accelerate recipes (``recipes/``,
  built on :mod:`db3_timm.train_utils`) are the way to train at scale.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from timm.task import TrainingTask
except ImportError:  # timm releases before the task API: a stand-in with the same surface the recipes use

    class TrainingTask(nn.Module):  # type: ignore[no-redef]
        def __init__(self, device=None, dtype=None, verbose=True):
            super().__init__()
            self.device = device if device is not None else torch.device("cpu")
            self.dtype = dtype if dtype is not None else torch.get_default_dtype()
            self.verbose = verbose

        def get_trainable_module(self, ema: bool = False):
            return getattr(self, "trainable_module", self) if not ema else None

        def get_eval_model(self, module=None, ema: bool = False):
            return module if module is not None else getattr(self, "eval_model", self.get_trainable_module(ema))

__all__ = ["kd_loss", "kd_loss_terms", "DB3DistillationTask", "split_kd_target", "fit", "evaluate", "normalizer_for"]


def kd_loss_terms(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    soft_logits: Optional[torch.Tensor] = None,
    *,
    temperature: float = 20.0,
    scale_by_t2: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The two unweighted terms of :func:`kd_loss`: ``(CE(s, y), [T^2] * KL(softmax(z/T) || softmax(s/T)))``.

    The KL term is ``None`` without ``soft_logits``; it is averaged over the batch (``batchmean``).
    """
    ce = F.cross_entropy(student_logits, labels)
    if soft_logits is None:
        return ce, None
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(soft_logits.to(student_logits.dtype) / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return ce, kl * (t * t if scale_by_t2 else 1.0)


def kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    soft_logits: Optional[torch.Tensor] = None,
    *,
    temperature: float = 20.0,
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
    scale_by_t2: bool = True,
) -> torch.Tensor:
    """The DB3KD objective: CE on the teacher's labels plus KL to the softened DB3 soft labels.

    ``loss = ce_weight * CE(s, y) + kd_weight * [T^2] * KL(softmax(z/T) || softmax(s/T))``
    with the KL averaged over the batch. Without ``soft_logits`` it is plain cross-entropy.

    Args:
        student_logits: ``(N, C)`` student outputs.
        labels: ``(N,)`` teacher labels.
        soft_logits: ``(N, C)`` DB3 soft-label logits ``z`` (or ``None``).
        temperature: softmax temperature ``T`` (reference: 20).
        ce_weight: weight of the hard-label term.
        kd_weight: weight of the soft-label term.
        scale_by_t2: multiply the KL term by ``T^2`` (Hinton et al.) so its gradients keep their scale.

    Returns:
        The scalar loss.
    """
    ce, kl = kd_loss_terms(
        student_logits, labels, soft_logits if kd_weight else None, temperature=temperature, scale_by_t2=scale_by_t2
    )
    loss = ce_weight * ce if ce_weight else student_logits.new_zeros(())
    return loss if kl is None else loss + kd_weight * kl


def normalizer_for(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Returns the pixel-space -> model-input transform from the model's timm data config (mean/std)."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    return lambda x: (x - mean.to(x.device)) / std.to(x.device)


_LABEL_KEYS = ("labels", "label", "target", "targets")
_SOFT_KEYS = ("soft_logits", "logits", "soft_labels")


def split_kd_target(target: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Splits a :class:`DB3DistillationTask` target into ``(teacher labels, soft logits or None)``.

    Accepted forms: a label tensor ``(N,)`` (plain cross-entropy); a ``(labels, soft_logits)`` tuple or
    list (``soft_logits`` may be ``None``); a mapping with ``labels``/``label``/``target`` and, optionally,
    ``soft_logits``/``logits`` (e.g. a batch of a :func:`~db3_timm.labeling.label_dataset` dataset).
    """
    if isinstance(target, torch.Tensor):
        return target, None
    if isinstance(target, Mapping):
        labels = next((target[k] for k in _LABEL_KEYS if k in target), None)
        if labels is None:
            raise KeyError(f"target mapping has no labels (looked for {_LABEL_KEYS}); keys: {sorted(target)}")
        soft = next((target[k] for k in _SOFT_KEYS if k in target), None)
        return labels, soft
    if isinstance(target, (tuple, list)) and len(target) == 2:
        return target[0], target[1]
    raise TypeError(
        "target must be a label tensor, a (labels, soft_logits) pair or a mapping with 'labels' and 'soft_logits', "
        f"got {type(target).__name__}"
    )


class DB3DistillationTask(TrainingTask):
    """Decision-based (label-only) knowledge distillation as a timm :class:`~timm.task.TrainingTask`.

    A drop-in for timm's ``LogitDistillationTask`` when the teacher answers only labels: there is no
    teacher forward pass; the teacher's answers come with the batch as ``target = (labels, soft_logits)``,
    where ``labels`` are the teacher's labels and ``soft_logits`` the DB3 soft-label logits ``z`` of
    :func:`~db3_timm.labeling.label_dataset` (``soft_logits`` may be left out: plain CE on the labels).

    ``forward`` returns timm's dictionary: ``loss`` (to back-propagate), ``output`` (student logits, for
    metrics), ``task_loss`` (CE on the teacher labels) and ``kd_loss`` (``T^2``-scaled KL to ``softmax(z/T)``,
    zero without soft logits), with ``loss = task_loss_weight * task_loss + distill_loss_weight * kd_loss``,
    i.e. :func:`kd_loss` with ``ce_weight=task_loss_weight`` and ``kd_weight=distill_loss_weight``.

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

    def __init__(
        self,
        student_model: nn.Module,
        *,
        temperature: float = 20.0,
        task_loss_weight: Optional[float] = None,
        distill_loss_weight: Optional[float] = None,
        scale_by_t2: bool = True,
        normalize_input: bool = False,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        self.trainable_module = student_model
        self.temperature = float(temperature)
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
        if self.normalize_input:
            from timm.data import resolve_model_data_config
            from timm.utils import unwrap_model

            cfg = resolve_model_data_config(unwrap_model(student_model))
            self.register_buffer("student_mean", torch.tensor(cfg["mean"], device=self.device).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("student_std", torch.tensor(cfg["std"], device=self.device).view(1, -1, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, task_loss_weight={self.task_loss_weight}, "
            f"distill_loss_weight={self.distill_loss_weight}, scale_by_t2={self.scale_by_t2}"
        )

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs: Any) -> "DB3DistillationTask":
        """Wraps the student in ``DistributedDataParallel`` (there is no teacher module to leave out).

        Returns:
            ``self``.
        """
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = "inductor", mode: Optional[str] = None, **compile_kwargs: Any) -> nn.Module:
        """Compiles the student (used for training and evaluation alike) before any DDP wrapping."""
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = self.trainable_module
        return self.trainable_module

    def forward(self, input: torch.Tensor, target: Any) -> Dict[str, torch.Tensor]:
        """Student forward pass and DB3KD loss.

        Args:
            input: ``(N, C, H, W)`` student input (normalised, unless ``normalize_input``).
            target: teacher labels ``(N,)``, ``(labels, soft_logits)`` or a mapping (see :func:`split_kd_target`).

        Returns:
            ``{'loss', 'output', 'task_loss', 'kd_loss'}``.
        """
        labels, soft = split_kd_target(target)
        if self.normalize_input:
            input = (input - self.student_mean.to(input.dtype)) / self.student_std.to(input.dtype)
        output = self.trainable_module(input)
        # The loss in float32 even under autocast: log-softmax at T=20 of low-precision logits loses the tail.
        task_loss, kd = kd_loss_terms(
            output.float(), labels.long(), None if soft is None else soft.float(),
            temperature=self.temperature, scale_by_t2=self.scale_by_t2,
        )
        if kd is None:
            kd = task_loss.new_zeros(())
        loss = self.task_loss_weight * task_loss + self.distill_loss_weight * kd
        return {"loss": loss, "output": output, "task_loss": task_loss, "kd_loss": kd}


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    soft_logits: Optional[torch.Tensor] = None,
    *,
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
        images: ``(N, C, H, W)`` in ``[0, 1]``.
        labels: ``(N,)`` teacher labels.
        soft_logits: optional ``(N, C)`` DB3 soft-label logits.
        epochs, batch_size, lr, weight_decay: optimisation settings.
        temperature, ce_weight, kd_weight: see :func:`kd_loss`.
        seed: seeds the shuffling, so a run is reproducible.
        device: where to train.
        progress: show a tqdm bar over epochs.
        on_epoch: called as ``on_epoch(epoch, model)`` after each epoch (1-based), e.g. to score a
            validation split; the model is put back in train mode afterwards.

    Returns:
        The trained model (in eval mode).
    """
    from tqdm.auto import tqdm

    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length")
    if soft_logits is not None and soft_logits.shape[0] != labels.shape[0]:
        raise ValueError(f"soft_logits ({soft_logits.shape[0]}) and labels ({labels.shape[0]}) differ in length")
    model.to(device).train()
    norm = normalizer_for(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-images.shape[0] // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for epoch in tqdm(range(epochs), desc="train", disable=not progress, leave=False):
        order = torch.randperm(images.shape[0], generator=gen)
        for start in range(0, images.shape[0], batch_size):
            idx = order[start:start + batch_size]
            x = norm(images[idx].to(device))
            soft = None if soft_logits is None else soft_logits[idx].to(device)
            loss = kd_loss(
                model(x), labels[idx].to(device), soft,
                temperature=temperature, ce_weight=ce_weight, kd_weight=kd_weight,
            )
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
    """Returns top-1 accuracy (in [0, 1]) of ``model`` on pixel-space ``images``."""
    model.eval()
    device = next(model.parameters()).device
    norm = normalizer_for(model)
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        pred = model(norm(images[start:start + batch_size].to(device))).argmax(1)
        correct += int((pred.cpu() == labels[start:start + batch_size]).sum())
    return correct / max(1, images.shape[0])
