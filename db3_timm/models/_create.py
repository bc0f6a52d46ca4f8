"""A timm model made for a set of images: its channels, its size, its classes."""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn


def create_image_model(name: str, num_classes: int, image_shape: Sequence[int], *, pretrained: bool = False) -> nn.Module:
    """Creates the timm model ``name`` for ``(C, H, W)`` images and ``num_classes`` classes.

    timm keeps an architecture's RGB, 224 px config whatever ``in_chans`` is. Here the model's ``pretrained_cfg``
    says what it trains on: ``input_size`` is ``image_shape``, and a mean/std of another channel count becomes its
    average per channel. Without that, the first normalisation broadcasts one channel to three, and the saved model,
    reloaded as a teacher, resizes its inputs to 224 px.

    Returns:
        The model (random or ``pretrained`` weights), with its own ``pretrained_cfg``.
    """
    import timm

    from .._preprocess import model_data_config

    channels = int(image_shape[0])
    model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=channels)
    cfg, resolved = dict(model.pretrained_cfg or {}), model_data_config(model)
    for key in ("mean", "std"):
        values = tuple(resolved[key])
        cfg[key] = values if len(values) == channels else (sum(values) / len(values),) * channels
    cfg["input_size"] = tuple(int(s) for s in image_shape)
    model.pretrained_cfg = model.default_cfg = cfg
    return model
