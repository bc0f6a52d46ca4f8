"""Real image data in, one shape out: every source becomes an :class:`ImageData`.

Whatever the source (IDX files, scikit-learn's digits, a Hugging Face dataset,
a torchvision dataset), callers get float32 images shaped ``(N, C, H, W)`` with
values in ``[0, 1]`` and int64 labels shaped ``(N,)``. Teachers, students and
query generators can then be written against one tensor layout instead of one
per data source.

Spec strings accepted by :func:`load_image_dataset`:

* ``fashion-mnist`` / ``fmnist`` -- IDX files of Debian's ``dataset-fashion-mnist``
  package in ``/usr/share/datasets/fashion-mnist`` (``root=`` overrides the folder).
* ``idx:PATH`` -- any folder of IDX files (MNIST, Fashion-MNIST, KMNIST, ...),
  gzipped or not, named ``train-images-idx3-ubyte[.gz]`` /
  ``t10k-labels-idx1-ubyte[.gz]`` and so on.
* ``digits`` -- scikit-learn's bundled 8x8 digits with a fixed 80/20 split.
* ``hf:NAME_OR_PATH`` -- Hugging Face ``datasets``: a ``save_to_disk`` folder,
  a local parquet/imagefolder directory, or a Hub name.
* ``torchvision:NAME[:ROOT]`` -- ``torchvision.datasets.NAME`` with ``download=False``.
* a bare existing directory -- IDX files if it holds any, else Hugging Face.
"""
from __future__ import annotations

import gzip
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from ._preprocess import resize

