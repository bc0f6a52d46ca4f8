"""Whole-dataset soft-labelling: shard contents, resumption, accounting, processes, and `db3 label`."""
import json
import os
from pathlib import Path

import pytest
import torch

import db3_timm
from db3_timm import DistributedSetupError, LabelOracle, create_labeler, is_labeler
from db3_timm.transfer.label import (
    ConfigMismatchError,
    IncompleteLabelingError,
    label_dataset,
    load_labeled_dataset,
    load_references,
    read_manifest,
    shard_generator,
    shard_seed,
)

from conftest import AffineNet

N, SHARD = 30, 8  # 4 shards, the last one short


def _net() -> AffineNet:
    g = torch.Generator().manual_seed(0)
    return AffineNet(torch.randn(4, 3 * 4 * 4, generator=g), torch.randn(4, generator=g) * 0.1)


def _oracle(net=None, **kw) -> LabelOracle:
    return LabelOracle.from_module(net if net is not None else _net(), input_size=(3, 4, 4), **kw)


def _labeler(oracle, name="sd"):
    if name != "sd" and not is_labeler(name):
        pytest.skip(f"labeler {name!r} is not registered yet")
    cfg = {} if name == "sd" else {"queries_per_target": 12, "directions": 1}
    return create_labeler(name, oracle, **cfg)


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(N, 3, 4, 4, generator=g)
    refs = torch.rand(24, 3, 4, 4, generator=g)
    # Dataset labels = the teacher's answers except two, so the reference check really drops some.
    ref_labels = _oracle()(refs).clone()
    ref_labels[:2] = (ref_labels[:2] + 1) % 4
    return x, refs, ref_labels


def _columns(ds):
    return ds.with_format("torch")[:]


def _assert_same(a, b):
    ca, cb = _columns(a), _columns(b)
    assert set(ca) == set(cb)
    for key in ca:
        assert torch.equal(ca[key], cb[key]), key


class FailAfter:
    """A ``query_log`` that stops the run (like a kill) once ``calls`` batches were answered."""

    def __init__(self, calls: int):
        self.calls, self.seen = calls, 0

    def __call__(self, batch: int, total: int) -> None:
        self.seen += 1
        if self.seen >= self.calls:
            raise KeyboardInterrupt("simulated kill")


# ---------------------------------------------------------------------- contents
@pytest.mark.parametrize("name", ["sd", "mbd"])
def test_shards_equal_direct_label_calls_with_the_shard_generator(tmp_path, name):
    x, refs, ref_labels = _data()
    oracle = _oracle()
    labeler = _labeler(oracle, name)
    ds = label_dataset(labeler, x, tmp_path, references=refs, dataset_labels=ref_labels, shard_size=SHARD, seed=5,
                       progress=False)
    assert ds.column_names == ["index", "image", "label", "distances", "soft_logits", "queries"]
    assert str(ds.features["image"].dtype) == "float32" and tuple(ds.features["image"].shape) == (3, 4, 4)
    cols = _columns(ds)
    assert torch.equal(cols["index"], torch.arange(N)) and torch.equal(cols["image"], x)
    assert cols["label"].dtype == torch.int64 and cols["queries"].dtype == torch.int64

    checked = load_references(tmp_path)
    expected = labeler.check_references(refs, ref_labels)
    assert torch.equal(checked.images, expected.images) and torch.equal(checked.labels, expected.labels)
    assert checked.images.shape[0] <= 22  # the two relabelled references were dropped
    for k in range(4):
        sl = slice(k * SHARD, min((k + 1) * SHARD, N))
        soft = labeler.label(x[sl], checked, generator=shard_generator(5, k))
        assert torch.equal(cols["label"][sl], soft.labels)
        assert torch.equal(cols["distances"][sl], soft.distances)  # inf included
        assert torch.equal(cols["soft_logits"][sl], soft.logits)
        assert torch.equal(cols["queries"][sl], soft.queries)


