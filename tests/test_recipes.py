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
def in_process(one_thread):
    """One thread (conftest's ``one_thread``) and a clean accelerate state afterwards."""
    yield
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
    assert r["recipe"] == "train_teacher" and len(r["history"]) == 4 and r["test_acc"] > 0.8, r
    oracle = LabelOracle.from_timm(f"local-dir:{teacher / 'model'}")
    test = load_image_dataset("digits", "test", image_size=28)
    assert float((oracle(test.images) == test.labels).float().mean()) == pytest.approx(r["test_acc"])
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
    from db3_timm import LabelOracle, load_transfer_set
    from db3_timm.data import load_image_dataset
    from db3_timm.hub import read_student_card

    out, proc = single
    r = _results(out)
    # 180 training images: their 180 answers and their 180 soft-labelled rows (sd asks nothing more); the paper's
    # plan trains on the soft rows: 3 epochs of 9 batches of 20.
    assert r["num_processes"] == 1 and r["training"]["global_steps"] == 27 and r["plan_name"] == "paper"
    assert r["transfer_rows"] == 360 and r["train_rows"] == 180 and r["queries"]["hard"] == 180
    assert r["queries"].get("sd", 0) == 0
    assert r["validation"] == "held-out images with their dataset labels" and r["accuracy_kind"] == "val-selected"
    losses = [h["train_loss"] for h in r["training"]["history"]]
    assert losses[-1] < losses[0]
    assert r["test_accuracy"] > 0.5 and r["teacher_accuracy"] > 0.8, r
    assert r["queries"]["evaluation"] == 360 and r["queries"]["total"] == 180 + 360
    assert "student test accuracy" in proc.stdout
    # The saved student is a local-dir timm model whose accuracy is the one reported, with its card.
    student = LabelOracle.from_timm(f"local-dir:{out / 'model'}")
    test = load_image_dataset("digits", "test", image_size=28)
    assert float((student(test.images) == test.labels).float().mean()) == pytest.approx(r["test_accuracy"])
    card = read_student_card(out / "model")
    assert card.queries == r["queries"]["total"] and card.transfer_rows == 360 and card.hyperparameters["epochs"] == 3
    assert str(out) not in (out / "model" / "README.md").read_text()  # no local path is published
    assert load_transfer_set(out / "transfer").info["labeler"] == "sd"
    assert {p.name for p in (out / "checkpoints").iterdir()} >= {"epoch_1", "epoch_2", "epoch_3", "step_4", "step_12"}


def test_a_recipe_student_pushes_with_its_card(single):
    from db3_timm.hub import push_student

    class FakeApi:
        def create_repo(self, **kw):
            return "https://hub/org/name"

        def upload_folder(self, **kw):
            self.files = kw["allow_patterns"]
            return "https://hub/org/name/commit/1"

    out, _ = single
    api = FakeApi()
    assert push_student(out / "model", "org/name", api=api).endswith("commit/1")
    assert set(api.files) == {"README.md", "config.json", "db3.json", "model.safetensors"}


def test_resume_mid_epoch_finishes_like_the_uninterrupted_run(single, teacher, tmp_path):
    out, _ = single
    r = _results(out)
    resumed = tmp_path / "run"
    shutil.copytree(out, resumed)
    # As if killed after optimizer step 12 (epoch 2, batch 3 of 9): only that checkpoint survives.
    for ckpt in (resumed / "checkpoints").iterdir():
        if ckpt.name not in ("step_12", "best"):
            shutil.rmtree(ckpt)
    shutil.rmtree(resumed / "model")
    (resumed / "results.json").unlink()
    assert json.loads((resumed / "checkpoints" / "step_12" / "progress.json").read_text())["batch_in_epoch"] == 3
    proc = _run([sys.executable, str(RECIPES / "distill.py"), *_distill_args(teacher, resumed)])
    assert "resumed from" in proc.stdout and "step_12 (epoch 2, batch 3, step 12)" in proc.stdout
    again = _results(resumed)
    assert again["training"]["history"] == r["training"]["history"]  # same loss trajectory, bit for bit
    assert again["weights_per_process"] == r["weights_per_process"]  # the same student
    assert again["test_accuracy"] == r["test_accuracy"] and again["queries"] == r["queries"]  # nothing asked twice


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
    assert r2["num_processes"] == 2 and r2["training"]["global_steps"] == r1["training"]["global_steps"]
    a, b = r2["weights_per_process"]
    assert a == b  # both ranks hold the same student
    # Global batches split over two processes: the same batches as one process, up to float rounding.
    for h1, h2 in zip(r1["training"]["history"], r2["training"]["history"]):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-3)
    assert abs(r2["test_accuracy"] - r1["test_accuracy"]) <= 0.03
    assert r2["queries"] == r1["queries"]  # labelling split across processes, the same cost


