"""Parquet + PNG export of transfer sets, read back by `datasets` and timm."""
import pytest
import torch


# ---------------------------------------------------------------------- Parquet export
def _labeled_dir(tmp_path, n=21):
    from db3_timm import LabelOracle, create_labeler
    from db3_timm.transfer.label import label_dataset

    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 6, 6, generator=g)
    oracle = LabelOracle.from_callable(lambda b: (b.mean((1, 2, 3)) * 30).long().clamp(0, 3) % 4, num_classes=4)
    refs = torch.rand(40, 1, 6, 6, generator=g)
    label_dataset(create_labeler("sd", oracle), x, tmp_path / "labels", references=refs, shard_size=8, progress=False)
    return tmp_path / "labels", x


def test_export_parquet_reads_back_through_timm_create_dataset(tmp_path, monkeypatch):
    import datasets
    import numpy as np
    import timm.data

    from db3_timm.transfer.label import load_labeled_dataset
    from db3_timm.transfer.export import export_parquet

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    labels_dir, x = _labeled_dir(tmp_path)
    names = ["zero", "one", "two", "three"]
    out = tmp_path / "export"
    info = export_parquet(labels_dir, out, rows_per_file=8, class_names=names)
    assert [p.split("/")[-1] for p in info["files"]] == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
    assert info["num_rows"] == 21 and info["num_classes"] == 4
    assert 0 < info["max_rounding_error"] <= 1 / 510 + 1e-9
    card = (out / "README.md").read_text()
    assert "Lossy images" in card and "trains on the hard `label` only" in card  # timm's train.py ignores soft labels

    src = load_labeled_dataset(labels_dir)
    ds = timm.data.create_dataset("hfds/" + str(out), root=None, split="train")
    assert len(ds) == 21
    assert ds.reader.class_to_idx == {n: i for i, n in enumerate(names)}
    for i in range(21):
        img, label = ds[i]
        assert label == src[i]["label"]  # the teacher's label, in order
        pixels = np.asarray(img)  # timm opens it as RGB; the PNG is grayscale
        assert pixels.shape == (6, 6, 3)
        assert np.array_equal(pixels[..., 0], np.rint(x[i, 0].numpy().astype(np.float64) * 255).astype(np.uint8))

    hf = datasets.load_dataset(str(out), split="train")
    assert isinstance(hf.features["image"], datasets.Image) and isinstance(hf.features["label"], datasets.ClassLabel)
    np.testing.assert_allclose(np.asarray(hf["soft_logits"], dtype=np.float32),
                               np.asarray(src["soft_logits"], dtype=np.float32), rtol=0, atol=0)

    with pytest.raises(FileExistsError):
        export_parquet(labels_dir, out)


def test_export_parquet_from_a_dataset_without_class_names(tmp_path, monkeypatch):
    import datasets
    import numpy as np

    from db3_timm.transfer.export import export_parquet

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 3, 4, 4)).astype(np.float32) / 255  # 8-bit exact
    src = datasets.Dataset.from_dict(
        {"image": rgb, "label": [0, 1, 2, 1, 0], "soft_logits": np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 0]]},
        features=datasets.Features({"image": datasets.Array3D((3, 4, 4), "float32"), "label": datasets.Value("int64"),
                                    "soft_logits": datasets.Sequence(datasets.Value("float32"), length=3)}),
    )
    info = export_parquet(src, tmp_path / "e")
    assert info["max_rounding_error"] < 1e-6  # 8-bit sources round-trip exactly
    back = datasets.load_dataset(str(tmp_path / "e"), split="train")
    assert back.features["label"] == datasets.Value("int64") and back["label"] == [0, 1, 2, 1, 0]
    img = np.asarray(back[3]["image"])
    assert img.shape == (4, 4, 3) and np.array_equal(img, np.rint(rgb[3].transpose(1, 2, 0) * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="class names"):
        export_parquet(src, tmp_path / "f", class_names=["a", "b"])
