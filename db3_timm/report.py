"""Figures and reports people look at: pseudo-sample grids, curves (PNG files), diversity."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch

from ._io import PathLike

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = ["save_class_grids", "diversity_report", "plot_curve", "plot_points"]


def _upscale(x: torch.Tensor, min_side: int) -> torch.Tensor:
    """Nearest-neighbour upscaling by an integer factor so the smaller side reaches ``min_side`` (pixels stay crisp)."""
    factor = max(1, -(-min_side // min(int(x.shape[-2]), int(x.shape[-1]))))
    return x.repeat_interleave(factor, -2).repeat_interleave(factor, -1) if factor > 1 else x


def _labelled_rows(rows: List[torch.Tensor], names: List[str], pad: int = 2) -> "Image.Image":
    """One row of tiles per class with its name written to the left (white background)."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    width = max(r.shape[0] for r in rows)
    strips = [make_grid(torch.cat([r, torch.ones(width - r.shape[0], *r.shape[1:])]), nrow=width, padding=pad,
                        pad_value=1.0) for r in rows]
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(draw_probe.textlength(n)) for n in names) + 3 * pad
    h, w = strips[0].shape[1], strips[0].shape[2]
    canvas = Image.new("RGB", (label_w + w, h * len(strips)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (strip, name) in enumerate(zip(strips, names)):
        tile = (strip.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())
        canvas.paste(Image.fromarray(tile if tile.shape[2] == 3 else tile.repeat(3, 2)), (label_w, i * h))
        draw.text((pad, i * h + h // 2 - 5), name, fill="black")
    return canvas


def save_class_grids(images: torch.Tensor, labels: torch.Tensor, out_dir: PathLike, *, per_class: int = 64,
                     per_row: int = 8, class_names: Optional[Sequence[str]] = None, min_side: int = 56) -> List[Path]:
    """Writes one PNG grid of (up to ``per_class``) images per class and an overview with one labelled row per class.

    Images are upscaled (nearest neighbour, integer factor) so each is at least ``min_side`` pixels high.

    Returns:
        The written paths (``class-<c>[-<name>].png`` per class, then ``all-classes.png``).
    """
    from torchvision.utils import make_grid, save_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, rows, names = [], [], []
    for c in labels.unique(sorted=True).tolist():
        xc = _upscale(images[labels == c][:per_class].float().cpu(), min_side)
        name = str(class_names[c]) if class_names else str(c)
        safe = "".join(ch if ch.isalnum() else "_" for ch in name)
        path = out / (f"class-{c}-{safe}.png" if class_names else f"class-{c}.png")
        save_image(make_grid(xc, nrow=per_row, padding=2, pad_value=1.0), path)
        paths.append(path)
        rows.append(xc[:per_row])
        names.append(f"{c}: {name}" if class_names else f"class {c}")
    if rows:
        _labelled_rows(rows, names).save(out / "all-classes.png")
        paths.append(out / "all-classes.png")
    return paths


def diversity_report(images: torch.Tensor, labels: torch.Tensor, num_classes: int, near: float = 1e-2) -> Dict[int, Dict[str, float]]:
    """Per class: mean pairwise L2 distance and the fraction of samples with a near-duplicate.

    A near-duplicate is another sample of the class closer than ``near * sqrt(D)``.

    Returns:
        ``{class: {"count", "mean_pairwise_l2", "near_duplicate_fraction"}}``.
    """
    flat = images.flatten(1).float()
    thresh = near * math.sqrt(flat.shape[1])
    out: Dict[int, Dict[str, float]] = {}
    for c in range(num_classes):
        xc = flat[labels == c]
        n = xc.shape[0]
        if n < 2:
            out[c] = {"count": n, "mean_pairwise_l2": float("nan"), "near_duplicate_fraction": float("nan")}
            continue
        d = torch.cdist(xc, xc)
        off = ~torch.eye(n, dtype=torch.bool, device=d.device)
        dup = ((d < thresh) & off).any(1)
        out[c] = {"count": n, "mean_pairwise_l2": float(d[off].mean()), "near_duplicate_fraction": float(dup.float().mean())}
    return out


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # an optional extra
        raise ImportError("plots need matplotlib: pip install 'db3-timm[plot]'") from err
    return plt


def _save(fig, ax, path: PathLike) -> Path:
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_points(points: Dict[str, Tuple[float, float]], path: PathLike, *, xlabel: str = "", ylabel: str = "",
                title: str = "", logx: bool = True, hline: Optional[Tuple[float, str]] = None) -> Path:
    """Plots named ``(x, y)`` points (e.g. accuracy vs queries, one point per method) to a PNG.

    Returns:
        The written path.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, (x, y) in points.items():
        ax.scatter([x], [y], s=40, label=name)
    if hline is not None:
        ax.axhline(hline[0], color="gray", linestyle="--", label=hline[1])
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, ax, path)


def plot_curve(series: Dict[str, Sequence[float]], path: PathLike, *, x: Optional[Sequence[float]] = None,
               xlabel: str = "iteration", ylabel: str = "", title: str = "", logx: bool = False) -> Path:
    """Plots one or more named curves to a PNG (needs matplotlib: ``pip install db3-timm[plot]``).

    Returns:
        The written path.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, ys in series.items():
        xs = list(x) if x is not None else list(range(1, len(ys) + 1))
        ax.plot(xs, list(ys), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    return _save(fig, ax, path)
