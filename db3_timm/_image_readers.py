"""The readers behind :mod:`db3_timm.data` for Hugging Face and torchvision sources.

Each returns the raw split ``{"images", "labels", "num_classes", "class_names"}``. ``images`` is an array, or for
encoded image columns an :class:`HFImageRows` that decodes only the rows asked for, so a split bigger than memory
can be read slice by slice from its memory-mapped Arrow files.
"""
from __future__ import annotations

import inspect
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ._preprocess import stack_ragged, to_nchw

__all__ = ["HFImageRows", "load_hf", "load_torchvision", "train_or_test"]

# PIL modes read as one gray channel; any other mode in a split makes it RGB.
_GRAY_MODES = ("L", "1", "LA", "I", "I;16", "F")


class HFImageRows:
    """The encoded images of a Hugging Face column, decoded per slice as L or RGB ``(n, C, H, W)`` arrays.

    Opening reads only the image headers (mode and size), so the channel count and the shape are known, and
    images of different sizes without ``image_size`` are refused, before any pixel is decoded.
    """

    def __init__(self, col: Any, img_col: str, image_size: int | None, target: str):
        import datasets

        modes, sizes = _image_headers(col, img_col)
        self.channels = 1 if all(m in _GRAY_MODES for m in modes) else 3
        if len(sizes) > 1 and image_size is None:
            examples = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:3])
            raise ValueError(f"{target}: images have different sizes ({examples}, ...); pass image_size=S to resize "
                             "them all to SxS")
        self.size = next(iter(sizes))  # (H, W) of every image when they agree
        self.ragged = len(sizes) > 1
        # Gray among colour images becomes RGB (replicated), palette/alpha/16-bit files become L or RGB.
        mode = "L" if self.channels == 1 else "RGB"
        self.col = col.cast_column(img_col, datasets.Image(mode=mode)).with_format("numpy")
        self.img_col, self.image_size, self.target = img_col, image_size, target

    def __len__(self) -> int:
        return len(self.col)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of a decoded row before any resize (``image_size`` when the sizes differ)."""
        h, w = (self.image_size, self.image_size) if self.ragged else self.size
        return (self.channels, h, w)

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        images = self.col[rows if isinstance(rows, slice) else rows.tolist()][self.img_col]
        if images.dtype == object:  # sizes differ: resized one by one to image_size
            return stack_ragged(list(images), self.image_size, self.target, channels_last=True)
        return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


def _image_headers(col: Any, img_col: str, batch: int = 512) -> tuple[set, set]:
    """Every image's PIL mode and (H, W), read from the file headers only (no pixel is decoded)."""
    import datasets
    from PIL import Image

    raw = col.cast_column(img_col, datasets.Image(decode=False))
    modes, sizes = set(), set()
    for part in raw.iter(batch_size=batch):
        for item in part[img_col]:
            with Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as im:
                modes.add(im.mode)
                sizes.add((im.size[1], im.size[0]))
    return modes, sizes


_HF_IMAGE_NAMES = ("image", "img", "pixel_values")
_HF_LABEL_NAMES = ("label", "labels", "fine_label")


def load_hf(
    target: str, split: str, limit: int | None, image_size: int | None, *, cache_dir: str | None
) -> dict[str, Any]:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("Hugging Face sources need the 'datasets' package: pip install datasets") from exc

    local = Path(os.path.expanduser(target))
    if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                alias = {"t10k": "test"}.get(split)
                if alias not in loaded:
                    raise ValueError(f"split {split!r} not in {str(local)!r}; it has splits {sorted(loaded)}")
                split = alias
            ds = loaded[split]
        else:
            ds = loaded  # a single saved Dataset: it is the split
    else:
        source = str(local) if local.is_dir() else target
        try:
            ds = datasets.load_dataset(source, split=split, cache_dir=cache_dir)
        except Exception as exc:
            if local.is_dir() or not _is_network_error(exc):
                raise
            raise ConnectionError(
                f"could not reach the Hugging Face Hub to load {target!r} ({type(exc).__name__}: {exc}). "
                "Download it where there is network (e.g. datasets.load_dataset(...).save_to_disk(DIR)) "
                "and pass the local folder instead: 'hf:/path/to/DIR' (a save_to_disk folder, or a "
                "parquet/imagefolder directory)."
            ) from exc
        if isinstance(ds, datasets.DatasetDict):  # defensive: split=None style returns
            ds = ds[split]
    return _hf_to_arrays(ds, target, limit, image_size)