__all__ = [
    "ImageData",
    "load_image_dataset",
    "read_idx",
    "write_idx",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TRAIN_FRACTION",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: Label names in Zalando's order (label ``i`` is ``FASHION_MNIST_CLASSES[i]``).
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

#: ``digits`` split: ``numpy.random.RandomState(DIGITS_SPLIT_SEED).permutation(1797)``;
#: the first ``floor(DIGITS_TRAIN_FRACTION * 1797) = 1437`` indices are train, the
#: remaining 360 are test; each split keeps scikit-learn's original order.
DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_FRACTION = 0.8

_ACCEPTED_FORMS = (
    "'fashion-mnist' (or 'fmnist'), 'digits', 'idx:PATH', 'hf:NAME_OR_PATH', "
    "'torchvision:NAME[:ROOT]', or an existing local directory"
)

_FASHION_MNIST_HINT = (
    "install the IDX files with `apt-get install dataset-fashion-mnist` "
    f"(they land in {FASHION_MNIST_DIR}), or point at a folder holding them with "
    "the spec 'idx:PATH' (or root=PATH)"
)

# IDX type codes (third magic byte). Multi-byte types are big-endian on disk.
_IDX_CODE_TO_DTYPE = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_KIND_TO_CODE = {(dt.kind, dt.itemsize): code for code, dt in _IDX_CODE_TO_DTYPE.items()}

IndexLike = Union[slice, Sequence[int], np.ndarray, torch.Tensor]


@dataclass(frozen=True, eq=False)  # eq=False: element-wise tensor == has no single truth value
class ImageData:
    """A labelled image set: float32 ``(N, C, H, W)`` images in ``[0, 1]`` and int64 ``(N,)`` labels.

    Args:
        images: float32 tensor ``(N, C, H, W)``, values in ``[0, 1]``.
        labels: int64 tensor ``(N,)``, values in ``[0, num_classes)``.
        num_classes: number of classes of the whole source split (not only of
            the samples present, so a ``limit``-ed subset keeps the full width).
        class_names: ``num_classes`` names when the source has them, else ``None``.
        name: the source, e.g. ``"fashion-mnist"`` or ``"hf:/data/my_set"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    class_names: list[str] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.ndim != 4:
            raise ValueError(f"images must be a 4-D (N, C, H, W) tensor, got {_describe(self.images)}")
        if self.images.dtype != torch.float32:
            raise ValueError(f"images must be float32, got {self.images.dtype}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.ndim != 1:
            raise ValueError(f"labels must be a 1-D tensor, got {_describe(self.labels)}")
        if self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64, got {self.labels.dtype}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, e.g. ``(1, 28, 28)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: IndexLike) -> ImageData:
        """Pick samples by slice, integer indices or boolean mask, keeping the metadata.

        Args:
            idx: a ``slice``, a sequence/array/tensor of integer indices, or a
                boolean mask of length ``len(self)``.

        Returns:
            A new :class:`ImageData` with the selected samples (same ``num_classes``,
            ``class_names`` and ``name``).
        """
        if not isinstance(idx, slice):
            idx = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
            if idx.ndim != 1:
                raise TypeError(f"subset() needs a slice or a 1-D index/mask, got shape {tuple(idx.shape)}")
            if idx.dtype != torch.bool:
                idx = idx.long()
        return ImageData(self.images[idx], self.labels[idx], self.num_classes, self.class_names, self.name)


def load_image_dataset(
    spec: str,
    split: str = "train",
    *,
    image_size: int | None = None,
    limit: int | None = None,
    root: str | None = None,
) -> ImageData:
    """Load a labelled image split from any supported source as an :class:`ImageData`.

    Args:
        spec: the source; one of ``fashion-mnist`` (alias ``fmnist``), ``digits``,
            ``idx:PATH``, ``hf:NAME_OR_PATH``, ``torchvision:NAME[:ROOT]`` or an
            existing local directory (see the module docstring).
        split: ``"train"`` or ``"test"`` (``"t10k"`` is accepted for ``"test"``).
            Hugging Face sources take any split name the dataset has (e.g.
            ``"validation"``); torchvision datasets whose constructor takes
            ``split=`` get it verbatim, and those with neither ``train=`` nor
            ``split=`` (e.g. ``ImageFolder``) ignore it.
        image_size: if given, resize every image to ``image_size x image_size``
            with bilinear interpolation (antialiased when shrinking). Bilinear
            rather than padding, so e.g. 8x8 digits fill a 28x28 LeNet input the
            way MNIST strokes do. Non-square images are stretched.
        limit: if given, keep only the first ``limit`` samples of the split, in
            the source's own order (file order for IDX/torchvision/Hugging Face,
            scikit-learn's order for digits). Applied before decoding/resizing,
            so small limits load fast.
        root: for ``fashion-mnist``, the IDX folder (default
            ``/usr/share/datasets/fashion-mnist``); for ``torchvision:NAME``, the
            dataset root when the spec carries none; for Hub/parquet/imagefolder
            sources, the ``datasets`` cache directory. Ignored otherwise.

    Returns:
        An :class:`ImageData` with float32 ``(N, C, H, W)`` images in ``[0, 1]``
        (C is 1 for grayscale, 3 for colour) and int64 labels.

    Raises:
        ValueError: unknown spec, bad ``split``/``limit``/``image_size``, or data
            that cannot be read as labelled images.
        FileNotFoundError: the files a local source needs are absent.
        ConnectionError: a Hugging Face Hub name was given but the Hub is unreachable.
    """
    _check_load_args(spec, split, limit, image_size)
    raw, name = _load_raw(spec, split, limit, image_size, root)
    return _finish(raw, name=name, image_size=image_size)


def _check_load_args(spec: Any, split: Any, limit: Any, image_size: Any) -> None:
    """Validates :func:`load_image_dataset`'s arguments (the spec's form is checked by :func:`_load_raw`)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"dataset spec must be a non-empty string, got {spec!r}; accepted forms: {_ACCEPTED_FORMS}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")


def _load_raw(
    spec: str, split: str, limit: int | None, image_size: int | None, root: str | None
) -> tuple[dict[str, Any], str]:
    """Dispatches ``spec`` to its loader; returns the raw arrays and the :class:`ImageData` name."""
    text = spec.strip()
    key = text.lower()
    if key in ("fashion-mnist", "fmnist", "fashion_mnist", "fashionmnist"):
        return _load_fashion_mnist(text, split, limit, root), "fashion-mnist"
    if key == "digits":
        return _load_digits(_train_or_test(split, text), limit), "digits"
    if key.startswith("idx:"):
        folder = os.path.expanduser(text[4:])
        if not folder:
            raise ValueError(f"dataset spec {spec!r} names no folder; use 'idx:PATH'")
        return _load_idx_folder(folder, _train_or_test(split, text), limit, missing_hint=_idx_hint()), text
    if key.startswith("hf:"):
        target = text[3:]
        if not target:
            raise ValueError(f"dataset spec {spec!r} names no dataset; use 'hf:NAME_OR_PATH'")
        return _load_hf(target, split, limit, image_size, cache_dir=root), text
    if key.startswith("torchvision:"):
        return _load_torchvision(text, split, limit, image_size, root)
    if os.path.isdir(os.path.expanduser(text)):
        return _load_local_dir(text, split, limit, image_size, root), text
    if text.startswith((".", "~", "/")) or os.sep in text or (os.altsep and os.altsep in text):
        # Looks like a path (Hub names are "owner/name" too, but those come with 'hf:').
        raise FileNotFoundError(
            f"dataset spec {spec!r} looks like a path but no such directory exists "
            f"(for a Hugging Face Hub name write 'hf:{text}'); accepted forms: {_ACCEPTED_FORMS}"
        )
    raise ValueError(f"unknown dataset spec {spec!r}; accepted forms: {_ACCEPTED_FORMS}")


