"""Pixel space ``[0, 1]`` -> a model's input: clamp, resize, normalise (one copy for teacher, server, student, training)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PixelTransform", "resize", "model_data_config"]


def resize(x: torch.Tensor, size: Sequence[int], *, antialias: bool = False) -> torch.Tensor:
    """Returns ``x`` (N, C, H, W) resized bilinearly to ``size`` (H, W); unchanged when it already has that size."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def model_data_config(model: nn.Module) -> Dict[str, Any]:
    """Returns timm's resolved data config of ``model`` (``mean``, ``std``, ``input_size``, ...)."""
    from timm.data import resolve_model_data_config
    from timm.utils import unwrap_model

    return resolve_model_data_config(unwrap_model(model))


class PixelTransform(nn.Module):
    """Pixel-space batch ``(N, C, H, W)`` in ``[0, 1]`` (or uint8 in ``[0, 255]``) -> normalised model input.

    Inputs are clamped to ``[0, 1]``, resized bilinearly when ``input_size`` is given and their height/width
    differ, then normalised as ``(x - mean) / std``, folded into one multiply-add.

    Args:
        mean, std: per-channel pixel-space mean and std (one value broadcasts to every channel).
        input_size: optional ``(C, H, W)``; inputs of another ``H, W`` are resized to it.
        antialias: antialias when resizing (students: yes, like data loading; teachers keep their historic
            plain bilinear resize so their answers do not change).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], input_size: Optional[Sequence[int]] = None,
                 *, antialias: bool = False):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if input_size is not None:
            channels = int(input_size[0])
            mean_t, std_t = mean_t.expand(1, channels, 1, 1), std_t.expand(1, channels, 1, 1)
        self.register_buffer("scale", (1.0 / std_t).clone(), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).clone(), persistent=False)
        self.input_size: Optional[Tuple[int, int, int]] = None if input_size is None else tuple(int(s) for s in input_size)
        self.antialias = bool(antialias)

    @classmethod
    def for_model(cls, model: nn.Module, *, resize_to_model: str = "always") -> "PixelTransform":
        """Builds the transform from ``model``'s timm data config, on the model's device and dtype.

        Args:
            model: a timm model (or any module with a ``pretrained_cfg``).
            resize_to_model: ``"always"`` (teachers: every input becomes the model's input size), ``"fixed"``
                (students: only models whose config declares ``fixed_input_size``) or ``"never"``.
        """
        if resize_to_model not in ("always", "fixed", "never"):
            raise ValueError(f"resize_to_model must be 'always', 'fixed' or 'never', got {resize_to_model!r}")
        cfg = model_data_config(model)
        fixed = bool((getattr(model, "pretrained_cfg", None) or {}).get("fixed_input_size", False))
        size = cfg["input_size"] if resize_to_model == "always" or (resize_to_model == "fixed" and fixed) else None
        out = cls(cfg["mean"], cfg["std"], size, antialias=resize_to_model != "always")
        ref = next(iter(model.parameters()), None)
        if ref is not None:
            out = out.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else torch.float32)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():  # 8-bit pixels (quantised answers, images on disk)
            x = x.to(device=self.scale.device, dtype=self.scale.dtype).div_(255.0)
        x = x.to(device=self.scale.device, dtype=self.scale.dtype).clamp(0.0, 1.0)
        if self.input_size is not None:
            x = resize(x, self.input_size[1:], antialias=self.antialias)
        return torch.addcmul(self.shift, x, self.scale)
