"""Figures people look at: pseudo-sample grids and curves (PNG files)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["save_class_grids", "plot_curve", "plot_points"]

PathLike = Union[str, Path]


def save_class_grids(images: torch.Tensor, labels: torch.Tensor, out_dir: PathLike, *, per_class: int = 64,
                     class_names: Optional[Sequence[str]] = None) -> List[Path]:
    """Writes one PNG grid of (up to ``per_class``) images per class and one overview grid.

    Returns:
        The written paths (``class-<c>.png`` per class, then ``all-classes.png``).
    """
    from torchvision.utils import make_grid, save_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    for c in labels.unique(sorted=True).tolist():
        xc = images[labels == c][:per_class].float().cpu()
        name = class_names[c] if class_names else str(c)
        path = out / f"class-{c}-{name}.png" if class_names else out / f"class-{c}.png"
        save_image(make_grid(xc, nrow=8, padding=1, pad_value=1.0), path)
        paths.append(path)
        rows.append(xc[:8])
    if rows:
        width = max(r.shape[0] for r in rows)
        padded = [torch.cat([r, torch.ones(width - r.shape[0], *r.shape[1:])]) for r in rows]
        save_image(make_grid(torch.cat(padded), nrow=width, padding=1, pad_value=1.0), out / "all-classes.png")
        paths.append(out / "all-classes.png")
    return paths


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