def test_query_accounting_equals_oracle_counter(tmp_path):
    x, refs, ref_labels = _data()
    oracle = _oracle()
    oracle.queries = 1000  # a used oracle: the manifest counts this run's increase, not the absolute counter
    ds = label_dataset(_labeler(oracle), x, tmp_path, references=refs, dataset_labels=ref_labels, shard_size=SHARD,
                       progress=False)
    m = read_manifest(tmp_path)
    assert m["complete"] and m["num_shards"] == 4 and m["num_finished_shards"] == 4
    assert m["queries"]["total"] == oracle.queries - 1000
    assert m["queries"]["reference_check"] == refs.shape[0] == m["references"]["check_queries"]
    assert m["queries"]["shards"] == sum(s["queries"] for s in m["shards"]) == int(_columns(ds)["queries"].sum())
    assert m["config"]["seed"] == 0 and m["config"]["shard_size"] == SHARD and m["config"]["num_samples"] == N
    assert m["config"]["labeler"] == _canonical_cfg(_labeler(oracle))

    # Repeating the finished call spends nothing and returns the same data.
    before = oracle.queries
    again = label_dataset(_labeler(oracle), x, tmp_path, references=refs, dataset_labels=ref_labels, shard_size=SHARD,
                          progress=False)
    assert oracle.queries == before
    _assert_same(ds, again)


def _canonical_cfg(labeler):
    return json.loads(json.dumps(labeler.config(), sort_keys=True, default=str))


def test_prechecked_references_cost_nothing(tmp_path):
    x, refs, ref_labels = _data()
    oracle = _oracle()
    labeler = _labeler(oracle)
    checked = labeler.check_references(refs, ref_labels)
    before = oracle.queries
    label_dataset(labeler, x, tmp_path, references=checked, shard_size=SHARD, progress=False)
    m = read_manifest(tmp_path)
    assert m["references"]["prechecked"] and m["queries"]["reference_check"] == 0
    assert m["queries"]["total"] == oracle.queries - before == N


def test_known_teacher_labels_save_one_query_per_image(tmp_path):
    x, refs, ref_labels = _data()
    oracle = _oracle()
    checked = _labeler(oracle).check_references(refs, ref_labels)
    plain = label_dataset(_labeler(oracle), x, tmp_path / "plain", references=checked, shard_size=SHARD, progress=False)
    known = torch.tensor(plain["label"])
    before = oracle.queries
    ds = label_dataset(_labeler(oracle), x, tmp_path / "known", references=checked, teacher_labels=known,
                       shard_size=SHARD, progress=False)
    assert read_manifest(tmp_path / "known")["queries"]["total"] == oracle.queries - before
    assert read_manifest(tmp_path / "plain")["queries"]["total"] - (oracle.queries - before) == N
    a, b = _columns(plain), _columns(ds)
    assert torch.equal(a["soft_logits"], b["soft_logits"]) and torch.equal(a["queries"] - 1, b["queries"])
    # Other labels are another run: resuming into this folder with them is refused.
    with pytest.raises(ConfigMismatchError, match="teacher_labels_fingerprint"):
        label_dataset(_labeler(oracle), x, tmp_path / "known", references=checked, teacher_labels=(known + 1) % 3,
                      shard_size=SHARD, progress=False)
    with pytest.raises(ValueError, match=rf"teacher_labels must be an integer tensor of shape \({N},\)"):
        label_dataset(_labeler(oracle), x, tmp_path / "bad", teacher_labels=known[:-1], progress=False)


def test_shard_seed_is_a_fixed_function_of_seed_and_shard():
    assert shard_seed(0, 0) == 6017775124710473527  # pinned: changing it would change every labelled dataset
    seeds = {shard_seed(s, k) for s in range(4) for k in range(64)}
    assert len(seeds) == 256 and all(0 <= v < 2**63 for v in seeds)
    assert torch.equal(torch.rand(3, generator=shard_generator(7, 2)), torch.rand(3, generator=shard_generator(7, 2)))


