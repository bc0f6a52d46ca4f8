"""The Accelerate recipes end to end: teacher training, DB3KD distillation, resume, two processes, configs.

Subprocess runs use fresh interpreters (`accelerate launch` for two processes): forking the pytest process
(accelerate's debug_launcher) deadlocks in libgomp once the parent has run an OpenMP region.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import db3_timm  # noqa: F401  (registers the paper's architectures)
from db3_timm import train_utils as tu

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
CONFIGS = RECIPES / "configs"
DIGITS = str(CONFIGS / "digits_lenet5.yaml")
FIX = "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2"


def _recipe(name):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def in_process():
    """One thread (two OpenMP threads stall on a shared 2-core box) and a clean accelerate state afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    _reset_accelerate()


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_") and k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO), **extra)
    return env


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd, **env):
    proc = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _results(out):
    return json.loads((Path(out) / "results.json").read_text())


# ---------------------------------------------------------------------- teacher, then student
@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn")
    out = tmp_path_factory.mktemp("teacher")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _recipe("train_teacher").main(["--config", DIGITS, "--output-dir", str(out), "--limit", "600",
                                              "--epochs", "4", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(before)
        _reset_accelerate()
    return out


def test_train_teacher_recipe_saves_a_local_dir_teacher(teacher):
    from db3_timm import LabelOracle
    from db3_timm.data import load_image_dataset

    r = _results(teacher)
    assert r["recipe"] == "train_teacher" and r["epochs"] == 4 and len(r["history"]) == 4
    assert r["final"]["test_acc"] > 0.8, r
    assert r["validation"]["source"].startswith("60 held-out images of digits")
    oracle = LabelOracle.from_timm(f"local-dir:{teacher / 'model'}")
    test = load_image_dataset("digits", "test", image_size=28)
    assert float((oracle(test.images) == test.labels).float().mean()) == pytest.approx(r["final"]["test_acc"])
    assert sorted(p.name for p in (teacher / "checkpoints").iterdir()) == ["epoch_3", "epoch_4"]  # keep 2


def _distill_args(teacher, out, *extra):
    return ["--config", DIGITS, "--teacher", f"local-dir:{teacher / 'model'}", "--output-dir", str(out),
            "--limit", "200", "--epochs", "3", "--batch-size", "20", "--lr", "5e-3",
            "--checkpoint-every", "4", "--keep-checkpoints", "0", "--no-progress", *extra]


@pytest.fixture(scope="module")
def single(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    proc = _run([sys.executable, str(RECIPES / "distill.py"), *_distill_args(teacher, out)])
    return out, proc


def test_distill_recipe_end_to_end_on_digits(single, teacher):
    from db3_timm import LabelOracle
    from db3_timm.data import load_image_dataset

    out, proc = single
    r = _results(out)
    assert r["recipe"] == "distill" and r["num_processes"] == 1 and r["global_steps"] == 27  # 180 rows / 20, 3 epochs
    assert r["transfer"]["rows"] == 180 and r["transfer"]["queries"] > 180  # labels + reference check
    assert "labelled with 'sd'" in r["transfer"]["source"]
    assert r["validation"] == {"source": "20 held-out images of digits split 'train' (seed 0)", "labels": "dataset", "rows": 20}
    losses = [h["train_loss"] for h in r["history"]]
    assert losses[-1] < losses[0]
    assert r["final"]["test_acc"] > 0.5 and r["teacher_test_acc"] > 0.8, r
    assert 1 <= r["best"]["epoch"] <= 3 and r["best"]["val_acc"] == max(h["val_acc"] for h in r["history"])
    assert "final model (epoch 3): test accuracy" in proc.stdout
    assert "best model by validation accuracy (20 held-out images" in proc.stdout
    # The saved student is a local-dir timm model whose accuracy is the one reported.
    student = LabelOracle.from_timm(f"local-dir:{out / 'model'}")
    test = load_image_dataset("digits", "test", image_size=28)
    assert float((student(test.images) == test.labels).float().mean()) == pytest.approx(r["final"]["test_acc"])
    assert (out / "model_best" / "model.safetensors").is_file()
    assert {p.name for p in (out / "checkpoints").iterdir()} >= {"epoch_1", "epoch_2", "epoch_3", "step_4", "step_12"}


def test_resume_mid_epoch_finishes_like_the_uninterrupted_run(single, teacher, tmp_path):
    out, _ = single
    r = _results(out)
    resumed = tmp_path / "run"
    shutil.copytree(out, resumed)
    # As if killed after optimizer step 12 (epoch 2, batch 3 of 9): only that checkpoint survives.
    for ckpt in (resumed / "checkpoints").iterdir():
        if ckpt.name != "step_12":
            shutil.rmtree(ckpt)
    shutil.rmtree(resumed / "model")
    (resumed / "results.json").unlink()
    assert json.loads((resumed / "checkpoints" / "step_12" / "progress.json").read_text())["batch_in_epoch"] == 3
    proc = _run([sys.executable, str(RECIPES / "distill.py"), *_distill_args(teacher, resumed, "--resume")])
    assert "resumed from" in proc.stdout and "step_12 (epoch 2, batch 3, step 12)" in proc.stdout
    again = _results(resumed)
    assert again["global_steps"] == r["global_steps"]
    assert again["history"] == r["history"]  # same loss trajectory, bit for bit
    assert again["weights_sha256_per_process"] == r["weights_sha256_per_process"]  # same final weights
    assert again["final"]["test_acc"] == r["final"]["test_acc"] and again["best"]["epoch"] == r["best"]["epoch"]
    assert "labelled" in again["transfer"]["source"] and again["transfer"]["queries"] == r["transfer"]["queries"]


@pytest.mark.slow
def test_two_cpu_processes_train_the_same_student(single, teacher, tmp_path):
    out, _ = single
    r1 = _results(out)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(RECIPES / "distill.py"), *_distill_args(teacher, two)]
    _run(cmd, ACCELERATE_USE_CPU="true")
    r2 = _results(two)
    assert r2["num_processes"] == 2 and r2["global_steps"] == r1["global_steps"]
    a, b = r2["weights_sha256_per_process"]
    assert a == b  # both ranks hold the same student
    # Global batches split over two processes: the same batches as one process, up to float rounding.
    for h1, h2 in zip(r1["history"], r2["history"]):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-3)
    assert abs(r2["final"]["test_acc"] - r1["final"]["test_acc"]) <= 0.03
    assert r2["transfer"]["queries"] == r1["transfer"]["queries"]  # labelling split across processes, same cost


def test_distill_from_a_prelabelled_transfer_dir(teacher, in_process, tmp_path):
    from db3_timm.cli import main as db3
    from db3_timm.transfer.label import read_manifest

    labels = tmp_path / "labels"
    assert db3(["label", "--teacher", f"local-dir:{teacher / 'model'}", "--data", "digits", "--limit", "60",
                "--labeler", "sd", "--references-per-class", "2", "--shard-size", "32", "--no-progress",
                "--out", str(labels)]) == 0
    spent = read_manifest(labels)["queries"]["total"]
    out = tmp_path / "d"
    assert _recipe("distill").main(["--config", DIGITS, "--teacher", f"local-dir:{teacher / 'model'}", "--output-dir",
                                    str(out), "--transfer-dir", str(labels), "--epochs", "2", "--batch-size", "10",
                                    "--no-eval-teacher", "--test-limit", "40", "--no-progress"]) == 0
    r = _results(out)
    assert r["transfer"] == {"source": f"pre-labelled {labels}", "rows": 54, "queries": spent}
    assert r["validation"] == {"source": "6 held-out rows of the transfer set (seed 0)",
                               "labels": "teacher (agreement with the teacher, not ground truth)", "rows": 6}
    assert r["global_steps"] == 10 and "teacher_test_acc" not in r
    assert read_manifest(labels)["queries"]["total"] == spent  # used as is: nothing relabelled


def test_distill_labels_with_a_surrogate_prior(teacher, in_process, tmp_path):
    from db3_timm.transfer.label import read_manifest

    out = tmp_path / "d"
    # The teacher's own weights as the white-box surrogate, so the prior is exercised end to end.
    assert _recipe("distill").main(["--config", DIGITS, "--teacher", f"local-dir:{teacher / 'model'}", "--output-dir",
                                    str(out), "--limit", "40", "--labeler", "mbd", "--queries-per-target", "30",
                                    "--prior", f"local-dir:{teacher / 'model'}", "--epochs", "1", "--batch-size", "10",
                                    "--no-eval-teacher", "--test-limit", "20", "--no-progress"]) == 0
    r = _results(out)
    assert "labelled with 'mbd'" in r["transfer"]["source"]
    manifest = read_manifest(out / "transfer")
    assert manifest["config"]["labeler"]["prior"]["model"] == "LeNet5" and manifest["complete"]
    assert r["transfer"]["queries"] <= r["transfer"]["rows"] * (1 + 9 * 30) + 10 * 10


# ---------------------------------------------------------------------- guard, zero-shot, config handling
def test_guard_names_the_fix(monkeypatch, in_process, capsys, tmp_path):
    class _OneProcess:
        num_processes, distributed_type = 1, "NO"

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(tu.DistributedSetupError, match=FIX.replace(" ", r"\s")):
        tu.check_distributed_setup(_OneProcess())
    monkeypatch.setenv("WORLD_SIZE", "1")
    tu.check_distributed_setup(_OneProcess())

    # The recipe under a launcher that set WORLD_SIZE=2 while accelerate saw one CPU process.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exc:
        _recipe("distill").main(["--config", DIGITS, "--teacher", "lenet5", "--output-dir", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert FIX in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any query or file


def test_zero_shot_without_the_generator_fails_clearly(monkeypatch, in_process, capsys, tmp_path):
    monkeypatch.setattr(db3_timm, "is_generator", lambda name: False)
    with pytest.raises(SystemExit) as exc:
        _recipe("distill").main(["--config", DIGITS, "--teacher", "lenet5", "--output-dir", str(tmp_path), "--zero-shot"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--zero-shot needs the ZSDB3KD pseudo-sample generator 'zsdb3', which is not installed" in err


def test_zero_shot_trains_on_the_registered_generator(monkeypatch, in_process, tmp_path, teacher):
    from db3_timm import _registry
    from db3_timm.generators import PseudoSamples

    calls = []

    class FakeZSDB3:  # the registered factory's interface: factory(oracle, **cfg).generate(spc, iterations, qpi, ...)
        def __init__(self, oracle, **cfg):
            self.oracle, self.pool = oracle, cfg["start_pool"] + cfg["mixes"]
            calls.append(cfg)

        def generate(self, samples_per_class, iterations, queries_per_iteration, *, step, out_dir, progress):
            calls.append((samples_per_class, iterations, queries_per_iteration, step))
            x = torch.rand(samples_per_class * 10 + self.pool, 1, 28, 28, generator=torch.Generator().manual_seed(0))
            y = self.oracle(x)
            n = samples_per_class * 10
            return PseudoSamples(x[:n], y[:n], torch.empty(0), queries={"init": len(x), "iterations": 0},
                                 pool_images=x[n:], pool_labels=y[n:])

    monkeypatch.setitem(_registry._factories["generator"], "zsdb3", FakeZSDB3)
    out = tmp_path / "zs"
    assert _recipe("distill").main([
        "--config", DIGITS, "--teacher", f"local-dir:{teacher / 'model'}", "--output-dir", str(out), "--zero-shot",
        "--zero-shot-samples-per-class", "4", "--zero-shot-iterations", "2", "--generator-kwargs", '{"max_init_queries": 99}',
        "--references-per-class", "2", "--epochs", "1", "--batch-size", "8", "--test-limit", "40", "--no-progress",
        "--zero-shot-start", "smooth", "--zero-shot-pool", "15", "--zero-shot-mixes", "5"]) == 0
    assert calls == [{"seed": 0, "start": "smooth", "start_pool": 15, "mixes": 5, "max_init_queries": 99}, (4, 2, 500, 0.5)]
    r = _results(out)
    assert r["transfer"]["generation_queries"] == {"init": 60, "iterations": 0}
    assert r["transfer"]["queries"] == 0  # every label is known from the generation, and sd asks nothing more
    assert r["transfer"]["rows"] == 36 + 20 and "zero-shot pseudo samples (zsdb3, 2 iterations)" in r["transfer"]["source"]
    assert "20 start-pool / mixed images labelled with 'sd'" in r["transfer"]["source"]
    assert r["validation"]["source"] == "4 held-out pseudo samples (seed 0)" and r["validation"]["labels"].startswith("teacher")
    assert r["global_steps"] == 7 and r["best"]["epoch"] == 1  # 56 rows / 8
    assert (out / "zero_shot" / "pseudo.safetensors").is_file()


def test_config_file_values_are_defaults_and_flags_win(tmp_path):
    distill = _recipe("distill")
    args = tu.parse_args_with_config(distill.build_parser(), ["--config", DIGITS, "--epochs", "7"], section="distill")
    assert args.epochs == 7 and args.lr == 2e-3 and args.student == "lenet5_half" and args.data == "digits"
    assert args.temperature == 20 and args.labeler == "sd"
    teacher = tu.parse_args_with_config(_recipe("train_teacher").build_parser(), ["--config", DIGITS], section="train_teacher")
    assert teacher.model == "lenet5" and teacher.epochs == 30
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: digits\ndistill:\n  studnet: lenet5_half\n")
    with pytest.raises(SystemExit):
        tu.parse_args_with_config(distill.build_parser(), ["--config", str(bad)], section="distill")


def _standin(tmp_path, kind):
    """A tiny `hf:` save_to_disk dataset shaped like the real one (for configs whose data is not on disk)."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    num_classes, sizes, mode = {
        "gray28": (10, [(28, 28)] * 6, "L"),
        "rgb32": (10, [(32, 32)] * 6, "RGB"),
        "flowers": (102, [(500, 667), (541, 500), (500, 752), (624, 500), (500, 500), (500, 606)], "RGB"),
    }[kind]

    def split(n):
        imgs = [Image.fromarray(rng.integers(0, 256, size=(h, w) + (() if mode == "L" else (3,)), dtype=np.uint8), mode)
                for h, w in sizes[:n]]
        return datasets.Dataset.from_dict(
            {"image": imgs, "label": list(rng.integers(0, num_classes, size=n))},
            features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=num_classes)}),
        )

    path = tmp_path / kind
    datasets.DatasetDict({"train": split(6), "test": split(2)}).save_to_disk(str(path))
    return f"hf:{path}"


_STANDINS = {"torchvision:MNIST:./data": "gray28", "hf:cifar10": "rgb32", "hf:nelorth/oxford-flowers": "flowers"}


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_config_data_fits_its_teacher_and_student(config, tmp_path, in_process):
    import timm
    import yaml
    from timm.data import resolve_model_data_config

    from db3_timm.data import FASHION_MNIST_DIR, load_image_dataset

    path = str(CONFIGS / config)
    spec = yaml.safe_load(open(path))["data"]
    override = []
    if spec in _STANDINS:
        override = ["--data", _standin(tmp_path, _STANDINS[spec])]
    elif spec == "fashion-mnist" and not Path(FASHION_MNIST_DIR).is_dir():
        override = ["--data", _standin(tmp_path, "gray28")]
    elif spec == "digits":
        pytest.importorskip("sklearn")
    t = tu.parse_args_with_config(_recipe("train_teacher").build_parser(), ["--config", path, *override], section="train_teacher")
    d = tu.parse_args_with_config(_recipe("distill").build_parser(), ["--config", path, *override], section="distill")
    assert d.teacher == f"local-dir:{t.output_dir}/model"  # the distillation reads what the teacher recipe writes
    assert d.temperature == 20 and d.epochs >= 1 and t.epochs >= 1
    data = load_image_dataset(t.data, t.train_split, image_size=t.image_size, limit=4)
    expected_classes = {"flowers102_resnet34.yaml": 102}.get(config, 10)
    assert data.num_classes == expected_classes
    for name in (t.model, d.student):
        model = timm.create_model(name, num_classes=data.num_classes, in_chans=data.image_shape[0]).eval()
        tu.check_model_input(model, data.image_shape, data.num_classes)
        cfg = resolve_model_data_config(model)
        if model.pretrained_cfg.get("fixed_input_size"):
            assert tuple(cfg["input_size"]) == data.image_shape, (name, data.image_shape)
        else:
            assert data.image_shape[1:] == tuple(cfg["input_size"][1:])  # 224 for the ImageNet ResNets
        with torch.no_grad():
            logits = model(tu.input_transform_for(model, data.image_shape)(data.images[:2]))
        assert logits.shape == (2, data.num_classes)
