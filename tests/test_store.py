"""Every answer kept: the query store records each (image, answer) exactly once, in units that survive a kill."""
import datasets
import pytest
import torch

from db3_timm import LabelOracle
from db3_timm.store import QueryStore

from conftest import AffineNet


def _oracle(**kw):
    g = torch.Generator().manual_seed(0)
    return LabelOracle.from_module(AffineNet(torch.randn(4, 48, generator=g), torch.randn(4, generator=g) * 0.1),
                                   input_size=(3, 4, 4), **kw)


def _store(path, **kw):
    return QueryStore(path, image_shape=(3, 4, 4), class_names=["a", "b", "c", "d"], **kw)


def _images(n, seed=1):
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_every_answer_is_kept_once_with_its_provenance(tmp_path):
    oracle = _oracle(max_batch_size=7)
    store = _store(tmp_path / "s", flush_rows=10)
    x = _images(30)
    with store.attached(oracle):
        with store.unit("probes-00000"):
            a = oracle(x[:20])
            b = oracle(x[20:])
    truth = oracle(x)  # not attached any more: not stored
    rows = store.finish("card").with_format("torch")[:]
    assert len(rows["label"]) == 30 and torch.equal(rows["image"], x) and torch.equal(rows["label"], torch.cat([a, b]))
    assert torch.equal(rows["label"], truth)
    assert set(store.committed()) == {"probes-00000"} and store.committed()["probes-00000"]["queries"] == 30
    assert rows["call"].tolist() == [0] * 7 + [1] * 7 + [2] * 6 + [3] * 7 + [4] * 3  # one call per batch sent
    assert torch.all(rows["kd_weight"] == 0) and torch.all(rows["soft_logits"] == 0)
    assert datasets.load_from_disk(str(tmp_path / "s"))["train"][0]["source"] == "probes"
    assert len(store.committed()["probes-00000"]["files"]) == 3  # flushed every 10 rows: memory stays bounded


def test_a_failed_unit_keeps_nothing_and_a_repeated_unit_adds_nothing(tmp_path):
    oracle = _oracle()
    store = _store(tmp_path / "s")
    x = _images(12)
    with store.attached(oracle):
        with pytest.raises(KeyboardInterrupt):
            with store.unit("mixes-00000"):
                oracle(x[:6])
                raise KeyboardInterrupt  # a kill half-way
        assert store.committed() == {}
        for _ in range(2):  # the resumed job repeats the unit; then a third run finds it done
            with store.unit("mixes-00000") as new:
                oracle(x)
        assert not new
    rows = store.finish("card")
    assert len(rows) == 12 and oracle.queries == 6 + 12 + 12  # every query counted, each answer stored once
    reopened = _store(tmp_path / "s")  # a new process reading the same folder
    assert reopened.committed()["mixes-00000"]["rows"] == 12 and not (tmp_path / "s" / "pending").exists()


def test_8_bit_queries_are_stored_exactly_as_8_bit_images(tmp_path):
    oracle = _oracle(quantize="uint8")
    store = _store(tmp_path / "s", image_dtype="uint8")
    x = _images(40)
    with store.attached(oracle), store.unit("hard-00000"):
        labels = oracle(x)
    from db3_timm._disk import read_columns

    rows = read_columns(store.finish("card"), ["image", "label"])
    assert rows["image"].dtype == torch.uint8 and torch.equal(rows["label"], labels)
    # The teacher answered exactly the stored 8-bit images.
    assert torch.equal(_oracle()(rows["image"].float() / 255), labels)
    assert torch.equal(rows["image"], x.mul(255).round().to(torch.uint8))
    with pytest.raises(ValueError, match="quantize must be None or 'uint8', got 'int4'"):
        _oracle(quantize="int4")


def test_soft_rows_join_the_unit_without_a_query(tmp_path):
    oracle = _oracle()
    store = _store(tmp_path / "s")
    x = _images(5)
    with store.attached(oracle), store.unit("mbd-00000"):
        labels = oracle(x)
        store.add_rows(x, labels, torch.randn(5, 4), kd_weight=1.0)
    rows = store.finish("card").with_format("torch")[:]
    assert oracle.queries == 5 and len(rows["label"]) == 10
    assert rows["kd_weight"].tolist() == [0.0] * 5 + [1.0] * 5 and rows["call"].tolist() == [0] * 5 + [-1] * 5
    assert store.committed()["mbd-00000"]["queries"] == 5


def test_answers_outside_a_unit_are_kept_as_their_own_unit(tmp_path):
    oracle = _oracle()
    store = _store(tmp_path / "s")
    with store.attached(oracle):
        oracle(_images(3))
    (name, record), = store.committed().items()
    assert name.startswith("loose-") and record["rows"] == 3


def test_a_full_disk_fails_clearly_and_keeps_the_committed_units(tmp_path, monkeypatch):
    import errno

    from db3_timm import _disk

    oracle = _oracle()
    store = _store(tmp_path / "s", flush_rows=8)
    x = _images(24)
    real_write = _disk.write_arrow_shard
    with store.attached(oracle):
        with store.unit("mixes-00000"):
            oracle(x[:8])
        committed = dict(store.committed())

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(_disk, "write_arrow_shard", full)
        with pytest.raises(OSError, match="no space left on the device of the query store .* the 1 units committed so far "
                                          "are kept; free some space and rerun"):
            with store.unit("mixes-00001"):
                oracle(x[8:])
        assert store.committed() == committed and not (tmp_path / "s" / "pending" / "mixes-00001").exists()
        monkeypatch.setattr(_disk, "write_arrow_shard", real_write)
        with store.unit("mixes-00001"):  # space freed: the rerun finishes the job
            oracle(x[8:])
    rows = store.finish("card").with_format("torch")[:]
    assert torch.equal(rows["image"], x)


def test_a_damaged_unit_is_forgotten_and_asked_again(tmp_path):
    from db3_timm.transfer.build import build_transfer_set
    from db3_timm.transfer.plan import Plan, PlanStep

    x = _images(20)
    plan = Plan("t", [PlanStep("hard", 20, ""), PlanStep("mixes", 300, "", {"unit_size": 100})])
    whole = build_transfer_set(_oracle(), plan, tmp_path / "t", images=x, progress=False)
    expected = {k: v.clone() for k, v in whole.tensors().items()}
    data = tmp_path / "t" / "train" / "data-mixes-00001-0000.arrow"
    raw = bytearray(data.read_bytes())
    raw[-64] ^= 0x01
    data.write_bytes(bytes(raw))
    oracle = _oracle()
    with pytest.warns(UserWarning, match="store unit mixes-00001.json .* is damaged; it is asked again"):
        again = build_transfer_set(oracle, plan, tmp_path / "t", images=x, progress=False)
    assert oracle.queries == 100 and all(torch.equal(expected[k], v) for k, v in again.tensors().items())