# ---------------------------------------------------------------------- resumption
@pytest.mark.parametrize("name", ["sd", "mbd"])
def test_killed_run_resumes_bit_for_bit_without_requerying(tmp_path, name):
    x, refs, ref_labels = _data()
    whole = label_dataset(_labeler(_oracle(), name), x, tmp_path / "whole", references=refs,
                          dataset_labels=ref_labels, shard_size=SHARD, seed=3, progress=False)
    whole_manifest = read_manifest(tmp_path / "whole")

    # sd asks the teacher once per shard; mbd many times. Kill inside shard 2 either way.
    spent_to_shard2 = whole_manifest["queries"]["reference_check"] + sum(s["queries"] for s in whole_manifest["shards"][:2])
    oracle = _oracle()

    def kill_in_shard_2(batch, total):
        if total > spent_to_shard2:
            raise KeyboardInterrupt("simulated kill")

    oracle.query_log = kill_in_shard_2
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        label_dataset(_labeler(oracle, name), x, out, references=refs, dataset_labels=ref_labels, shard_size=SHARD,
                      seed=3, progress=True)
    run1 = oracle.queries
    m1 = read_manifest(out)
    assert [s["shard"] for s in m1["shards"]] == [0, 1] and not m1["complete"]
    assert m1["queries"]["aborted"] > 0 and m1["queries"]["total"] == run1  # nothing spent goes unrecorded
    finished_inodes = {p.name: p.stat().st_ino for p in (out / "shards").glob("shard-*.json")}

    oracle2 = _oracle()  # a fresh process: new oracle, counter from 0
    resumed = label_dataset(_labeler(oracle2, name), x, out, references=refs, dataset_labels=ref_labels,
                            shard_size=SHARD, seed=3, progress=False)
    _assert_same(whole, resumed)
    m2 = read_manifest(out)
    # Only shards 2 and 3 were queried again: no reference check, no finished shard.
    assert oracle2.queries == sum(s["queries"] for s in m2["shards"][2:])
    assert m2["queries"]["reference_check"] == whole_manifest["queries"]["reference_check"]
    assert m2["queries"]["total"] == run1 + oracle2.queries
    assert m2["queries"]["shards"] == whole_manifest["queries"]["shards"]
    assert {p: (out / "shards" / p).stat().st_ino for p in finished_inodes} == finished_inodes


def test_load_incomplete_dir_raises_with_missing_count(tmp_path):
    x, refs, ref_labels = _data()
    oracle = _oracle(query_log=FailAfter(calls=3))  # reference check, shard 0, then dies in shard 1
    with pytest.raises(KeyboardInterrupt):
        label_dataset(_labeler(oracle), x, tmp_path, references=refs, dataset_labels=ref_labels, shard_size=SHARD,
                      progress=False)
    with pytest.raises(IncompleteLabelingError, match=r"3 of 4 shards missing.*rerun the same command"):
        load_labeled_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_labeled_dataset(tmp_path / "nothing-here")


def test_stale_temp_dirs_are_removed_and_never_loaded(tmp_path):
    x, refs, ref_labels = _data()
    label_dataset(_labeler(_oracle()), x, tmp_path, references=refs, dataset_labels=ref_labels, shard_size=SHARD,
                  progress=False)
    stale = tmp_path / "train" / ".data-shard-00001.arrow.123.deadbeef.tmp"  # what a kill mid-write leaves
    stale.write_bytes(b"half a shard")
    assert len(load_labeled_dataset(tmp_path)) == N
    label_dataset(_labeler(_oracle()), x, tmp_path, references=refs, dataset_labels=ref_labels, shard_size=SHARD,
                  progress=False)
    assert not stale.exists()


