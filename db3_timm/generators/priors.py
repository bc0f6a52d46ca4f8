"""Noise priors: the images a zero-shot run asks the teacher about before anything is learnt.

Each prior is ``fn(n, shape, generator, device) -> (n, *shape)`` images in ``[0, 1]``, drawn from ``generator``
only, so a resumed run draws the same images. :data:`NOISE_PRIORS` names the ones a run can pick
(``ZeroShotConfig.noise_prior``, ``db3 distill --noise-prior``); :func:`start_noise` adds the paper's per-pixel
noise for ZSDB3's start pool.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["reference_noise", "smooth_noise", "stretched_noise", "STRETCHED_SCALES", "NOISE_PRIORS", "noise_prior",
           "start_noise"]


def reference_noise(n: int, shape: Sequence[int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Returns ``n`` noise images ``clip(s1 * (U[0,1) + 0.2) + s2 * N(0, I), 0, 1)``, ``s1, s2 ~ U[0, 1)`` per image."""
    s = torch.rand(n, 2, *([1] * len(shape)), generator=generator, device=device)
    u = torch.rand(n, *shape, generator=generator, device=device)
    z = torch.randn(n, *shape, generator=generator, device=device)
    return (s[:, 0] * (u + 0.2) + s[:, 1] * z).clamp(0.0, 1.0)


def smooth_noise(
    n: int, shape: Sequence[int], generator: torch.Generator, device: torch.device,
    scales: Sequence[Union[int, Tuple[int, int]]] = (5, 7, 10),
) -> torch.Tensor:
    """Returns ``n`` low-frequency noise images in ``(0, 1)``.

    Each image is Gaussian noise drawn at a coarse ``r x r`` resolution (``r`` picked from ``scales``; an
    ``(rh, rw)`` pair draws a stretched grid), upsampled bicubically to ``shape`` and squashed by
    ``sigmoid(a * (z + b))`` with a random contrast ``a ~ U[1, 4)`` and offset ``b ~ U[-1.5, 0.5)``, so most
    images are smooth shapes on a darker background. Natural images have most of their energy at low frequencies;
    a teacher's answers on such noise say far more about how it treats real images than its answers on per-pixel
    noise (measured on Fashion-MNIST: a student trained on 50k teacher-labelled images of each kind scores 65 %
    against 15 % on the real test set).
    """
    c, h, w = (int(v) for v in shape)
    out = torch.empty(n, c, h, w, device=device)
    which = torch.randint(0, len(scales), (n,), generator=generator, device=device)
    for i, r in enumerate(scales):
        rh, rw = (int(r), int(r)) if isinstance(r, int) else (int(r[0]), int(r[1]))
        idx = (which == i).nonzero().squeeze(1)
        k = idx.numel()
        z = torch.randn(k, c, rh, rw, generator=generator, device=device)
        up = F.interpolate(z, size=(h, w), mode="bicubic", align_corners=False)
        ab = torch.rand(k, 2, 1, 1, 1, generator=generator, device=device)
        out[idx] = torch.sigmoid((1.0 + 3.0 * ab[:, 0]) * (up + 2.0 * ab[:, 1] - 1.5))
    return out


#: Grids of :func:`stretched_noise`: tall, wide and square, so shapes come as bars and slabs as well as blobs.
STRETCHED_SCALES = ((7, 4), (4, 7), (10, 5), (5, 10), (5, 5), (7, 7), (10, 10))


def stretched_noise(n: int, shape: Sequence[int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Returns ``n`` images of :func:`smooth_noise` drawn on :data:`STRETCHED_SCALES` grids (4 of 7 stretched).

    Elongated shapes are what separate some classes (trousers' legs, sleeves), and square grids rarely draw them.
    Fashion-MNIST, 50k teacher-labelled images, a student trained on 400k samples: 68.9 / 69.5 % against 63.5 /
    65.6 % for :func:`smooth_noise` (training seeds 0 and 1; ``benchmarks/RESULTS.md``).
    """
    return smooth_noise(n, shape, generator, device, scales=STRETCHED_SCALES)


#: Noise priors a zero-shot run draws from (``ZeroShotConfig.noise_prior``): ``name -> fn(n, shape, generator, device)``.
NOISE_PRIORS: Dict[str, Callable[..., torch.Tensor]] = {"smooth": smooth_noise, "stretched": stretched_noise}


def noise_prior(name: str, option: str = "noise_prior") -> Callable[..., torch.Tensor]:
    """Returns the :data:`NOISE_PRIORS` function called ``name``.

    Raises:
        ValueError: naming ``option``, the value and the known priors.
    """
    if name not in NOISE_PRIORS:
        raise ValueError(f"{option} must be one of {sorted(NOISE_PRIORS)}, got {name!r}")
    return NOISE_PRIORS[name]


def start_noise(name: str, option: str = "start") -> Callable[..., torch.Tensor]:
    """Returns the start prior of ZSDB3's noise search called ``name``: :func:`reference_noise` for
    ``"reference"``, else a :data:`NOISE_PRIORS` entry (looked up now, so a prior added later is one too).

    Raises:
        ValueError: naming ``option``, the value and the known start priors.
    """
    if name == "reference":
        return reference_noise
    if name not in NOISE_PRIORS:
        raise ValueError(f"{option} must be one of {sorted(['reference', *NOISE_PRIORS])}, got {name!r}")
    return NOISE_PRIORS[name]