def _is_network_error(exc: BaseException) -> bool:
    """True if ``exc`` or anything in its cause/context chain means 'no network'."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        # Matched by name too: requests/httpx connection errors do not subclass ConnectionError.
        if isinstance(cur, (ConnectionError, TimeoutError)) or type(cur).__name__ in (
            "ConnectError", "ConnectTimeout", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
        ):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _pick_column(features: dict, feature_type: type, names: Sequence[str]) -> str | None:
    typed = [c for c, f in features.items() if isinstance(f, feature_type)]
    for name in names:  # prefer conventional names among typed columns (CIFAR-100: fine_label over coarse_label)
        if name in typed:
            return name
    if typed:
        return typed[0]
    for name in names:
        if name in features:
            return name
    return None


def _hf_to_arrays(ds: Any, target: str, limit: int | None, image_size: int | None) -> dict[str, Any]:
    import datasets

    features = ds.features
    img_col = _pick_column(features, datasets.Image, _HF_IMAGE_NAMES)
    lab_col = _pick_column(features, datasets.ClassLabel, _HF_LABEL_NAMES)
    if img_col is None or lab_col is None:
        missing = "image" if img_col is None else "label"
        raise ValueError(
            f"{target!r}: found no {missing} column among {list(features)} "
            f"(looked for an Image/ClassLabel feature or the names "
            f"{_HF_IMAGE_NAMES if img_col is None else _HF_LABEL_NAMES})"
        )
    all_labels, num_classes, class_names = _hf_labels(ds, lab_col, target)

    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    labels = all_labels[: len(ds)].astype(np.int64)

    col = ds.select_columns([img_col])
    if not len(col):
        raise ValueError(f"{target!r}: the split is empty")
    images = _hf_images(col, features[img_col], img_col, image_size, target)
    return {"images": images, "labels": labels, "num_classes": num_classes, "class_names": class_names}


def _hf_labels(ds: Any, lab_col: str, target: str) -> tuple[np.ndarray, int, list[str] | None]:
    """The whole split's label column (cheap), so num_classes describes the split, not just the limit."""
    import datasets

    all_labels = np.asarray(ds.select_columns([lab_col]).with_format("numpy")[:][lab_col])
    if all_labels.ndim != 1 or all_labels.dtype.kind not in "iu":
        raise ValueError(f"{target!r}: label column {lab_col!r} must hold one integer per sample, "
                         f"got {all_labels.dtype} {all_labels.shape}")
    label_feature = ds.features[lab_col]
    if isinstance(label_feature, datasets.ClassLabel):
        return all_labels, label_feature.num_classes, list(label_feature.names)
    return all_labels, (int(all_labels.max()) + 1 if len(all_labels) else 1), None


def _hf_images(col: Any, feature: Any, img_col: str, image_size: int | None, target: str) -> Any:
    """The image column ``img_col`` of the one-column dataset ``col``: an (N, C, H, W) array for stored pixel
    arrays, an :class:`HFImageRows` (decoded per slice) for encoded images."""
    import datasets

    if (isinstance(feature, dict) and set(feature) == {"bytes", "path"}) or (
        isinstance(feature, datasets.Image) and not feature.decode
    ):
        # Parquet written without HF metadata stores images as bare {bytes, path} structs;
        # Image(decode=False) yields the same dicts. Both need decoding to pixels.
        col = col.cast_column(img_col, datasets.Image())
        feature = datasets.Image()
    if not isinstance(feature, datasets.Image):  # e.g. pre-extracted pixel_values arrays
        images = np.asarray(col.with_format("numpy")[:][img_col])
        if images.dtype == object:
            return stack_ragged(list(images), image_size, target, channels_last=None)
        return images[:, None] if images.ndim == 3 else to_nchw(images, target)
    return HFImageRows(col, img_col, image_size, target)


# --------------------------------------------------------------------------- torchvision


