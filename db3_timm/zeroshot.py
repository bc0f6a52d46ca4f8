"""The zero-shot job behind ``db3 generate``: pseudo samples, figures, diversity, and a soft-labelled transfer set."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from ._registry import create_generator, create_labeler
from .oracle import LabelOracle

__all__ = ["run_zero_shot"]


def run_zero_shot(
    oracle: LabelOracle,
    out_dir: Union[str, os.PathLike],
    *,
    samples_per_class: int,
    iterations: int,
    queries_per_iteration: int,
    step: float = 0.5,
    step_growth: float = 1.0,
    seed: int = 0,
    num_classes: Optional[int] = None,
    input_shape: Optional[Sequence[int]] = None,
    generator: str = "zsdb3",
    generator_cfg: Optional[Dict[str, Any]] = None,
    labeler: Optional[str] = None,
    labeler_cfg: Optional[Dict[str, Any]] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Generates pseudo samples (resumable), writes their figures and diversity report, and optionally soft-labels them.

    Layout of ``out_dir``: ``state/`` (generation state, resumable), ``grids/`` (a PNG per class),
    ``robustness.png``, ``diversity.json``, ``pseudo.safetensors`` (images + labels, and the start pool),
    ``transfer/`` (the soft-labelled pseudo samples, when ``labeler`` is given; the start pool, labelled
    with ``sd``, in ``transfer/pool/``), ``summary.json``.

    Returns:
        The summary dict (queries, mean robustness per iteration, diversity, paths).
    """
    from safetensors.torch import save_file

    from .generators import build_transfer_set, diversity_report
    from .report import plot_curve, save_class_grids

    out = Path(out_dir)
    gen = create_generator(generator, oracle, num_classes=num_classes, input_shape=input_shape, seed=seed, **(generator_cfg or {}))
    pseudo = gen.generate(samples_per_class, iterations, queries_per_iteration, step=step, step_growth=step_growth,
                          out_dir=out / "state", progress=progress)
    save_file({"images": pseudo.images.contiguous().cpu(), "labels": pseudo.labels.cpu(),
               "pool_images": pseudo.pool_images.contiguous().cpu(), "pool_labels": pseudo.pool_labels.cpu()},
              str(out / "pseudo.safetensors"))
    grids = save_class_grids(pseudo.images, pseudo.labels, out / "grids")
    mean_rob = pseudo.robustness.nanmean(1).tolist() if iterations else []
    figures = [str(p) for p in grids]
    if mean_rob:
        figures.append(str(plot_curve({"mean robustness": mean_rob}, out / "robustness.png", ylabel="distance to nearest boundary",
                                      title="ZSDB3 pseudo samples")))
    diversity = diversity_report(pseudo.images, pseudo.labels, gen.num_classes)
    (out / "diversity.json").write_text(json.dumps(diversity, indent=2))
    summary: Dict[str, Any] = {
        "generator": gen.config(),
        "samples": int(pseudo.labels.shape[0]),
        "pool": int(pseudo.pool_labels.shape[0]),
        "missing_classes": pseudo.missing_classes,
        "queries": dict(pseudo.queries),
        "warm_starts": pseudo.warm_starts,
        "mean_robustness": mean_rob,
        "diversity": diversity,
        "figures": figures,
    }
    if labeler:
        lab = create_labeler(labeler, oracle, seed=seed, **(labeler_cfg or {}))
        before = oracle.queries
        build_transfer_set(pseudo, lab, out / "transfer", seed=seed, progress=progress)
        summary["queries"]["labelling"] = oracle.queries - before
        summary["transfer_set"] = str(out / "transfer")
    summary["queries"]["total"] = sum(v for k, v in summary["queries"].items() if k != "total")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
