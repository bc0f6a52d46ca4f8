"""Tests for db3_timm.data: every source loads real bytes into the same ImageData shape."""
from __future__ import annotations

import gzip
import os
import re
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from db3_timm.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    ImageData,
    fashion_mnist_dir,
    load_image_dataset,
    read_idx,
    write_idx,
)

FMNIST = fashion_mnist_dir()  # where the loader looks: $DB3_FASHION_MNIST_DIR, else Debian's folder
HAVE_FMNIST = os.path.isfile(os.path.join(FMNIST, "train-images-idx3-ubyte.gz"))
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST, reason=f"{FMNIST} absent (apt-get install dataset-fashion-mnist, or set {FASHION_MNIST_ENV})"
)


def _as_float(raw: np.ndarray) -> torch.Tensor:
    """The exact float32 values the loader promises for uint8 pixels."""
    return torch.from_numpy(raw.astype(np.float32)) / 255.0


def _rand_u8(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _check_invariants(data: ImageData) -> None:
    assert data.images.dtype == torch.float32 and data.images.ndim == 4
    assert data.labels.dtype == torch.int64 and data.labels.shape == (len(data),)
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
    assert int(data.labels.min()) >= 0 and int(data.labels.max()) < data.num_classes


# --------------------------------------------------------------------------- Fashion-MNIST


@needs_fmnist
def test_fashion_mnist_full_train_and_test():
    start = time.perf_counter()
    train = load_image_dataset("fashion-mnist")
    elapsed = time.perf_counter() - start
    test = load_image_dataset("fmnist", "test")
    for data, n in ((train, 60000), (test, 10000)):
        _check_invariants(data)
        assert data.images.shape == (n, 1, 28, 28)
        assert data.num_classes == 10 and data.class_names == FASHION_MNIST_CLASSES
        assert data.name == "fashion-mnist"
        assert data.labels.bincount().tolist() == [n // 10] * 10
    # Both ends of the range are used: real images, not a normalised copy.
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    # Generous bound (measured ~0.3-0.7 s): catches a per-image Python loop, not jitter.
    assert elapsed < 10.0, f"full Fashion-MNIST train took {elapsed:.2f}s"


@needs_fmnist
def test_fashion_mnist_matches_raw_bytes_and_limit():
    # Independent parse of the gz files: header is 16 bytes for images, 8 for labels.
    with gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")) as f:
        raw_images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz")) as f:
        raw_labels = np.frombuffer(f.read(), np.uint8, offset=8)
    data = load_image_dataset("fashion-mnist", "t10k", limit=500)
    assert data.images.shape == (500, 1, 28, 28)
    assert data.num_classes == 10  # of the split, even if a limit missed a class
    assert torch.equal(data.images[:, 0], _as_float(raw_images[:500]))
    assert torch.equal(data.labels, torch.from_numpy(raw_labels[:500].astype(np.int64)))


@needs_fmnist
def test_fashion_mnist_resize():
    data = load_image_dataset("fashion-mnist", "test", limit=8, image_size=32)
    _check_invariants(data)
    assert data.images.shape == (8, 1, 32, 32)


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load_image_dataset("fashion-mnist", root=str(tmp_path / "nope"))
    assert "idx:" in str(info.value)


def test_fashion_mnist_folder_from_the_environment(tmp_path, monkeypatch):
    # A machine without the Debian package (a GPU box) points the loader at carried IDX files.
    x, y = _rand_u8((3, 28, 28), seed=3), np.array([9, 0, 4], np.uint8)
    _write_idx_split(tmp_path, "t10k", x, y, ".gz")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    data = load_image_dataset("fashion-mnist", "test")
    assert torch.equal(data.images[:, 0], _as_float(x)) and data.class_names[9] == "Ankle boot"
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=FASHION_MNIST_ENV):
        load_image_dataset("fashion-mnist", "test")


# --------------------------------------------------------------------------- IDX


def _write_idx_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, ext: str) -> None:
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


