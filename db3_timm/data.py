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
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch

from ._image_readers import load_hf, load_torchvision, train_or_test
from ._preprocess import resize_square, to_nchw, unit_float

__all__ = [
    "ImageData",
    "ImageStream",
    "load_image_dataset",
    "open_image_dataset",
    "read_idx",
    "write_idx",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_CLASSES",
    "fashion_mnist_dir",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TRAIN_FRACTION",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Environment variable naming another IDX folder for ``fashion-mnist`` (a machine without the Debian package).
FASHION_MNIST_ENV = "DB3_FASHION_MNIST_DIR"

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
    f"the spec 'idx:PATH', root=PATH or ${FASHION_MNIST_ENV}"
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


class ImageStream:
    """A labelled image split read in slices: pixels stay as stored (uint8 arrays, memory-mapped Arrow files
    of encoded images) and become float32 ``[0, 1]`` ``(n, C, H, W)`` tensors only for the rows asked for.

    :func:`open_image_dataset` returns one; ``stream.load()`` is what :func:`load_image_dataset` returns.
    :func:`~db3_timm.label_dataset` takes one in place of an image tensor, so labelling holds one shard's
    pixels at a time. ``ImageStream(tensor)`` wraps images already in memory (read back unchanged).

    Args:
        rows: an ``(N, C, H, W)`` array or tensor, or any object with ``len()``, ``shape`` ``(C, H, W)`` and
            slicing that returns such arrays (e.g. an encoded Hugging Face image column).
        labels: ``(N,)`` integer labels, or ``None`` for unlabelled images.
        num_classes: classes of the source split (default: ``max(labels) + 1``, 0 without labels).
        class_names: ``num_classes`` names when the source has them.
        name: the source, e.g. ``"fashion-mnist"``.
        image_size: resize every slice to ``image_size x image_size`` (bilinear, antialiased when shrinking).
    """

    def __init__(self, rows: Any, labels: Any = None, num_classes: int | None = None,
                 class_names: list[str] | None = None, name: str = "", image_size: int | None = None):
        self.rows, self.name, self.image_size = rows, name, image_size
        self.labels = None if labels is None else torch.as_tensor(np.ascontiguousarray(labels), dtype=torch.int64)
        if num_classes is None:
            num_classes = 0 if self.labels is None or not len(self.labels) else int(self.labels.max()) + 1
        self.num_classes, self.class_names = int(num_classes), class_names
        if self.labels is not None and len(self.labels) != len(rows):
            raise ValueError(f"{name or 'images'}: {len(rows)} images but {len(self.labels)} labels")
        if self.labels is not None and self.labels.numel() and (
                int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise ValueError(
                f"{name}: labels span [{int(self.labels.min())}, {int(self.labels.max())}] but there are "
                f"{self.num_classes} classes (negative labels usually mean an unlabelled split)")
        shape = tuple(int(s) for s in (rows.shape[1:] if hasattr(rows, "ndim") else rows.shape))
        self.image_shape: tuple[int, int, int] = shape if image_size is None else (shape[0], image_size, image_size)
        # Images already in memory as float tensors are read back as they are (any float dtype).
        self.dtype = rows.dtype if isinstance(rows, torch.Tensor) and rows.is_floating_point() else torch.float32

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Returns rows ``start:stop`` as a float ``(n, C, H, W)`` tensor in ``[0, 1]``."""
        return self._pixels(self.rows[start:stop])

    def take(self, index: Any) -> torch.Tensor:
        """Returns the rows at integer positions ``index`` (e.g. reference images) as one float tensor."""
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        if not len(index):
            return torch.empty((0, *self.image_shape), dtype=self.dtype)
        return self._pixels(self.rows[index if isinstance(self.rows, torch.Tensor) else index.numpy()])

    def _pixels(self, part: Any) -> torch.Tensor:
        if isinstance(part, torch.Tensor) and part.is_floating_point():
            images = part
        else:
            images = unit_float(part.numpy() if isinstance(part, torch.Tensor) else part)
        return images if self.image_size is None else resize_square(images, self.image_size)

    def chunks(self, size: int = 1024) -> Iterator[tuple[int, torch.Tensor]]:
        """Yields ``(start, rows start:start+size)`` over the whole split, in order."""
        for start in range(0, len(self), size):
            yield start, self.read(start, min(start + size, len(self)))

    def fingerprint(self, progress: bool = False) -> str:
        """Returns ``tensor_fingerprint`` of the whole split as :meth:`load` would give it, read in chunks
        (every row is decoded once, so unreadable data fails here, before any teacher query)."""
        from ._io import tensor_fingerprint_chunks

        numel = len(self) * math.prod(self.image_shape)
        chunks = (part for _, part in self.chunks())
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, total=math.ceil(len(self) / 1024), unit="chunk", desc="reading images")
        return tensor_fingerprint_chunks(chunks, numel, self.dtype)

    def load(self) -> ImageData:
        """Returns the whole split as an :class:`ImageData` (one float32 tensor in memory)."""
        if self.labels is None:
            raise ValueError(f"{self.name or 'these images'} have no labels; use read() or chunks()")
        images = torch.empty((len(self), *self.image_shape), dtype=torch.float32)
        for start, part in self.chunks():
            images[start:start + len(part)] = part
        return ImageData(images, self.labels, max(self.num_classes, 1), self.class_names, self.name)



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
        root: for ``fashion-mnist``, the IDX folder (default ``$DB3_FASHION_MNIST_DIR``,
            else ``/usr/share/datasets/fashion-mnist``); for ``torchvision:NAME``, the
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
    return open_image_dataset(spec, split, image_size=image_size, limit=limit, root=root).load()


def open_image_dataset(
    spec: str,
    split: str = "train",
    *,
    image_size: int | None = None,
    limit: int | None = None,
    root: str | None = None,
) -> ImageStream:
    """Opens a labelled image split without decoding it: an :class:`ImageStream` read slice by slice.

    Takes the arguments of :func:`load_image_dataset` and gives the same pixels, but holds only what the source
    stores: IDX and torchvision arrays stay uint8, Hugging Face image columns (``save_to_disk`` folders,
    imagefolder/parquet directories) stay encoded in their memory-mapped Arrow files and are decoded per slice.
    Labels, class names and the image shape are known at once; only the image headers are read.

    Returns:
        An :class:`ImageStream`; ``.load()`` gives the :class:`ImageData` of :func:`load_image_dataset`.

    Raises:
        The errors of :func:`load_image_dataset`.
    """
    _check_load_args(spec, split, limit, image_size)
    raw, name = _load_raw(spec, split, limit, image_size, root)
    images = raw["images"]
    if isinstance(images, np.ndarray) and images.dtype.kind == "f":
        images = unit_float(images)  # checks the [0, 1] range once, at open
    return ImageStream(images, raw["labels"], int(raw["num_classes"]), raw.get("class_names"), name, image_size)


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
        return _load_digits(train_or_test(split, text), limit), "digits"
    if key.startswith("idx:"):
        folder = os.path.expanduser(text[4:])
        if not folder:
            raise ValueError(f"dataset spec {spec!r} names no folder; use 'idx:PATH'")
        return _load_idx_folder(folder, train_or_test(split, text), limit, missing_hint=_idx_hint()), text
    if key.startswith("hf:"):
        target = text[3:]
        if not target:
            raise ValueError(f"dataset spec {spec!r} names no dataset; use 'hf:NAME_OR_PATH'")
        return load_hf(target, split, limit, image_size, cache_dir=root), text
    if key.startswith("torchvision:"):
        return load_torchvision(text, split, limit, image_size, root)
    if os.path.isdir(os.path.expanduser(text)):
        return _load_local_dir(text, split, limit, image_size, root), text
    if text.startswith((".", "~", "/")) or os.sep in text or (os.altsep and os.altsep in text):
        # Looks like a path (Hub names are "owner/name" too, but those come with 'hf:').
        raise FileNotFoundError(
            f"dataset spec {spec!r} looks like a path but no such directory exists "
            f"(for a Hugging Face Hub name write 'hf:{text}'); accepted forms: {_ACCEPTED_FORMS}"
        )
    raise ValueError(f"unknown dataset spec {spec!r}; accepted forms: {_ACCEPTED_FORMS}")


def fashion_mnist_dir(root: str | None = None) -> str:
    """Returns the Fashion-MNIST IDX folder the loader reads: ``root``, else ``$DB3_FASHION_MNIST_DIR``, else
    Debian's :data:`FASHION_MNIST_DIR`."""
    return os.path.expanduser(root if root is not None else os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def _load_fashion_mnist(text: str, split: str, limit: int | None, root: str | None) -> dict[str, Any]:
    """Debian's Fashion-MNIST IDX files (or those under ``root`` / ``$DB3_FASHION_MNIST_DIR``), with Zalando's
    class names."""
    raw = _load_idx_folder(fashion_mnist_dir(root), train_or_test(split, text), limit, missing_hint=_FASHION_MNIST_HINT)
    raw["num_classes"], raw["class_names"] = len(FASHION_MNIST_CLASSES), list(FASHION_MNIST_CLASSES)
    return raw


def _load_local_dir(
    text: str, split: str, limit: int | None, image_size: int | None, root: str | None
) -> dict[str, Any]:
    """A bare existing directory: IDX files if it holds any, else a Hugging Face dataset."""
    folder = os.path.expanduser(text)
    if _find_idx_file(Path(folder), "train", "images") or _find_idx_file(Path(folder), "test", "images"):
        return _load_idx_folder(folder, train_or_test(split, text), limit, missing_hint=_idx_hint())
    return load_hf(folder, split, limit, image_size, cache_dir=root)


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
        images = to_nchw(images, str(img_file))
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


# --------------------------------------------------------------------------- shared helpers


def _describe(x: Any) -> str:
    return f"{type(x).__name__} of shape {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__