def load_torchvision(
    spec: str, split: str, limit: int | None, image_size: int | None, root: str | None
) -> tuple[dict[str, Any], str]:
    parts = spec.split(":", 2)  # maxsplit keeps Windows roots like C:\data intact
    tv_name = parts[1].strip()
    tv_root = parts[2] if len(parts) > 2 and parts[2] else root
    if not tv_name:
        raise ValueError(f"dataset spec {spec!r} names no dataset; use 'torchvision:NAME[:ROOT]'")
    if tv_root is None:
        raise ValueError(f"dataset spec {spec!r} needs a root: 'torchvision:{tv_name}:ROOT' or root=ROOT")
    tv_root = os.path.expanduser(tv_root)

    import torchvision.datasets as tvd

    classes = {
        n: obj for n in dir(tvd)
        if not n.startswith("_") and inspect.isclass(obj := getattr(tvd, n))
        and issubclass(obj, torch.utils.data.Dataset)
    }
    cls = classes.get(tv_name) or {n.lower(): c for n, c in classes.items()}.get(tv_name.lower())
    if cls is None:
        raise ValueError(f"dataset spec {spec!r}: torchvision.datasets has no dataset {tv_name!r}")
    ds = _open_torchvision(cls, tv_root, split, spec)
    return _torchvision_arrays(ds, spec, limit, image_size), f"torchvision:{cls.__name__}"


def _open_torchvision(cls: type, tv_root: str, split: str, spec: str) -> Any:
    """Instantiates ``cls`` under ``tv_root`` for ``split`` without downloading; a missing file names the root."""
    import torchvision.datasets as tvd

    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "download" in params:
        kwargs["download"] = False  # never fetch at run time; files must already be under ROOT
    if "train" in params:
        kwargs["train"] = train_or_test(split, spec) == "train"
    elif "split" in params:
        kwargs["split"] = split
    try:
        return cls(tv_root, **kwargs)
    except (RuntimeError, FileNotFoundError) as exc:
        hint_words = ("not found", "download", "corrupt")
        if isinstance(exc, RuntimeError) and not any(w in str(exc).lower() for w in hint_words):
            raise
        layout = (
            f" (expected e.g. {os.path.join(tv_root, cls.__name__, 'raw', 'train-images-idx3-ubyte')})"
            if issubclass(cls, tvd.MNIST) else ""
        )
        raise FileNotFoundError(
            f"torchvision.datasets.{cls.__name__} found no usable files under {tv_root!r}{layout}; "
            f"downloads are disabled here, so place the files there first ({exc})"
        ) from exc


def _torchvision_arrays(ds: Any, spec: str, limit: int | None, image_size: int | None) -> dict[str, Any]:
    """The first ``limit`` samples of a torchvision dataset as raw arrays (in-memory data when it has any)."""
    data = getattr(ds, "data", None)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)  # SVHN, STL10
    n = len(ds) if limit is None else min(limit, len(ds))
    if isinstance(data, torch.Tensor):
        data = data.numpy()
    if isinstance(data, np.ndarray) and data.ndim in (3, 4) and len(data) == len(ds) and targets is not None:
        images = data[:n][:, None] if data.ndim == 3 else to_nchw(data[:n], spec)
        all_labels = np.asarray(targets.numpy() if isinstance(targets, torch.Tensor) else targets)
    else:
        # No in-memory array (ImageFolder and friends): decode sample by sample.
        samples = [ds[i] for i in range(n)]
        images = stack_ragged([np.asarray(s[0]) for s in samples], image_size, spec, channels_last=True)
        all_labels = (np.asarray(targets) if targets is not None else np.asarray([int(s[1]) for s in samples]))
    if all_labels.ndim != 1 or all_labels.dtype.kind not in "iu":
        raise ValueError(f"{spec!r}: labels must be 1-D integers, got {all_labels.dtype} {all_labels.shape}")
    class_names = [str(c) for c in getattr(ds, "classes", None) or []] or None
    num_classes = len(class_names) if class_names else (int(all_labels.max()) + 1 if len(all_labels) else 1)
    return {"images": images, "labels": all_labels[:n].astype(np.int64), "num_classes": num_classes,
            "class_names": class_names}


# --------------------------------------------------------------------------- shared helpers


def train_or_test(split: str, spec: str) -> str:
    s = split.lower()
    if s in ("train", "training"):
        return "train"
    if s in ("test", "t10k"):
        return "test"
    raise ValueError(f"{spec!r} has splits 'train' and 'test' ('t10k' also accepted), got {split!r}")