@pytest.mark.parametrize("ext", ["", ".gz"])
def test_idx_folder_round_trips_exactly(tmp_path, ext):
    # Non-square 5x6 images catch any H/W swap.
    train_x, train_y = _rand_u8((7, 5, 6), seed=1), np.array([0, 1, 2, 3, 3, 2, 1], np.uint8)
    test_x, test_y = _rand_u8((4, 5, 6), seed=2), np.array([3, 0, 1, 2], np.uint8)
    _write_idx_split(tmp_path, "train", train_x, train_y, ext)
    _write_idx_split(tmp_path, "t10k", test_x, test_y, ext)

    if ext == ".gz":
        assert (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()[:2] == b"\x1f\x8b"
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y), ("t10k", test_x, test_y)):
        data = load_image_dataset(f"idx:{tmp_path}", split)
        _check_invariants(data)
        assert data.images.shape == (len(x), 1, 5, 6)
        assert torch.equal(data.images[:, 0], _as_float(x))
        assert torch.equal(data.labels, torch.from_numpy(y.astype(np.int64)))
        assert data.num_classes == 4 and data.class_names is None
        assert data.name == f"idx:{tmp_path}"

    limited = load_image_dataset(f"idx:{tmp_path}", limit=3)
    assert torch.equal(limited.images[:, 0], _as_float(train_x[:3]))
    assert limited.num_classes == 4  # counted over the split, not the 3 kept samples

    bare = load_image_dataset(str(tmp_path), "test")  # a bare IDX folder is detected
    assert torch.equal(bare.images[:, 0], _as_float(test_x))


def test_idx_reader_writer_dtypes_and_errors(tmp_path):
    for arr in (
        np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 7,
        np.arange(6, dtype=np.int32) * 100000,
        np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4),
        np.linspace(-1, 1, 5, dtype=np.float64),
        np.arange(10, dtype=np.int8) - 5,
    ):
        for ext in ("", ".gz"):
            path = write_idx(tmp_path / f"a{arr.dtype}{ext}", arr)
            back = read_idx(path)
            assert back.dtype == arr.dtype and back.dtype.isnative and np.array_equal(back, arr)
    # Big-endian on disk, as the format requires.
    raw = (tmp_path / "aint16").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 3]) and raw[4:8] == (2).to_bytes(4, "big")
    assert read_idx(tmp_path / "aint16.gz", count=1).shape == (1, 3, 4)

    (tmp_path / "short").write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(raw + b"\x00")
    with pytest.raises(ValueError, match="more data"):
        read_idx(tmp_path / "long")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    with pytest.raises(ValueError, match="cannot store dtype"):
        write_idx(tmp_path / "bad", np.zeros(3, np.uint16))


def test_idx_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="idx:PATH"):
        load_image_dataset(f"idx:{tmp_path / 'absent'}")
    write_idx(tmp_path / "train-images-idx3-ubyte", _rand_u8((2, 3, 3)))
    with pytest.raises(FileNotFoundError, match="labels"):
        load_image_dataset(f"idx:{tmp_path}")


# --------------------------------------------------------------------------- digits


def _row_keys(data: ImageData) -> Counter:
    flat = torch.cat([(data.images.flatten(1) * 16).round(), data.labels[:, None].float()], 1)
    return Counter(tuple(r) for r in flat.to(torch.int64).tolist())


def test_digits_split_is_deterministic_disjoint_and_complete():
    from sklearn.datasets import load_digits

    train, test = load_image_dataset("digits"), load_image_dataset("digits", "test")
    for data in (train, test):
        _check_invariants(data)
        assert data.image_shape == (1, 8, 8)
        assert data.num_classes == 10 and data.class_names == [str(i) for i in range(10)]
        assert set(data.labels.tolist()) == set(range(10))
        # 0..16 counts divided by 16: exactly representable.
        assert torch.equal(data.images * 16, (data.images * 16).round())
    assert (len(train), len(test)) == (1437, 360)

    # train + test is exactly the full set as a multiset of (pixels, label) rows,
    # and the sizes add up, so the split is a partition (robust to duplicate digits).
    bunch = load_digits()
    full = Counter(tuple(r) for r in np.concatenate([bunch.images.reshape(-1, 64), bunch.target[:, None]], 1)
                   .astype(np.int64).tolist())
    assert _row_keys(train) + _row_keys(test) == full and sum(full.values()) == 1797

    again = load_image_dataset("digits")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    first = load_image_dataset("digits", limit=5)
    assert torch.equal(first.images, train.images[:5])


