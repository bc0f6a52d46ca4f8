"""Knowledge-distillation objective and a small in-memory trainer for students.

The Accelerate recipes (``recipes/``) are the way to train at scale; :func:`fit`
is the compact single-process loop used by the demo, the benchmarks and the
tests, over tensors already in memory.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["kd_loss", "fit", "evaluate", "normalizer_for"]


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
    loss = ce_weight * F.cross_entropy(student_logits, labels) if ce_weight else student_logits.new_zeros(())
    if soft_logits is not None and kd_weight:
        t = float(temperature)
        kl = F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.log_softmax(soft_logits.to(student_logits.dtype) / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        loss = loss + kd_weight * (t * t if scale_by_t2 else 1.0) * kl
    return loss


def normalizer_for(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Returns the pixel-space -> model-input transform from the model's timm data config (mean/std)."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    return lambda x: (x - mean.to(x.device)) / std.to(x.device)


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
    for _ in tqdm(range(epochs), desc="train", disable=not progress, leave=False):
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