def test_config_mismatch_raises_naming_the_keys(tmp_path):
    x, refs, ref_labels = _data()
    oracle = _oracle(query_log=FailAfter(calls=3))
    with pytest.raises(KeyboardInterrupt):
        label_dataset(_labeler(oracle), x, tmp_path, references=refs, dataset_labels=ref_labels, shard_size=SHARD,
                      progress=False)
    kw = dict(references=refs, dataset_labels=ref_labels, progress=False)
    with pytest.raises(ConfigMismatchError, match=r"seed: 0 -> 1; shard_size: 8 -> 16"):
        label_dataset(_labeler(_oracle()), x, tmp_path, shard_size=SHARD * 2, seed=1, **kw)
    with pytest.raises(ConfigMismatchError, match=r"labeler\.rule"):
        label_dataset(create_labeler("sd", _oracle(), rule="neg_distance"), x, tmp_path, shard_size=SHARD, **kw)
    with pytest.raises(ConfigMismatchError, match=r"data_fingerprint"):
        label_dataset(_labeler(_oracle()), x.flip(0), tmp_path, shard_size=SHARD, **kw)
    with pytest.raises(ConfigMismatchError, match=r"references_fingerprint"):
        label_dataset(_labeler(_oracle()), x, tmp_path, shard_size=SHARD, references=refs[1:],
                      dataset_labels=ref_labels[1:], progress=False)


def test_bad_arguments(tmp_path):
    x, refs, ref_labels = _data()
    labeler = _labeler(_oracle())
    with pytest.raises(ValueError, match="shard_size"):
        label_dataset(labeler, x, tmp_path, references=refs, shard_size=0)
    with pytest.raises(ValueError, match="empty"):
        label_dataset(labeler, x[:0], tmp_path, references=refs)
    with pytest.raises(ValueError, match="dataset_labels"):
        label_dataset(labeler, x, tmp_path, dataset_labels=ref_labels)


def test_budget_stop_records_the_spent_queries(tmp_path):
    x, refs, ref_labels = _data()
    oracle = _oracle(budget=24 + 2 * SHARD + 3)  # reference check + two shards, not a third
    with pytest.raises(db3_timm.QueryBudgetExceeded):
        label_dataset(_labeler(oracle), x, tmp_path, references=refs, dataset_labels=ref_labels, shard_size=SHARD,
                      progress=False)
    m = read_manifest(tmp_path)
    assert m["num_finished_shards"] == 2 and m["queries"]["total"] == oracle.queries


# ---------------------------------------------------------------------- processes
class _FakeState:
    num_processes, process_index, is_main_process, distributed_type = 1, 0, True, "NO"

    def wait_for_everyone(self):
        pass


def test_world_size_without_distributed_state_is_refused(tmp_path, monkeypatch):
    x, refs, ref_labels = _data()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError, match=r"ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2"):
        label_dataset(_labeler(_oracle()), x, tmp_path, references=refs, accelerator=_FakeState(), progress=False)