def test_digits_upsampled_for_lenet():
    data = load_image_dataset("digits", "test", image_size=28)
    _check_invariants(data)
    assert data.images.shape == (360, 1, 28, 28)
    small = load_image_dataset("digits", "test")
    # Bilinear resize keeps the content: shrinking back lands near the original.
    back = torch.nn.functional.interpolate(data.images, size=(8, 8), mode="area")
    assert (back - small.images).abs().mean() < 0.1


# --------------------------------------------------------------------------- Hugging Face

@pytest.fixture(autouse=True)
def _quiet_datasets():
    datasets.disable_progress_bars()
    yield


def _hf_dataset(arrays: list[np.ndarray], labels: list[int], *, image_col="image", label_col="label", names=None):
    features = datasets.Features({
        image_col: datasets.Image(),
        label_col: datasets.ClassLabel(names=names or ["a", "b", "c"]),
    })
    return datasets.Dataset.from_dict(
        {image_col: [PILImage.fromarray(a) for a in arrays], label_col: labels}, features=features
    )


GRAY = _rand_u8((6, 5, 7), seed=3)
RGB = _rand_u8((5, 4, 6, 3), seed=4)
GRAY_Y = [0, 1, 2, 2, 1, 0]
RGB_Y = [2, 0, 1, 1, 0]


def test_hf_save_to_disk_gray_round_trips(tmp_path):
    _hf_dataset(list(GRAY), GRAY_Y).save_to_disk(str(tmp_path / "gray"))
    for spec in (f"hf:{tmp_path / 'gray'}", str(tmp_path / "gray")):
        data = load_image_dataset(spec)
        _check_invariants(data)
        assert data.images.shape == (6, 1, 5, 7)
        assert torch.equal(data.images[:, 0], _as_float(GRAY))
        assert data.labels.tolist() == GRAY_Y
        assert data.num_classes == 3 and data.class_names == ["a", "b", "c"]
    limited = load_image_dataset(f"hf:{tmp_path / 'gray'}", limit=2)
    assert torch.equal(limited.images[:, 0], _as_float(GRAY[:2])) and limited.num_classes == 3


def test_hf_rgb_with_alternative_column_names(tmp_path):
    # CIFAR-100 style: 'img' plus two ClassLabels; 'fine_label' must win over 'coarse_label'.
    features = datasets.Features({
        "img": datasets.Image(),
        "coarse_label": datasets.ClassLabel(names=["x", "y"]),
        "fine_label": datasets.ClassLabel(names=["a", "b", "c"]),
    })
    ds = datasets.Dataset.from_dict(
        {"img": [PILImage.fromarray(a) for a in RGB], "coarse_label": [1, 1, 0, 0, 1], "fine_label": RGB_Y},
        features=features,
    )
    ds.save_to_disk(str(tmp_path / "rgb"))
    data = load_image_dataset(f"hf:{tmp_path / 'rgb'}")
    _check_invariants(data)
    assert data.images.shape == (5, 3, 4, 6)
    assert torch.equal(data.images, _as_float(RGB).permute(0, 3, 1, 2))
    assert data.labels.tolist() == RGB_Y and data.class_names == ["a", "b", "c"]


def test_hf_dataset_dict_picks_split(tmp_path):
    dd = datasets.DatasetDict({
        "train": _hf_dataset(list(GRAY), GRAY_Y),
        "test": _hf_dataset(list(GRAY[::-1][:3]), [1, 1, 0]),
    })
    dd.save_to_disk(str(tmp_path / "dd"))
    test = load_image_dataset(f"hf:{tmp_path / 'dd'}", "test")
    assert torch.equal(test.images[:, 0], _as_float(GRAY[::-1][:3])) and test.labels.tolist() == [1, 1, 0]
    train = load_image_dataset(f"hf:{tmp_path / 'dd'}", "train")
    assert torch.equal(train.images[:, 0], _as_float(GRAY))
    with pytest.raises(ValueError, match=r"validation.*\['test', 'train'\]"):
        load_image_dataset(f"hf:{tmp_path / 'dd'}", "validation")


def test_hf_parquet_folder_through_load_dataset(tmp_path):
    folder = tmp_path / "pq"
    (folder / "data").mkdir(parents=True)
    _hf_dataset(list(RGB), RGB_Y).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    _hf_dataset(list(GRAY), GRAY_Y).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    cache = str(tmp_path / "cache")  # keep load_dataset's arrow cache out of ~/.cache
    train = load_image_dataset(f"hf:{folder}", root=cache)
    assert torch.equal(train.images, _as_float(RGB).permute(0, 3, 1, 2))
    assert train.labels.tolist() == RGB_Y and train.class_names == ["a", "b", "c"]
    test = load_image_dataset(str(folder), "test", root=cache)
    assert torch.equal(test.images[:, 0], _as_float(GRAY)) and test.labels.tolist() == GRAY_Y


