"""Transfer priors: where a white-box surrogate thinks each boundary normal points.

A label-only search spends about one bit per query on a ~784-dimensional normal, so a free hint
helps most at small budgets. In DB3KD one is at hand: any model trained on the teacher's hard
labels of the reference images (the hard-label student, say) has input gradients that
correlate with the teacher's boundary normals (cosine 0.30-0.57 for LeNet-5 surrogates of a
4-epoch Fashion-MNIST LeNet-5 teacher, against ~0.04 for a random direction). The prior costs
no queries; the search only tries it and keeps what verifiably shortens the distance.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from .._io import module_fingerprint
from .._preprocess import PixelTransform

__all__ = ["SurrogatePrior"]


class SurrogatePrior:
    """Direction prior from a white-box surrogate classifier's margin gradient.

    Called with a batch of images, it returns per image the input gradient of the surrogate's margin
    ``z_t - max_{j != t} z_j`` toward the pair's target ``t``, or of ``max_{j != y} z_j - z_y`` away
    from its origin ``y`` for untargeted pairs: the direction in which the point should become
    adversarial fastest, if the surrogate resembles the teacher.

    Args:
        model: classifier taking normalised images and returning logits (a timm model).
        normalize: pixel-space -> model-input transform (default: the mean/std of the model's timm
            ``pretrained_cfg``; none for a plain module without one).
        max_batch_size: points per forward/backward pass (bounds memory).
    """

    def __init__(
        self,
        model: nn.Module,
        normalize: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        max_batch_size: int = 1024,
    ):
        if normalize is None and getattr(model, "pretrained_cfg", None):
            normalize = PixelTransform.for_model(model, resize_to_model="never")
        self.model = model.eval()
        self.normalize = normalize or (lambda x: x)
        self.max_batch_size = int(max_batch_size)

    def describe(self) -> Dict[str, str]:
        """Returns the surrogate's class name and a fingerprint of its weights (what makes a labelling run reproducible)."""
        return {"model": type(self.model).__name__, "weights": module_fingerprint(self.model)}

    def __call__(self, points: torch.Tensor, origins: torch.Tensor, targets: Optional[torch.Tensor]) -> torch.Tensor:
        """Returns ``(M, C, H, W)`` margin gradients at the images ``points (M, C, H, W)``."""
        out = torch.empty_like(points)
        device = next(self.model.parameters()).device
        for start in range(0, points.shape[0], self.max_batch_size):
            part = slice(start, start + self.max_batch_size)
            x = points[part].to(device).detach().requires_grad_(True)
            with torch.enable_grad():
                z = self.model(self.normalize(x)).float()
                if targets is None:
                    own = origins[part].to(device).view(-1, 1)
                    margin = z.scatter(1, own, float("-inf")).amax(1) - z.gather(1, own).squeeze(1)
                else:
                    goal = targets[part].to(device).view(-1, 1)
                    margin = z.gather(1, goal).squeeze(1) - z.scatter(1, goal, float("-inf")).amax(1)
                (grad,) = torch.autograd.grad(margin.sum(), x)
            out[part] = grad.to(out)
        return out
