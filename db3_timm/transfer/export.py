"""Export a DB3 transfer set as an ordinary labelled image dataset (Parquet + ``datasets.Image``).

:func:`~db3_timm.transfer.label.label_dataset` keeps the exact float pixels the teacher saw (``Array3D``).
Other tools expect images: :func:`export_parquet` writes the transfer set in the Hugging Face Hub
layout ::

    out_dir/
      README.md                                  # dataset card: provenance, columns, the rounding note
      data/train-00000-of-00003.parquet, ...     # image (PNG), label, soft_logits

which ``datasets.load_dataset(out_dir)`` and timm read like any labelled set::

    timm.data.create_dataset("hfds/" + out_dir, root=None, split="train")   # -> (PIL image, teacher label)

(timm's ``hfds/NAME`` reader passes ``NAME`` to ``datasets.load_dataset``, which takes a local folder as
well as a Hub id; ``input_key="image"``, ``target_key="label"`` are its defaults.)

timm's own ``train.py --dataset hfds/DIR`` reads only ``image`` and ``label``: it trains on the teacher's
**hard labels** and ignores ``soft_logits``. To train on the soft labels use ``db3 distill``,
``recipes/distill.py`` or :class:`~db3_timm.training.DB3DistillationTask` in your own loop.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .._io import PathLike

__all__ = ["export_parquet", "to_uint8_hwc"]



def to_uint8_hwc(images: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """Float ``(N, C, H, W)`` pixels in ``[0, 1]`` -> uint8 ``(N, H, W, C)`` by ``round(255 * x)`` (clamped)."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise ValueError(f"expected (N, C, H, W) images with 1, 3 or 4 channels, got shape {x.shape}")
    return np.clip(np.rint(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[-1]]
    img = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode=mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _resolve_source(source: Any) -> Any:
    import datasets

    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        from .build import load_transfer_set

        return load_transfer_set(source).rows.with_format(None)
    raise TypeError(f"source must be a db3 dataset folder (db3 label / generate / distill) or a datasets.Dataset, "
                    f"got {type(source).__name__}")


def _card(num_rows: int, num_files: int, num_classes: int, class_names: Optional[List[str]],
          max_err: float, extra: Sequence[str], provenance: Dict[str, Any]) -> str:
    names = "ClassLabel with the names " + ", ".join(map(str, class_names[:12])) + (", ..." if len(class_names) > 12 else "") \
        if class_names else "int64 (class names unknown)"
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
tags:
- knowledge-distillation
- db3kd
- db3-timm
---
# DB3KD transfer set

A transfer set for decision-based black-box knowledge distillation (Wang, ICML 2021), written by
`db3_timm.transfer.export_parquet`: {num_rows} rows in {num_files} Parquet file(s).

| column | type | meaning |
|---|---|---|
| `image` | `Image` (PNG, 8-bit) | the input the teacher labelled, rounded to 8 bits |
| `label` | {names} | the teacher's label (a label-only query), not a ground-truth label |
| `soft_logits` | list of {num_classes} float32 | DB3 soft-label logits `z`; train on `softmax(z / T)` (reference T = 20) |
{"".join(f"| `{c}` | | copied from the labelled set |" + chr(10) for c in extra)}
**Lossy images.** The soft labels were computed on float pixels; the PNGs store `round(255 * x)`.
Largest rounding error in this export: {max_err:.6f} (at most 1/510 = 0.001961 for pixels in [0, 1]).
Sources that are not 8-bit (e.g. scikit-learn digits, resized images) do not round-trip exactly; use the
`label_dataset` shards (float `Array3D`) when the exact pixels matter.

Load with `datasets.load_dataset("<this folder or repo>")` or, in timm,
`timm.data.create_dataset("hfds/<this folder or repo>", root=None, split="train")`.

**timm's `train.py --dataset hfds/...` trains on the hard `label` only**: it does not read `soft_logits`.
To distil with the soft labels, use `db3 distill`, `recipes/distill.py` or
`db3_timm.DB3DistillationTask` in your own training loop.

Provenance:

```json
{json.dumps(provenance, indent=2, default=str)}
```
"""


def export_parquet(
    source: Any,
    out_dir: PathLike,
    *,
    rows_per_file: int = 10_000,
    class_names: Optional[Sequence[str]] = None,
    extra_columns: Sequence[str] = (),
    overwrite: bool = False,
) -> Dict[str, Any]:
    """Writes a DB3 transfer set as Parquet shards with 8-bit PNG images, readable by ``datasets`` and timm.

    Files: ``out_dir/data/train-00000-of-0000N.parquet`` (``rows_per_file`` rows each) and a dataset card
    ``out_dir/README.md``. Columns:

    * ``image`` -- :class:`datasets.Image`, PNG-encoded, mode ``L`` (1 channel) or ``RGB`` (3 channels).
      **Lossy:** the float pixels are rounded to 8 bits (``round(255 * x)``, error <= 1/510), while the
      soft labels belong to the float pixels the teacher saw; sources that are not 8-bit (scikit-learn
      digits, resized images) do not round-trip exactly. Keep the ``label_dataset`` shards when the exact
      pixels matter.
    * ``label`` -- the teacher's label: :class:`datasets.ClassLabel` when ``class_names`` is given, else int64.
    * ``soft_logits`` -- list of float32 (one per class): the DB3 soft-label logits ``z``.
    * any of ``extra_columns`` (e.g. ``"index"``, ``"distances"``, ``"queries"``), copied as they are.

    Args:
        source: a :func:`~db3_timm.transfer.label.label_dataset` output folder (loaded with ``load_labeled_dataset``)
            or a ``datasets.Dataset`` with ``image`` (float ``(C, H, W)`` in ``[0, 1]``), ``label`` and
            ``soft_logits`` columns.
        out_dir: destination folder (created).
        rows_per_file: rows per Parquet file.
        class_names: the class names, in label order (makes ``label`` a ``ClassLabel``).
        extra_columns: more source columns to keep.
        overwrite: replace an existing ``out_dir/data`` (otherwise an existing one is an error).

    Returns:
        ``{"out_dir", "files", "num_rows", "num_classes", "max_rounding_error"}``.
    """
    if isinstance(rows_per_file, bool) or not isinstance(rows_per_file, int) or rows_per_file < 1:
        raise ValueError(f"rows_per_file must be a positive int, got {rows_per_file!r}")
    ds = _resolve_source(source)
    missing = [c for c in ("image", "label", "soft_logits", *extra_columns) if c not in ds.column_names]
    if missing:
        raise ValueError(f"source has no column(s) {missing}; it has {ds.column_names}")
    if len(ds) == 0:
        raise ValueError("source is empty; nothing to export")
    num_classes = len(ds[0]["soft_logits"])
    if class_names is None and hasattr(ds.features["label"], "names"):
        class_names = ds.features["label"].names
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes (soft_logits width)")
    out = Path(out_dir)
    data_dir = out / "data"
    if data_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{str(data_dir)!r} exists; pass overwrite=True to replace it")
        shutil.rmtree(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp_dir = out / f".data-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        files, max_err = _write_files(ds, _features(ds, class_names, extra_columns), tmp_dir, rows_per_file, extra_columns)
        os.replace(tmp_dir, data_dir)  # the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    (out / "README.md").write_text(_card(len(ds), len(files), num_classes, class_names, max_err, list(extra_columns),
                                         _provenance(source, len(ds), num_classes)))
    return {"out_dir": str(out), "files": [str(data_dir / f) for f in files], "num_rows": len(ds),
            "num_classes": num_classes, "max_rounding_error": max_err}


def _features(ds: Any, class_names: Optional[List[str]], extra_columns: Sequence[str]) -> Any:
    import datasets
    from datasets import ClassLabel, Features, Image, Value

    feats: Dict[str, Any] = {
        "image": Image(),
        "label": ClassLabel(names=class_names) if class_names is not None else Value("int64"),
        "soft_logits": datasets.List(Value("float32")),
    }
    feats.update({c: ds.features[c] for c in extra_columns})
    return Features(feats)


def _write_files(ds: Any, features: Any, folder: Path, rows_per_file: int, extra_columns: Sequence[str]):
    """Writes the Parquet files into ``folder``; returns their names and the largest 8-bit rounding error."""
    import datasets

    from .._disk import quiet_datasets

    n = len(ds)
    num_files = math.ceil(n / rows_per_file)
    files: List[str] = []
    max_err = 0.0
    src = ds.with_format("numpy", columns=["image", "label", "soft_logits", *extra_columns])
    with quiet_datasets():  # one "Creating parquet" bar per file would bury the caller's output
        for k in range(num_files):
            rows = src[k * rows_per_file:min(n, (k + 1) * rows_per_file)]
            x = np.asarray(rows["image"])
            pixels = to_uint8_hwc(x) if x.dtype != np.uint8 else x.transpose(0, 2, 3, 1)
            max_err = max(max_err, float(np.abs(pixels.transpose(0, 3, 1, 2) / 255.0 - _unit(x)).max()))
            columns = {
                "image": [{"bytes": _png(p), "path": None} for p in pixels],
                "label": np.asarray(rows["label"]).astype(np.int64).tolist(),
                "soft_logits": np.asarray(rows["soft_logits"], dtype=np.float32).tolist(),
            }
            for c in extra_columns:
                columns[c] = rows[c].tolist() if hasattr(rows[c], "tolist") else list(rows[c])
            name = f"train-{k:05d}-of-{num_files:05d}.parquet"
            datasets.Dataset.from_dict(columns, features=features).to_parquet(str(folder / name))
            files.append(name)
    return files, max_err


def _unit(x: np.ndarray) -> np.ndarray:
    return x / 255.0 if x.dtype == np.uint8 else x


def _provenance(source: Any, rows: int, num_classes: int) -> Dict[str, Any]:
    provenance: Dict[str, Any] = {"rows": rows, "num_classes": num_classes}
    if isinstance(source, (str, os.PathLike)):
        from .._io import read_json

        manifest = read_json(Path(source) / "manifest.json", "manifest")
        labeler = (manifest.get("config") or {}).get("labeler") or (manifest.get("info") or {}).get("labeler")
        provenance.update({"teacher": manifest.get("teacher"), "labeler": labeler, "queries": manifest.get("queries"),
                           "db3_timm_version": manifest.get("db3_timm_version")})
    return provenance