def test_hf_mixed_modes_and_sizes(tmp_path):
    rgba = _rand_u8((4, 6, 4), seed=5)
    gray_big = _rand_u8((8, 8), seed=6)
    items = [RGB[0], np.ascontiguousarray(GRAY[0][:4, :6]), rgba, gray_big]
    _hf_dataset(items, [0, 1, 2, 0]).save_to_disk(str(tmp_path / "mixed"))
    with pytest.raises(ValueError, match="image_size"):
        load_image_dataset(f"hf:{tmp_path / 'mixed'}")
    data = load_image_dataset(f"hf:{tmp_path / 'mixed'}", image_size=4)
    _check_invariants(data)
    assert data.images.shape == (4, 3, 4, 4)  # RGB first: everything decoded as RGB

    # Same-size gray-first set with one colour image: promoted to 3 channels, values kept.
    colour = _rand_u8((5, 7, 3), seed=9)
    _hf_dataset([GRAY[0], colour], [0, 1]).save_to_disk(str(tmp_path / "g1"))
    data = load_image_dataset(f"hf:{tmp_path / 'g1'}")
    assert data.images.shape == (2, 3, 5, 7)
    assert torch.equal(data.images[0], _as_float(GRAY[0]).expand(3, -1, -1))
    assert torch.equal(data.images[1], _as_float(colour).permute(2, 0, 1))


