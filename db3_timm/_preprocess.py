"""Pixel space ``[0, 1]`` -> a model's input: clamp, resize, normalise (one copy for teacher, server, student, training)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PixelTransform", "resize", "model_data_config", "unit_float", "resize_square", "stack_ragged", "to_nchw"]


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


# ---------------------------------------------------------------------- stored pixels -> [0, 1] floats
def to_nchw(arr: np.ndarray, where: str) -> np.ndarray:
    """Put a 4-D image batch in (N, C, H, W) order, guessing channels-last vs -first from C."""
    if arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)  # CIFAR-style (N, H, W, C)
    elif arr.shape[1] not in (1, 3, 4):
        raise ValueError(f"{where}: cannot tell the channel axis of image batch shape {arr.shape}")
    return arr[:, :3] if arr.shape[1] == 4 else arr  # drop alpha: students see 1 or 3 channels


def stack_ragged(
    arrays: list[np.ndarray], image_size: int | None, where: str, *, channels_last: bool | None
) -> np.ndarray:
    """Stack images that differ in size or channel count into one (N, C, S, S) float array."""
    chw = []
    for a in arrays:
        a = np.asarray(a)
        if a.ndim == 2:
            a = a[None]
        elif a.ndim == 3 and (
            channels_last or (channels_last is None and a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3))
        ):
            a = a.transpose(2, 0, 1)
        elif a.ndim != 3:
            raise ValueError(f"{where}: cannot read an image of shape {a.shape}")
        chw.append(a[:3])
    channels = max(a.shape[0] for a in chw)
    sizes = {a.shape[1:] for a in chw}
    if len(sizes) > 1 and image_size is None:
        examples = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:3])
        raise ValueError(
            f"{where}: images have different sizes ({examples}, ...); pass image_size=S to resize them all to SxS"
        )
    out = []
    for a in chw:
        t = unit_float(a)[None]
        if t.shape[1] != channels:
            t = t.expand(-1, channels, -1, -1)  # grayscale among colour images: replicate to RGB
        if image_size is not None:
            t = resize_square(t, image_size)
        out.append(t)
    return torch.cat(out).numpy()


def unit_float(arr: np.ndarray) -> torch.Tensor:
    """uint8/int pixels -> /255; floats must already lie in [0, 1]."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.astype(np.float32)).div_(255.0)
    if arr.dtype == np.bool_:
        return torch.from_numpy(arr.astype(np.float32))
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"integer pixels must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
        return torch.from_numpy(arr.astype(np.float32)).div_(255.0)
    if arr.dtype.kind == "f":
        out = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if out.numel() and (float(out.min()) < 0.0 or float(out.max()) > 1.0):
            raise ValueError(
                f"float pixels must lie in [0, 1], got [{float(out.min()):.4g}, {float(out.max()):.4g}] "
                "(already normalised? load the raw images instead)"
            )
        return out
    raise ValueError(f"cannot use pixels of dtype {arr.dtype}")


def resize_square(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinear resize to size x size; chunked so peak memory stays near the output size."""
    if images.shape[-2:] == (size, size):
        return images
    out = images.new_empty((images.shape[0], images.shape[1], size, size))
    for start in range(0, images.shape[0], chunk):
        out[start:start + chunk] = resize(images[start:start + chunk], (size, size), antialias=True)
    # Bilinear weights are convex, but guard against float rounding just outside [0, 1].
    return out.clamp_(0.0, 1.0)