_WORKER = """
import os, sys
import torch
sys.path.insert(0, {tests!r})
import test_labeling as t
from accelerate.state import PartialState
from db3_timm._io import RunLockedError
from db3_timm.transfer.label import label_dataset

x, refs, ref_labels = torch.load({inputs!r})
for name in {names!r}:
    oracle = t._oracle()
    # No accelerator passed: WORLD_SIZE=2 with ACCELERATE_USE_CPU=true must be picked up on its own.
    ds = label_dataset(t._labeler(oracle, name), x, os.path.join({out!r}, name), references=refs,
                       dataset_labels=ref_labels, shard_size=t.SHARD, seed=3, progress=False)
    state = PartialState()
    torch.save({{"queries": oracle.queries, "num_processes": state.num_processes, "rows": t._columns(ds)}},
               os.path.join({results!r}, f"{{name}}-p{{state.process_index}}.pt"))
# A folder another job (the test) holds: every process must raise, none may wait for a refused main process.
try:
    label_dataset(t._labeler(t._oracle(), "sd"), x, {busy!r}, shard_size=t.SHARD, progress=False)
    refused = None
except RunLockedError as err:
    refused = str(err)
with open(os.path.join({results!r}, f"busy-p{{PartialState().process_index}}.txt"), "w") as fh:
    fh.write(repr(refused))
PartialState().destroy_process_group()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    # Fresh interpreters via `accelerate launch`: forking the pytest process (debug_launcher) deadlocks
    # in libgomp once the parent has run an OpenMP region, as any torch op on 2 cores does.
    import subprocess
    import sys

    names = ["sd"] + (["mbd"] if is_labeler("mbd") else [])  # mbd: the generator really matters
    x, refs, ref_labels = _data()
    results = tmp_path / "results"
    results.mkdir()
    torch.save((x, refs, ref_labels), tmp_path / "inputs.pt")
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(tests=str(Path(__file__).parent), inputs=str(tmp_path / "inputs.pt"), names=names,
                                     out=str(tmp_path / "two"), results=str(results), busy=str(tmp_path / "busy")))
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(script)]
    from db3_timm._io import run_lock

    with run_lock(tmp_path / "busy", "labelling run"):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for p in range(2):  # both processes of the job were refused, naming this process
        assert f"another labelling run (pid {os.getpid()}: " in (results / f"busy-p{p}.txt").read_text()

    for name in names:
        single = label_dataset(_labeler(_oracle(), name), x, tmp_path / "one" / name, references=refs,
                               dataset_labels=ref_labels, shard_size=SHARD, seed=3, progress=False)
        _assert_same(single, load_labeled_dataset(tmp_path / "two" / name))
        got = [torch.load(results / f"{name}-p{p}.pt") for p in range(2)]
        assert [g["num_processes"] for g in got] == [2, 2]
        expected = _columns(single)
        for g in got:  # every process returns the whole dataset
            assert all(torch.equal(g["rows"][k], expected[k]) for k in expected)
        m = read_manifest(tmp_path / "two" / name)
        assert m["complete"] and m["num_processes"] == 2
        assert m["queries"]["total"] == sum(g["queries"] for g in got)  # references checked once, on process 0
        assert m["queries"]["total"] == read_manifest(tmp_path / "one" / name)["queries"]["total"]
        records = [json.loads((tmp_path / "two" / name / "shards" / f"{s['name']}.json").read_text()) for s in m["shards"]]
        assert all(r["process"] == r["shard"] % 2 for r in records)


# ---------------------------------------------------------------------- damaged folders, other teachers, two runs
def test_resuming_with_another_teacher_is_refused(tmp_path):
    x, refs, ref_labels = _data()
    oracle = _oracle(query_log=FailAfter(calls=3))
    with pytest.raises(KeyboardInterrupt):
        label_dataset(_labeler(oracle), x, tmp_path, references=refs, dataset_labels=ref_labels, shard_size=SHARD,
                      progress=False)
    g = torch.Generator().manual_seed(9)
    other = _oracle(AffineNet(torch.randn(4, 48, generator=g), torch.randn(4, generator=g)))
    with pytest.raises(ConfigMismatchError, match="teacher"):
        label_dataset(_labeler(other), x, tmp_path, references=refs, dataset_labels=ref_labels, shard_size=SHARD,
                      progress=False)
    assert other.queries == 0


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    from db3_timm._io import RunLockedError, run_lock

    x, refs, ref_labels = _data()
    with run_lock(tmp_path, "labelling run"):  # another process labelling into the folder right now
        with pytest.raises(RunLockedError, match=rf"another labelling run \(pid {os.getpid()}: .+\) is writing into"):
            label_dataset(_labeler(_oracle()), x, tmp_path, shard_size=SHARD, progress=False)


def test_a_damaged_shard_is_never_trusted_and_is_labelled_again(tmp_path):
    x, refs, ref_labels = _data()
    whole = _columns(label_dataset(_labeler(_oracle()), x, tmp_path, references=refs, dataset_labels=ref_labels,
                                   shard_size=SHARD, progress=False))  # in memory: the files are about to change
    data = sorted((tmp_path / "train").glob("data-*.arrow"))[1]
    raw = bytearray(data.read_bytes())
    raw[-100] ^= 0xFF  # one flipped bit in the data
    data.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="data-shard-00001.arrow' is damaged"):
        load_labeled_dataset(tmp_path)
    oracle = _oracle()
    with pytest.warns(UserWarning, match=r"shard-00001.json' \(or its data file\) is damaged"):
        again = label_dataset(_labeler(oracle), x, tmp_path, references=refs, dataset_labels=ref_labels,
                              shard_size=SHARD, progress=False)
    assert all(torch.equal(whole[k], v) for k, v in _columns(again).items())
    assert oracle.queries == SHARD  # only the damaged shard was asked again (sd: one label query per image)


@pytest.mark.parametrize("content", ["[1, 2]", "{\"format\": 3", ""])
def test_a_damaged_manifest_is_named(tmp_path, content):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ValueError, match="manifest.json"):
        read_manifest(tmp_path)


# ---------------------------------------------------------------------- streamed images
def _png_dataset(path: Path, n: int = 20, size: int = 6, channels: int = 3) -> Path:
    """A saved Hugging Face dataset of ``n`` PNGs (encoded images, decoded only when read)."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    shape = (size, size, 3) if channels == 3 else (size, size)
    rows = {"image": [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)],
            "label": [i % 4 for i in range(n)]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return path