def test_hf_missing_columns_named(tmp_path):
    ds = datasets.Dataset.from_dict({"picture": [PILImage.fromarray(GRAY[0])], "target": [0]},
                                    features=datasets.Features({"picture": datasets.Image(),
                                                                "target": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(ValueError, match=r"label column.*'picture', 'target'"):
        load_image_dataset(f"hf:{tmp_path / 'nolabel'}")


def test_hf_hub_unreachable_suggests_local_path(monkeypatch):
    # HF's own offline switch makes the real loader fail fast the way a dead network does.
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match=r"Hugging Face Hub.*hf:/path/to/DIR"):
        load_image_dataset("hf:zalando-datasets/fashion_mnist-not-cached-anywhere")


# --------------------------------------------------------------------------- torchvision


def test_torchvision_mnist_from_fake_raw_folder(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    raw = tmp_path / "MNIST" / "raw"
    train_x, train_y = _rand_u8((9, 28, 28), seed=7), np.arange(9, dtype=np.uint8) % 10
    test_x, test_y = _rand_u8((3, 28, 28), seed=8), np.array([9, 4, 2], np.uint8)
    _write_idx_split(raw, "train", train_x, train_y, "")
    _write_idx_split(raw, "t10k", test_x, test_y, "")

    data = load_image_dataset(f"torchvision:MNIST:{tmp_path}")
    _check_invariants(data)
    assert data.images.shape == (9, 1, 28, 28)
    assert torch.equal(data.images[:, 0], _as_float(train_x))
    assert torch.equal(data.labels, torch.from_numpy(train_y.astype(np.int64)))
    assert data.num_classes == 10 and data.class_names == list(torchvision.datasets.MNIST.classes)
    assert data.name == "torchvision:MNIST"

    test = load_image_dataset("torchvision:mnist", "test", root=str(tmp_path), limit=2)
    assert torch.equal(test.images[:, 0], _as_float(test_x[:2])) and test.labels.tolist() == [9, 4]

    with pytest.raises(FileNotFoundError, match=r"MNIST.*raw"):
        load_image_dataset(f"torchvision:MNIST:{tmp_path / 'empty'}")
    with pytest.raises(ValueError, match="no dataset 'NoSuchSet'"):
        load_image_dataset(f"torchvision:NoSuchSet:{tmp_path}")
    with pytest.raises(ValueError, match="needs a root"):
        load_image_dataset("torchvision:MNIST")


def test_torchvision_imagefolder_iterates(tmp_path):
    pytest.importorskip("torchvision")
    for cls, arrays in (("cat", RGB[:2]), ("dog", RGB[2:4])):
        (tmp_path / cls).mkdir()
        for i, a in enumerate(arrays):
            PILImage.fromarray(a).save(tmp_path / cls / f"{i}.png")
    data = load_image_dataset(f"torchvision:ImageFolder:{tmp_path}")
    _check_invariants(data)
    assert data.images.shape == (4, 3, 4, 6)
    assert torch.equal(data.images, _as_float(RGB[:4]).permute(0, 3, 1, 2))
    assert data.labels.tolist() == [0, 0, 1, 1] and data.class_names == ["cat", "dog"]


# --------------------------------------------------------------------------- spec / API errors


@pytest.mark.parametrize("spec", ["cifar-11", "hf:", "idx:", "torchvision:"])
def test_bad_spec_names_the_spec(spec):
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        load_image_dataset(spec)


def test_unknown_spec_lists_accepted_forms():
    with pytest.raises(ValueError, match="accepted forms.*fashion-mnist.*digits.*idx:PATH.*hf:.*torchvision:"):
        load_image_dataset("imagenet-9000")
    with pytest.raises(FileNotFoundError, match="hf:"):
        load_image_dataset("./no/such/folder")


def test_bad_arguments():
    with pytest.raises(ValueError, match="limit"):
        load_image_dataset("digits", limit=0)
    with pytest.raises(ValueError, match="image_size"):
        load_image_dataset("digits", image_size=-3)
    with pytest.raises(ValueError, match="'validation'"):
        load_image_dataset("digits", "validation")


def test_image_data_subset_and_validation():
    data = load_image_dataset("digits", "test", limit=10)
    assert len(data) == 10
    part = data.subset([3, 1])
    assert torch.equal(part.images, data.images[[3, 1]]) and part.num_classes == 10
    assert part.class_names == data.class_names and part.name == "digits"
    assert len(data.subset(slice(2, 5))) == 3
    assert len(data.subset(data.labels == data.labels[0])) >= 1
    assert len(data.subset(torch.tensor([0]))) == 1
    with pytest.raises(ValueError, match="float32"):
        ImageData(data.images.double(), data.labels, 10)
    with pytest.raises(ValueError, match="labels"):
        ImageData(data.images, data.labels[:3], 10)
    with pytest.raises(ValueError, match="class names"):
        ImageData(data.images, data.labels, 10, ["x"])


# --------------------------------------------------------------------------- streams
@needs_fmnist
def test_a_stream_holds_stored_bytes_and_reads_what_load_gives():
    from db3_timm._io import tensor_fingerprint
    from db3_timm.data import open_image_dataset

    stream = open_image_dataset("fashion-mnist", "test", limit=300, image_size=32)
    assert stream.rows.dtype == np.uint8  # 1 byte per pixel held, not 4
    data = load_image_dataset("fashion-mnist", "test", limit=300, image_size=32)
    assert stream.image_shape == data.image_shape == (1, 32, 32) and torch.equal(stream.labels, data.labels)
    assert torch.equal(stream.read(100, 164), data.images[100:164])
    assert torch.equal(stream.take([5, 299, 0]), data.images[[5, 299, 0]])
    assert stream.fingerprint() == tensor_fingerprint(data.images)


def test_an_hf_stream_decodes_per_slice_and_refuses_mixed_sizes_at_open(tmp_path):
    from db3_timm._image_readers import HFImageRows
    from db3_timm.data import open_image_dataset

    _hf_dataset([RGB[0], np.ascontiguousarray(GRAY[0][:4, :6]), _rand_u8((8, 8), seed=6)], [0, 1, 2]).save_to_disk(
        str(tmp_path / "mixed"))
    with pytest.raises(ValueError, match=r"different sizes .*image_size=S"):
        open_image_dataset(f"hf:{tmp_path / 'mixed'}")  # headers only: nothing decoded yet
    stream = open_image_dataset(f"hf:{tmp_path / 'mixed'}", image_size=4)
    assert isinstance(stream.rows, HFImageRows) and stream.image_shape == (3, 4, 4)
    whole = load_image_dataset(f"hf:{tmp_path / 'mixed'}", image_size=4).images
    assert torch.equal(torch.cat([stream.read(i, i + 1) for i in range(3)]), whole)
    assert torch.equal(stream.take([2, 0]), whole[[2, 0]])