def _load_fashion_mnist(text: str, split: str, limit: int | None, root: str | None) -> dict[str, Any]:
    """Debian's Fashion-MNIST IDX files (or those under ``root``), with Zalando's class names."""
    folder = os.path.expanduser(root) if root is not None else FASHION_MNIST_DIR
    raw = _load_idx_folder(folder, _train_or_test(split, text), limit, missing_hint=_FASHION_MNIST_HINT)
    raw["num_classes"], raw["class_names"] = len(FASHION_MNIST_CLASSES), list(FASHION_MNIST_CLASSES)
    return raw


def _load_local_dir(
    text: str, split: str, limit: int | None, image_size: int | None, root: str | None
) -> dict[str, Any]:
    """A bare existing directory: IDX files if it holds any, else a Hugging Face dataset."""
    folder = os.path.expanduser(text)
    if _find_idx_file(Path(folder), "train", "images") or _find_idx_file(Path(folder), "test", "images"):
        return _load_idx_folder(folder, _train_or_test(split, text), limit, missing_hint=_idx_hint())
    return _load_hf(folder, split, limit, image_size, cache_dir=root)


# --------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike, *, count: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST container format), gzipped or not, into a numpy array.

    Args:
        path: the file; gzip is detected from its first bytes, not its name.
        count: read only the first ``count`` entries along the first axis
            (reading stops early, so this is fast even for large gzipped files).

    Returns:
        An array with the file's dims and a native-byte-order dtype
        (uint8, int8, int16, int32, float32 or float64).

    Raises:
        ValueError: the file is not IDX, or is shorter/longer than its header says.
    """
    path = Path(path)
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if is_gzip else open(path, "rb")) as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_CODE_TO_DTYPE or magic[3] == 0:
            raise ValueError(f"{path} is not an IDX file (magic bytes {magic.hex() or 'missing'})")
        dtype, ndim = _IDX_CODE_TO_DTYPE[magic[2]], magic[3]
        dim_bytes = f.read(4 * ndim)
        if len(dim_bytes) != 4 * ndim:
            raise ValueError(f"{path}: IDX header is truncated")
        dims = [int(d) for d in np.frombuffer(dim_bytes, dtype=">u4")]
        n = dims[0] if count is None else min(max(int(count), 0), dims[0])
        shape = (n, *dims[1:])
        nbytes = math.prod(shape) * dtype.itemsize
        # readinto a bytearray gives a writable array without an extra copy.
        buf = bytearray(nbytes)
        view, got = memoryview(buf), 0
        while got < nbytes:
            k = f.readinto(view[got:])
            if not k:
                break
            got += k
        if got != nbytes:
            raise ValueError(f"{path}: IDX data is truncated ({got} of {nbytes} bytes for shape {tuple(shape)})")
        if count is None and f.read(1):
            raise ValueError(f"{path}: IDX file has more data than its header's shape {tuple(dims)}")
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike, array: np.ndarray | torch.Tensor) -> Path:
    """Write an array as an IDX file, gzipped when ``path`` ends in ``.gz``.

    Args:
        path: destination file; parent folders are created.
        array: uint8, int8, int16, int32, float32 or float64 data with at least one dim.

    Returns:
        The written path.
    """
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if arr.ndim < 1 or arr.ndim > 255:
        raise ValueError(f"IDX needs 1..255 dims, got shape {arr.shape}")
    code = _IDX_KIND_TO_CODE.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}; use uint8, int8, int16, int32, float32 or float64")
    disk_dtype = _IDX_CODE_TO_DTYPE[code]
    payload = (
        bytes([0, 0, code, arr.ndim])
        + np.asarray(arr.shape, dtype=">u4").tobytes()
        + np.ascontiguousarray(arr, dtype=disk_dtype).tobytes()
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        # Level 6: the speed/size sweet spot; 9 is several times slower for ~1% less.
        path.write_bytes(gzip.compress(payload, compresslevel=6))
    else:
        path.write_bytes(payload)
    return path


def _idx_hint() -> str:
    return (
        "expected files like train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]; pass the folder as 'idx:PATH'"
    )


def _idx_candidates(split: str, kind: str) -> list[str]:
    rank = 3 if kind == "images" else 1
    prefixes = ("train",) if split == "train" else ("t10k", "test")
    names = []
    for prefix in prefixes:
        # '-idx' is the canonical name; '.idx' is how several mirrors (e.g. Kaggle) spell it.
        for sep in ("-", "."):
            for ext in ("", ".gz"):  # uncompressed first: no decompression cost
                names.append(f"{prefix}-{kind}{sep}idx{rank}-ubyte{ext}")
    return names


def _find_idx_file(folder: Path, split: str, kind: str) -> Path | None:
    for name in _idx_candidates(split, kind):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_folder(folder: str, split: str, limit: int | None, *, missing_hint: str) -> dict[str, Any]:
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"IDX folder {folder!r} does not exist; {missing_hint}")
    img_file = _find_idx_file(path, split, "images")
    lab_file = _find_idx_file(path, split, "labels")
    if img_file is None or lab_file is None:
        wanted = _idx_candidates(split, "images" if img_file is None else "labels")
        present = sorted(p.name for p in path.iterdir())[:20]
        raise FileNotFoundError(
            f"no {split} IDX {'images' if img_file is None else 'labels'} in {folder!r} "
            f"(looked for {', '.join(wanted[:2])}, ...; folder holds {present}); {missing_hint}"
        )
    # All labels are read (they are tiny) so num_classes describes the split, not the limit.
    labels = read_idx(lab_file)
    images = read_idx(img_file, count=limit)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{lab_file}: labels must be 1-D integers, got {labels.dtype} {labels.shape}")
    total = int(labels.shape[0])
    if limit is None and len(images) != total:
        raise ValueError(f"{img_file} holds {len(images)} images but {lab_file} holds {total} labels")
    if images.ndim == 3:
        images = images[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif images.ndim == 4:
        images = _to_nchw(images, str(img_file))
    else:
        raise ValueError(f"{img_file}: expected (N, H, W) images, got shape {images.shape}")
    labels = labels.astype(np.int64)
    return {
        "images": images,
        "labels": labels[: len(images)],
        "num_classes": int(labels.max()) + 1 if total else 1,
        "class_names": None,
    }


# --------------------------------------------------------------------------- digits


def _load_digits(split: str, limit: int | None) -> dict[str, Any]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # optional dependency (extras 'digits')
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    n = len(bunch.target)
    # Legacy RandomState: its stream is frozen by NumPy's compatibility policy, so the
    # split is identical on every NumPy version (Generator streams are not guaranteed).
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(n)
    n_train = int(DIGITS_TRAIN_FRACTION * n)
    idx = np.sort(perm[:n_train] if split == "train" else perm[n_train:])
    if limit is not None:
        idx = idx[:limit]
    # Pixels are integer counts 0..16 (8x8 downsampling of 32x32 bitmaps), so /16 maps them to [0, 1].
    images = (bunch.images[idx] / 16.0).astype(np.float32)[:, None]
    return {
        "images": images,
        "labels": bunch.target[idx].astype(np.int64),
        "num_classes": len(bunch.target_names),
        "class_names": [str(t) for t in bunch.target_names],
    }


# --------------------------------------------------------------------------- Hugging Face

_HF_IMAGE_NAMES = ("image", "img", "pixel_values")
_HF_LABEL_NAMES = ("label", "labels", "fine_label")


def _load_hf(
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


def _hf_images(col: Any, feature: Any, img_col: str, image_size: int | None, target: str) -> np.ndarray:
    """Decodes the image column ``img_col`` of the one-column dataset ``col`` to an (N, C, H, W) array."""
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
            return _stack_ragged(list(images), image_size, target, channels_last=None)
        return images[:, None] if images.ndim == 3 else _to_nchw(images, target)
    # Decode to L or RGB only, so palette/alpha/16-bit files still give 1 or 3 channels.
    first_mode = col[0][img_col].mode
    if first_mode in ("L", "1", "LA", "I", "I;16", "F"):
        # A gray first image leaves later colour images alone (_stack_ragged promotes to RGB).
        if first_mode != "L":
            col = col.cast_column(img_col, datasets.Image(mode="L"))
    elif feature.mode != "RGB":
        # Colour sets may mix RGB with palette/RGBA/CMYK files: convert all while decoding.
        col = col.cast_column(img_col, datasets.Image(mode="RGB"))
    # The numpy formatter decodes every image and stacks them when shapes agree.
    images = col.with_format("numpy")[:][img_col]
    if images.dtype == object:  # ragged sizes or mixed L/RGB: no single stack
        return _stack_ragged(list(images), image_size, target, channels_last=True)
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------- torchvision


def _load_torchvision(
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
        kwargs["train"] = _train_or_test(split, spec) == "train"
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
        images = data[:n][:, None] if data.ndim == 3 else _to_nchw(data[:n], spec)
        all_labels = np.asarray(targets.numpy() if isinstance(targets, torch.Tensor) else targets)
    else:
        # No in-memory array (ImageFolder and friends): decode sample by sample.
        samples = [ds[i] for i in range(n)]
        images = _stack_ragged([np.asarray(s[0]) for s in samples], image_size, spec, channels_last=True)
        all_labels = (np.asarray(targets) if targets is not None else np.asarray([int(s[1]) for s in samples]))
    if all_labels.ndim != 1 or all_labels.dtype.kind not in "iu":
        raise ValueError(f"{spec!r}: labels must be 1-D integers, got {all_labels.dtype} {all_labels.shape}")
    class_names = [str(c) for c in getattr(ds, "classes", None) or []] or None
    num_classes = len(class_names) if class_names else (int(all_labels.max()) + 1 if len(all_labels) else 1)
    return {"images": images, "labels": all_labels[:n].astype(np.int64), "num_classes": num_classes,
            "class_names": class_names}


# --------------------------------------------------------------------------- shared helpers


def _train_or_test(split: str, spec: str) -> str:
    s = split.lower()
    if s in ("train", "training"):
        return "train"
    if s in ("test", "t10k"):
        return "test"
    raise ValueError(f"{spec!r} has splits 'train' and 'test' ('t10k' also accepted), got {split!r}")


def _describe(x: Any) -> str:
    return f"{type(x).__name__} of shape {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__


def _to_nchw(arr: np.ndarray, where: str) -> np.ndarray:
    """Put a 4-D image batch in (N, C, H, W) order, guessing channels-last vs -first from C."""
    if arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)  # CIFAR-style (N, H, W, C)
    elif arr.shape[1] not in (1, 3, 4):
        raise ValueError(f"{where}: cannot tell the channel axis of image batch shape {arr.shape}")
    return arr[:, :3] if arr.shape[1] == 4 else arr  # drop alpha: students see 1 or 3 channels


def _stack_ragged(
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
        t = _unit_float(a)[None]
        if t.shape[1] != channels:
            t = t.expand(-1, channels, -1, -1)  # grayscale among colour images: replicate to RGB
        if image_size is not None:
            t = _resize(t, image_size)
        out.append(t)
    return torch.cat(out).numpy()


def _unit_float(arr: np.ndarray) -> torch.Tensor:
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


def _resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinear resize to size x size; chunked so peak memory stays near the output size."""
    if images.shape[-2:] == (size, size):
        return images
    out = images.new_empty((images.shape[0], images.shape[1], size, size))
    for start in range(0, images.shape[0], chunk):
        out[start:start + chunk] = resize(images[start:start + chunk], (size, size), antialias=True)
    # Bilinear weights are convex, but guard against float rounding just outside [0, 1].
    return out.clamp_(0.0, 1.0)


def _finish(raw: dict[str, Any], *, name: str, image_size: int | None) -> ImageData:
    images = raw["images"]
    images = images if isinstance(images, torch.Tensor) else _unit_float(images)
    images = images.contiguous()
    if image_size is not None:
        images = _resize(images, image_size)
    labels = torch.from_numpy(np.ascontiguousarray(raw["labels"], dtype=np.int64))
    num_classes = int(raw["num_classes"])
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name}: labels span [{int(labels.min())}, {int(labels.max())}] but there are {num_classes} classes "
            "(negative labels usually mean an unlabelled split)"
        )
    return ImageData(images, labels, num_classes, raw.get("class_names"), name)