@pytest.mark.slow
def test_two_cpu_processes_build_the_same_zero_shot_transfer_set(teacher, tmp_path):
    from db3_timm import load_transfer_set
    from db3_timm._disk import read_columns

    # The main process runs the generator; the other waits and reads the bank back from the store.
    synth = ["--zero-shot", "--plan", "default", "--budget", "300", "--queries-per-round", "50", "--noise-share", "0.34", "--synth-kwargs",
             '{"generator_steps": 2, "boundary_steps": 1, "student_steps": 3, "student": "lenet5_fifth"}',
             "--no-eval-teacher", "--test-limit", "40"]
    _run([sys.executable, str(RECIPES / "distill.py"), *_distill_args(teacher, tmp_path / "one", *synth)])
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
          "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
          str(RECIPES / "distill.py"), *_distill_args(teacher, tmp_path / "two", *synth)], ACCELERATE_USE_CPU="true")
    one, two = _results(tmp_path / "one"), _results(tmp_path / "two")
    assert two["num_processes"] == 2 and two["queries"] == one["queries"] and one["queries"]["synth"] == 300
    sets = [load_transfer_set(tmp_path / r / "transfer").rows for r in ("one", "two")]
    assert sets[0]["unit"] == sets[1]["unit"]  # the same rounds, each asked once
    rows = [read_columns(ds, ["image", "label"]) for ds in sets]
    assert torch.equal(rows[0]["image"], rows[1]["image"]) and torch.equal(rows[0]["label"], rows[1]["label"])


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
    assert r["transfer_rows"] == 60 and r["queries"] == {"labelling": spent, "total": spent}
    assert r["validation"] == "held-out transfer rows scored against the teacher's labels"
    # 54 of 60 rows train: 5 batches of 10 would be too few per epoch, so 10 batches of 5, 2 epochs.
    assert r["training"]["batch_size"] == 5 and r["training"]["global_steps"] == 20
    assert read_manifest(labels)["queries"]["total"] == spent  # used as is: nothing relabelled


def test_a_generate_output_trains_with_its_pool_and_every_query_counted(teacher, in_process, tmp_path):
    from db3_timm.cli import main as db3
    from db3_timm.hub import read_student_card

    zs = tmp_path / "zs"
    assert db3(["generate", "--teacher", f"local-dir:{teacher / 'model'}", "--samples-per-class", "2", "--iterations",
                "1", "--queries-per-iteration", "30", "--labeler", "sd", "--start-pool", "40", "--no-progress",
                "--out", str(zs)]) == 0
    summary = json.loads((zs / "summary.json").read_text())
    out = tmp_path / "d"
    assert db3(["distill", "--teacher", f"local-dir:{teacher / 'model'}", "--student", "lenet5_fifth", "--data",
                "digits", "--transfer-dir", str(zs), "--epochs", "1", "--test-limit", "30", "--no-progress",
                "--out", str(out)]) == 0
    r = _results(out)
    assert r["transfer_rows"] == summary["rows"]  # every answer of the generation, and the pseudo samples
    assert r["queries"]["zsdb3"] == summary["queries"]["zsdb3"] and r["queries"]["evaluation"] == 30
    card = read_student_card(out / "model")
    assert card.queries == summary["queries"]["total"] + 30 and card.query_breakdown["zsdb3"] > 0