def test_a_streamed_split_labels_exactly_like_its_tensor_and_resumes_it(tmp_path):
    from db3_timm.data import load_image_dataset, open_image_dataset

    src = _png_dataset(tmp_path / "pngs")
    stream = open_image_dataset(f"hf:{src}", image_size=4)
    assert stream.image_shape == (3, 4, 4) and len(stream) == 20
    tensor = load_image_dataset(f"hf:{src}", image_size=4).images
    streamed = label_dataset(_labeler(_oracle(), "mbd"), stream, tmp_path / "a", shard_size=SHARD, progress=False)
    direct = label_dataset(_labeler(_oracle(), "mbd"), tensor, tmp_path / "b", shard_size=SHARD, progress=False)
    _assert_same(streamed, direct)
    assert read_manifest(tmp_path / "a")["config"] == read_manifest(tmp_path / "b")["config"]

    # A run begun from the tensor and killed in shard 1 resumes from the stream: same pixels, same fingerprint.
    first = read_manifest(tmp_path / "b")["shards"][0]["queries"]

    def kill_in_shard_1(batch, total):
        if total > first:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        label_dataset(_labeler(_oracle(query_log=kill_in_shard_1), "mbd"), tensor, tmp_path / "c", shard_size=SHARD,
                      progress=False)
    assert read_manifest(tmp_path / "c")["num_finished_shards"] == 1
    oracle = _oracle()
    resumed = label_dataset(_labeler(oracle, "mbd"), stream, tmp_path / "c", shard_size=SHARD, progress=False)
    _assert_same(resumed, direct)
    assert oracle.queries == sum(s["queries"] for s in read_manifest(tmp_path / "b")["shards"][1:])


def test_default_shard_size_shrinks_with_the_image():
    from db3_timm.transfer.label import default_shard_size

    assert default_shard_size((1, 28, 28)) == 512
    assert default_shard_size((3, 224, 224)) == 55
    assert default_shard_size((3, 4096, 4096)) == 8


def test_cli_label_streams_hf_images_for_a_teacher_with_more_classes(tmp_path):
    """The data has 4 classes, the teacher answers 6: the label column gets the teacher's 6 classes."""
    import timm
    from safetensors.torch import save_file

    from db3_timm.cli import main

    src = _png_dataset(tmp_path / "pngs", size=28, channels=1)
    torch.manual_seed(0)
    save_file(timm.create_model("lenet5_fifth", num_classes=6).state_dict(), str(tmp_path / "t.safetensors"))
    out = tmp_path / "out"
    assert main(["label", "--teacher", "lenet5_fifth", "--teacher-checkpoint", str(tmp_path / "t.safetensors"),
                 "--num-classes", "6", "--data", f"hf:{src}", "--labeler", "sd", "--references-per-class", "1",
                 "--out", str(out), "--no-progress"]) == 0
    ds = load_labeled_dataset(out)
    assert len(ds) == 20 and ds.features["label"].num_classes == 6
    assert read_manifest(out)["config"]["shard_size"] == 512