def test_distill_with_a_prior_end_to_end(teacher, in_process, tmp_path):
    from db3_timm.transfer.label import read_manifest

    out = tmp_path / "p"
    assert _recipe("distill").main(["--config", DIGITS, "--teacher", f"local-dir:{teacher / 'model'}", "--output-dir",
                                    str(out), "--limit", "40", "--labeler", "mbd", "--queries-per-target", "30",
                                    "--prior", f"local-dir:{teacher / 'model'}", "--epochs", "1", "--batch-size", "10",
                                    "--no-eval-teacher", "--test-limit", "20", "--no-progress"]) == 0
    r = _results(out)
    job = json.loads((out / "transfer" / "job.json").read_text())
    assert job["steps"][1]["labeler_config"]["prior"]["model"] == "LeNet5"  # compared on resume: another prior refuses
    assert r["queries"]["mbd"] <= 36 * 9 * 30 and r["queries"]["hard"] == 36


# ---------------------------------------------------------------------- guard, zero-shot, accelerate, configs
def test_guard_names_the_fix(monkeypatch, in_process, capsys, tmp_path):
    from db3_timm import DistributedSetupError
    from db3_timm._distributed import check_launch

    class _OneProcess:
        num_processes, distributed_type = 1, "NO"

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError, match=FIX.replace(" ", r"\s")):
        check_launch(_OneProcess())
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(_OneProcess())

    # The recipe under a launcher that set WORLD_SIZE=2 while accelerate saw one CPU process.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exc:
        _recipe("distill").main(["--config", DIGITS, "--teacher", "lenet5", "--output-dir", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert FIX in capsys.readouterr().err
    assert not (tmp_path / "o" / "transfer").exists()  # refused before any query


def test_the_recipe_refuses_a_small_budget_and_a_busy_folder_in_one_line(teacher, in_process, capsys, tmp_path):
    from db3_timm._io import run_lock

    argv = _distill_args(teacher, tmp_path / "o", "--plan", "default", "--no-eval-teacher", "--budget", "50")
    with pytest.raises(SystemExit) as exc:
        _recipe("distill").main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --budget: plan 'default' needs at least 180" in err  # 10 % held out
    assert "Traceback" not in err and not (tmp_path / "o" / "transfer").exists()
    with run_lock(tmp_path / "o", "distillation"), pytest.raises(SystemExit) as exc:
        _recipe("distill").main(_distill_args(teacher, tmp_path / "o", "--plan", "default", "--budget", "1000"))
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "argument --output-dir: another distillation (pid" in err
    assert not (tmp_path / "o" / "transfer").exists()


def test_the_launcher_decides_precision_and_accumulation_unless_the_flag_is_given(monkeypatch, in_process, tmp_path):
    from db3_timm.training import make_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    acc = make_accelerator(tmp_path, cpu=True)
    assert acc.mixed_precision == "bf16" and acc.gradient_accumulation_steps == 3
    _reset_accelerate()
    acc = make_accelerator(tmp_path, cpu=True, mixed_precision="no", gradient_accumulation_steps=2)
    assert acc.mixed_precision == "no" and acc.gradient_accumulation_steps == 2  # the recipe's flags win
    args = _recipe("distill").build_parser().parse_args([])
    assert args.mixed_precision is None and args.gradient_accumulation_steps is None


def test_a_small_transfer_set_trains_with_a_smaller_batch_and_says_so(in_process, tmp_path, capsys):
    import timm

    from db3_timm.training import TensorDictDataset, TrainConfig, adapted_batch_size, make_accelerator, train

    assert adapted_batch_size(900, 512, 1, 8) == 64 and adapted_batch_size(54_000, 512, 1, 8) == 512
    assert adapted_batch_size(900, 512, 2, 8) == 64 and adapted_batch_size(900, 512, 1, 0) == 512
    x = torch.rand(90, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model = timm.create_model("lenet5_fifth", num_classes=2)
    task = db3_timm.DB3DistillationTask(model)
    result = train(make_accelerator(tmp_path, cpu=True), task, model, TensorDictDataset(x, (x.mean((1, 2, 3)) > 0.5).long()),
                   TrainConfig(epochs=1, batch_size=512), output_dir=tmp_path, progress_bar=False)
    assert result.batch_size == 8 and result.global_steps == 11  # 90 rows: 11 full batches of 8, not 0 of 512
    assert "training with batch size 8 instead" in capsys.readouterr().out


def test_zero_shot_trains_on_the_registered_generator(monkeypatch, in_process, tmp_path, teacher):
    from db3_timm import _registry
    from db3_timm.generators import PseudoSamples

    calls = []

    class FakeZSDB3:  # the registered factory's interface: factory(oracle, **cfg).generate(spc, iterations, qpi, ...)
        num_classes = 10

        def __init__(self, oracle, **cfg):
            self.oracle, self.pool, self.cfg = oracle, cfg["start_pool"] + cfg["mixes"], cfg
            calls.append(cfg)

        def config(self):
            return {"generator": "fake", **self.cfg}

        def planned_queries(self, samples_per_class, iterations, queries_per_iteration):
            return samples_per_class * 10 + self.pool

        def generate(self, samples_per_class, iterations, queries_per_iteration, *, step, step_growth, out_dir, progress,
                     unit):
            calls.append((samples_per_class, iterations, queries_per_iteration, step))
            x = torch.rand(samples_per_class * 10 + self.pool, 1, 28, 28, generator=torch.Generator().manual_seed(0))
            with unit("zsdb3-00000"):  # a finished unit records nothing again
                y = self.oracle(x)
            n = samples_per_class * 10
            return PseudoSamples(x[:n], y[:n], torch.zeros(iterations, n), queries={"init": len(x), "iterations": 0},
                                 pool_images=x[n:], pool_labels=y[n:])

    monkeypatch.setitem(_registry._factories["generator"], "zsdb3", FakeZSDB3)
    out = tmp_path / "zs"
    assert _recipe("distill").main([
        "--config", DIGITS, "--teacher", f"local-dir:{teacher / 'model'}", "--output-dir", str(out), "--zero-shot",
        "--samples-per-class", "4", "--iterations", "2", "--generator-kwargs", '{"max_init_queries": 99}',
        "--references-per-class", "2", "--epochs", "1", "--batch-size", "8", "--test-limit", "40", "--no-progress",
        "--start", "smooth", "--start-pool", "15", "--mixes", "5"]) == 0
    assert {k: v for k, v in calls[0].items() if k != "input_shape"} == {
        "seed": 0, "start": "smooth", "start_pool": 15, "mixes": 5, "max_init_queries": 99}
    assert (4, 2, 500, 0.5) in calls
    r = _results(out)
    assert r["queries"]["zsdb3"] == 60 and r["queries"].get("sd_pseudo", 0) == 0  # sd asks nothing more
    # The fake generator's 60 answers and its 40 sd-labelled pseudo samples.
    assert r["transfer_rows"] == 60 + 40 and r["validation"] == "held-out transfer rows scored against the teacher's labels"
    assert r["training"]["batch_size"] == 8 and r["training"]["global_steps"] == 11  # 90 of 100 rows / 8


def test_config_file_values_are_defaults_and_flags_win(tmp_path):
    from db3_timm.cli.options import parse_with_config

    distill = _recipe("distill")
    args = parse_with_config(distill.build_parser(), ["--config", DIGITS, "--epochs", "7", "--teacher", "lenet5"],
                             section="distill")
    assert args.epochs == 7 and args.lr == 2e-3 and args.student == "lenet5_half" and args.data == "digits"
    assert args.temperature == 20 and args.labeler == "sd" and args.out == "runs/digits_lenet5/distill"
    teacher = parse_with_config(_recipe("train_teacher").build_parser(), ["--config", DIGITS], section="train_teacher")
    assert teacher.model == "lenet5" and teacher.epochs == 30
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: digits\ndistill:\n  studnet: lenet5_half\n")
    with pytest.raises(SystemExit):
        parse_with_config(distill.build_parser(), ["--config", str(bad)], section="distill")
    # db3 distill reads the same files.
    from db3_timm.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["distill"]
    cli = parse_with_config(sub, ["--config", DIGITS, "--epochs", "7", "--teacher", "lenet5"], section="distill")
    assert (cli.epochs, cli.student, cli.labeler, cli.out) == (7, "lenet5_half", "sd", "runs/digits_lenet5/distill")


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

    from db3_timm.data import fashion_mnist_dir, load_image_dataset

    path = str(CONFIGS / config)
    spec = yaml.safe_load(open(path))["data"]
    override = []
    if spec in _STANDINS:
        override = ["--data", _standin(tmp_path, _STANDINS[spec])]
    elif spec == "fashion-mnist" and not Path(fashion_mnist_dir()).is_dir():
        override = ["--data", _standin(tmp_path, "gray28")]
    elif spec == "digits":
        pytest.importorskip("sklearn")
    from db3_timm.cli.options import parse_with_config
    from db3_timm._preprocess import PixelTransform

    t = parse_with_config(_recipe("train_teacher").build_parser(), ["--config", path, *override], section="train_teacher")
    from db3_timm.cli.options import load_config

    # The distillation reads what the teacher recipe writes (that folder does not exist here: name a stand-in).
    assert load_config(path, "distill")["teacher"] == f"local-dir:{t.out}/model"
    d = parse_with_config(_recipe("distill").build_parser(), ["--config", path, "--teacher", t.model, *override],
                          section="distill")
    assert d.temperature == 20 and d.epochs >= 1 and t.epochs >= 1
    data = load_image_dataset(t.data, t.train_split, image_size=t.image_size, limit=4)
    expected_classes = {"flowers102_resnet34.yaml": 102}.get(config, 10)
    assert data.num_classes == expected_classes
    for name in (t.model, d.student):
        model = timm.create_model(name, num_classes=data.num_classes, in_chans=data.image_shape[0]).eval()
        cfg = resolve_model_data_config(model)
        if model.pretrained_cfg.get("fixed_input_size"):
            assert tuple(cfg["input_size"]) == data.image_shape, (name, data.image_shape)
        else:
            assert data.image_shape[1:] == tuple(cfg["input_size"][1:])  # 224 for the ImageNet ResNets
        with torch.no_grad():
            logits = model(PixelTransform.for_model(model, resize_to_model="fixed")(data.images[:2]))
        assert logits.shape == (2, data.num_classes)


def test_the_flowers_config_searches_the_top_5_classes_and_its_budget_is_the_stated_plan():
    import torch

    import db3_timm
    from db3_timm.cli.options import labeling_config, parse_with_config

    args = parse_with_config(_recipe("distill").build_parser(),
                             ["--config", str(CONFIGS / "flowers102_resnet34.yaml"), "--teacher", "resnet34"], section="distill")
    assert args.targets == 5 and args.queries_per_target == 100
    teacher = db3_timm.LabelOracle.from_callable(lambda x: torch.zeros(len(x), dtype=torch.long), num_classes=102,
                                                 input_size=(3, 224, 224))
    config = db3_timm.DistillConfig(plan=args.plan, labeling=labeling_config(args), val_fraction=args.val_fraction)
    plan = db3_timm.plan_queries(teacher, 7169, config, test_images=1020, budget=args.budget, seed=args.seed,
                                 with_labels=True)  # 10 % of the 7,169 held out for validation: 6,452 labelled
    assert plan.total == args.budget == 3_233_472  # the figure in the config's header and the README
    assert teacher.queries == 0
