"""The `db3` command line, every subcommand: what a user types, what they read back, and the one-line errors."""
import json
import re
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from db3_timm import LabelOracle
from db3_timm.cli import main as cli_main
from db3_timm.remote import RemoteOracleError
from db3_timm.transfer.label import load_labeled_dataset, read_manifest

from test_hub import REPO, SECRET, FailingApi, _http_error, _run, card, saved, student  # noqa: F401  (fixtures)
from test_serve import NAME, TOKEN, _images, model  # noqa: F401  (fixtures)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------- every command
@pytest.mark.parametrize("command", ["distill", "label", "generate", "push", "serve", "list", "demo"])
def test_help_shows_the_defaults(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "(default:" in text and "usage: db3 " + command in text


# ---------------------------------------------------------------------- db3 distill
def _digits_teacher(tmp_path):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn")
    from db3_timm import fit, load_image_dataset

    train = load_image_dataset("digits", "train", image_size=28, limit=400)
    torch.manual_seed(0)
    teacher = timm.create_model("lenet5", num_classes=10)
    fit(teacher, train.images, train.labels, epochs=3, lr=3e-3)
    timm.models.save_for_hf(teacher, tmp_path / "teacher", safe_serialization=True)
    return f"local-dir:{tmp_path / 'teacher'}"


def test_db3_distill_plans_trains_writes_a_pushable_student(tmp_path, capsys):
    teacher = _digits_teacher(tmp_path)
    base = ["distill", "--teacher", teacher, "--data", "digits", "--student", "lenet5_fifth", "--limit", "100",
            "--epochs", "2", "--test-limit", "50", "--no-progress", "--out", str(tmp_path / "run")]
    # A dry run prints the plan and a measured estimate, spends only the probe, and writes nothing.
    paper = ["--plan", "paper", "--labeler", "mbd", "--queries-per-target", "5"]
    assert cli_main(base + paper + ["--dry-run"]) == 0
    text = capsys.readouterr().out
    total = 90 + 90 * 9 * 5 + 50  # labels of the 90 training images, 5 per image and other class, the test split
    assert re.search(rf"total +{total:,} +\(no budget set\)", text), text
    assert "estimated teacher time" in text and "dry run" in text and not (tmp_path / "run").exists()
    # A budget below the plan is refused before any query, naming what it needs.
    with pytest.raises(SystemExit) as exc:
        cli_main(base + paper + ["--budget", "1000"])
    assert exc.value.code == 2 and f"needs up to {total:,} teacher queries but the budget is 1,000" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(base + ["--budget", "100"])  # the default plan: 50 go to scoring the teacher, 50 < one per image
    assert exc.value.code == 2 and "plan 'default' needs at least 90 teacher queries" in capsys.readouterr().err
    assert not (tmp_path / "run" / "transfer").exists()
    assert cli_main(base + ["--budget", "3000"]) == 0
    text = capsys.readouterr().out
    assert "plan 'default'" in text and "student test accuracy" in text
    assert f"db3 push {tmp_path / 'run' / 'model'} --repo ORG/NAME" in text
    card = json.loads((tmp_path / "run" / "model" / "db3.json").read_text())
    assert card["queries"] <= 3000 and card["plan"] == "default" and card["method"] == "label-kd"
    assert set(card["query_breakdown"]) == {"hard", "augment", "mixes", "evaluation"}
    assert card["teacher"] == "local-dir:teacher" and str(tmp_path) not in json.dumps(card)
    assert cli_main(["push", str(tmp_path / "run" / "model"), "--repo", REPO]) == 1  # offline: one line, exit 1
    assert "offline" in capsys.readouterr().err


# ---------------------------------------------------------------------- db3 label
@pytest.fixture
def local_teacher(tmp_path):
    import timm

    torch.manual_seed(0)
    folder = tmp_path / "teacher"
    timm.models.save_for_hf(timm.create_model("lenet5_fifth"), str(folder))
    return folder


def test_cli_label_end_to_end(tmp_path, local_teacher, capsys):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn")
    from db3_timm.cli import main

    out = tmp_path / "labels"
    argv = ["label", "--teacher", f"local-dir:{local_teacher}", "--data", "digits", "--limit", "40", "--labeler", "sd",
            "--references-per-class", "2", "--shard-size", "16", "--seed", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "labelled 40 images with 'sd'" in text and "queries: 60 total = 20 reference check + 40 images; 1.5 per image" in text
    assert "wall time" in text
    ds = load_labeled_dataset(out)
    # The output opens with the standard tools, class names and exact pixels included.
    import datasets

    from db3_timm.data import load_image_dataset

    std = datasets.load_from_disk(str(out))["train"]
    assert std.features["label"].names == [str(i) for i in range(10)] and len(std) == 40
    via_hub_loader = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert via_hub_loader["label"] == std["label"]
    again = load_image_dataset(f"hf:{out}", "train")
    assert torch.equal(again.images, ds.with_format("torch")[:]["image"]) and again.class_names == std.features["label"].names
    assert len(ds) == 40 and tuple(ds.features["image"].shape) == (1, 28, 28)  # resized to the teacher's input
    m = read_manifest(out)
    assert m["complete"] and m["config"]["labeler"]["labeler"] == "sd" and m["config"]["seed"] == 1
    assert m["teacher"].startswith("local-dir:")

    assert main(argv) == 0  # a second run finds everything finished and spends nothing
    assert "queries: 60 total" in capsys.readouterr().out


def test_cli_prior_guides_mbd(tmp_path, local_teacher, capsys):
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn")
    from db3_timm.cli import main

    argv = ["label", "--teacher", f"local-dir:{local_teacher}", "--data", "digits", "--limit", "12", "--labeler", "mbd",
            "--queries-per-target", "60", "--references-per-class", "3", "--no-progress"]
    assert main(argv + ["--labeler-kwargs", '{"momentum": 0.5, "probes": 40}', "--out", str(tmp_path / "plain")]) == 0
    labeler_cfg = read_manifest(tmp_path / "plain")["config"]["labeler"]
    assert labeler_cfg["momentum"] == 0.5 and labeler_cfg["probes"] == 40 and labeler_cfg["queries_per_target"] == 60
    # The teacher's own weights as the white-box surrogate: a perfect prior.
    assert main(argv + ["--prior", f"local-dir:{local_teacher}", "--out", str(tmp_path / "prior")]) == 0
    plain, guided = (load_labeled_dataset(tmp_path / d).with_format("torch")[:] for d in ("plain", "prior"))
    assert read_manifest(tmp_path / "prior")["config"]["labeler"]["prior"]["model"] == "LeNet5"
    assert torch.equal(plain["label"], guided["label"]) and (guided["queries"] <= 1 + 9 * 60).all()
    d_plain, d_guided = plain["distances"], guided["distances"]
    found = torch.isfinite(d_plain) & torch.isfinite(d_guided) & (d_plain > 0)
    assert (d_guided[found] / d_plain[found]).median() < 0.8


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shard-size", "0"], "argument --shard-size: must be at least 1, got '0'"),
        (["--limit", "ten"], "argument --limit: must be an integer, got 'ten'"),
        (["--labeler", "nope"], "argument --labeler: unknown labeler 'nope'"),
        (["--budget", "-1"], "argument --budget: must be at least 0, got '-1'"),
        (["--data", "no-such-data"], "argument --data: cannot load 'no-such-data'"),
        (["--queries-per-target", "5"], "argument --labeler: cannot build 'sd'"),
        (["--prior", "nope"], "argument --prior: unknown timm model 'nope'"),
        (["--prior", "lenet5_fifth"], "argument --labeler: cannot build 'sd' with {'seed': 0, 'prior': 'lenet5_fifth'}"),
        (["--labeler-kwargs", "{momentum: 1}"], "argument --labeler-kwargs: must be a JSON object, got '{momentum: 1}'"),
        (["--labeler-kwargs", "[1]"], "argument --labeler-kwargs: must be a JSON object such as"),
        (["--labeler-kwargs", '{"momentun": 0}'], "argument --labeler: cannot build 'sd' with {'seed': 0, 'momentun': 0}"),
    ],
)
def test_cli_bad_values_are_argparse_errors(tmp_path, local_teacher, capsys, extra, message):
    from db3_timm.cli import main

    argv = ["label", "--teacher", f"local-dir:{local_teacher}", "--data", "digits", "--labeler", "sd",
            "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        main(argv + extra)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_under_torchrun_without_cpu_flag_names_the_fix(tmp_path, local_teacher):
    # The real mistake: two processes on a CPU-only box without ACCELERATE_USE_CPU; accelerate then sets up
    # DistributedType.NO in each, and both would label everything.

    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "db3_timm.cli", "label", "--teacher", f"local-dir:{local_teacher}", "--data", "digits",
           "--limit", "8", "--labeler", "sd", "--no-progress", "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "o").exists()  # refused before any query or file


def test_cli_missing_teacher_folder(tmp_path, capsys):
    from db3_timm.cli import main

    with pytest.raises(SystemExit):
        main(["label", "--teacher", f"local-dir:{tmp_path / 'missing'}", "--data", "digits", "--out", str(tmp_path)])
    assert "teacher folder not found" in capsys.readouterr().err


# ---------------------------------------------------------------------- db3 generate
def test_db3_generate_cli_writes_figures_and_transfer_set(tmp_path):

    import timm

    torch.manual_seed(0)
    teacher = timm.create_model("lenet5_fifth", num_classes=3, img_size=16)
    timm.models.save_for_hf(teacher, tmp_path / "teacher", safe_serialization=True)
    out = tmp_path / "zs"
    cmd = [sys.executable, "-m", "db3_timm.cli", "generate", "--teacher", f"local-dir:{tmp_path / 'teacher'}",
           "--samples-per-class", "2", "--iterations", "2", "--max-init-queries", "4096", "--queries-per-iteration", "30", "--labeler", "sd",
           "--start-pool", "50", "--mixes", "10", "--no-progress", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert "transfer set of" in run.stdout and (out / "robustness.png").exists() and (out / "grids" / "all-classes.png").exists()
    assert summary["queries"]["total"] == sum(v for k, v in summary["queries"].items() if k != "total")
    by_source = summary["rows_by_source"]
    # Every answer of the generation is a row (the start search, probes, mixes); the pseudo samples get sd labels.
    assert by_source["zsdb3"] == summary["queries"]["zsdb3"] and summary["rows"] == sum(by_source.values())
    import datasets

    merged = datasets.load_from_disk(str(out))["train"]  # the output folder is the transfer set
    assert len(merged) == summary["rows"] and sorted(set(merged["source"])) == ["sd_pseudo", "zsdb3"]
    # A finished run read back reports the same totals (nothing is asked, nothing is overwritten with less).
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and json.loads((out / "summary.json").read_text())["queries"] == summary["queries"]
    bad = subprocess.run(cmd[:-2] + ["--input-shape", "1,8", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "expected C,H,W" in bad.stderr
    # A labeler option it does not take is reported before the generation spends anything.
    bad = subprocess.run(cmd[:-2] + ["--labeler-kwargs", '{"probes": 40}', "--out", str(tmp_path / "zs2")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "argument --labeler: cannot build 'sd' with {'seed': 0, 'probes': 40}" in bad.stderr
    assert not (tmp_path / "zs2").exists()


# ---------------------------------------------------------------------- db3 push
def test_cli_push_offline_exits_nonzero_with_message(tmp_path, saved):
    env = {"HF_HUB_OFFLINE": "1", "DB3_TEST_TOKEN": SECRET}
    run = _run([sys.executable, "-m", "db3_timm.cli", "push", str(saved), "--repo", REPO, "--private",
                "--token-env", "DB3_TEST_TOKEN"], env, tmp_path)
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "db3 push:" in run.stderr and "offline" in run.stderr and str(saved) in run.stderr
    assert f"db3 push {saved} --repo {REPO} --private" in run.stderr
    assert SECRET not in run.stdout + run.stderr


def test_cli_push_argument_errors(tmp_path, saved, capsys, monkeypatch):
    with pytest.raises(SystemExit) as info:
        cli_main(["push", str(saved), "--repo", "not-a-repo-id"])
    assert info.value.code == 2 and "invalid Hub repo id 'not-a-repo-id'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli_main(["push", str(tmp_path / "nowhere"), "--repo", REPO])
    assert info.value.code == 2 and "folder not found" in capsys.readouterr().err
    monkeypatch.delenv("DB3_UNSET_TOKEN_VAR", raising=False)
    with pytest.raises(SystemExit) as info:
        cli_main(["push", str(saved), "--repo", REPO, "--token-env", "DB3_UNSET_TOKEN_VAR"])
    assert info.value.code == 2 and "'DB3_UNSET_TOKEN_VAR' is not set" in capsys.readouterr().err


def test_cli_push_http_404_prints_one_line_and_exits_1(saved, capsys, monkeypatch):
    import huggingface_hub

    import db3_timm.hub as hub

    class FakeHfApi(FailingApi):
        def __init__(self, token=None):
            super().__init__("create_repo", _http_error(404))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(hub, "_env_offline", lambda: False)
    assert cli_main(["push", str(saved), "--repo", REPO]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("db3 push:") and "\n" not in err and "Traceback" not in captured.err
    assert "HTTP 404" in err and f"db3 push {saved} --repo {REPO}" in err



# ---------------------------------------------------------------------- `db3 serve`
def test_cli_serve_subprocess(tmp_path, model):

    folder = tmp_path / "teacher"
    timm.models.save_for_hf(model, str(folder))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MY_TOKEN=TOKEN, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "db3_timm.cli", "serve", "--model", f"local-dir:{folder}", "--name", NAME,
         "--port", str(port), "--token-env", "MY_TOKEN", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    try:
        oracle = None
        deadline = time.monotonic() + 60
        while oracle is None:
            try:
                oracle = LabelOracle.from_url(f"http://127.0.0.1:{port}", NAME, token=TOKEN, retries=0)
            except RemoteOracleError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        x = _images(10)
        assert torch.equal(oracle(x), LabelOracle.from_timm_model(model)(x))
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "/v2/models/lenet5_fifth/infer" in out and "MY_TOKEN" in out and TOKEN not in out


# ---------------------------------------------------------------------- bad input: one line, before any query
def test_bad_outputs_ports_and_weights_are_one_line_errors(tmp_path, local_teacher, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["label", "--teacher", f"local-dir:{local_teacher}", "--data", "digits", "--labeler", "sd"]
    for argv, words in ((base + ["--out", str(afile)], f"argument --out/--output-dir: '{afile}' is a file"),
                        (["serve", "--model", "lenet5", "--port", "99999"], "must be a port number in [0, 65535]")):
        with pytest.raises(SystemExit) as exc:
            cli_main(argv)
        assert exc.value.code == 2 and words in capsys.readouterr().err
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # truncated
    with pytest.raises(SystemExit) as exc:
        cli_main(["label", "--teacher", "lenet5_fifth", "--teacher-checkpoint", str(weights), "--data", "digits",
                  "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --teacher: cannot load 'lenet5_fifth'" in err and "w.safetensors" in err


def test_another_generation_into_the_same_folder_is_refused_before_any_query(tmp_path, local_teacher, capsys):
    argv = ["generate", "--teacher", f"local-dir:{local_teacher}", "--samples-per-class", "1", "--iterations", "1",
            "--queries-per-iteration", "20", "--labeler", "sd", "--max-init-queries", "3000", "--no-progress",
            "--out", str(tmp_path / "zs")]
    assert cli_main(argv) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main(argv + ["--iterations", "2"])  # the later flag wins
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "holds a job with other settings" in err and "Traceback" not in err
    from db3_timm._io import run_lock

    with run_lock(tmp_path / "zs", "transfer-set job"):  # a second copy of the same command, started by mistake
        assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"db3 generate: another transfer-set job (pid {os.getpid()}: ") and len(err.splitlines()) == 1


@pytest.mark.slow
def test_sigterm_mid_labelling_keeps_an_honest_manifest(tmp_path, local_teacher):
    import signal

    out = tmp_path / "labels"
    cmd = [sys.executable, "-m", "db3_timm.cli", "label", "--teacher", f"local-dir:{local_teacher}", "--data", "digits",
           "--labeler", "mbd", "--queries-per-target", "400", "--references-per-class", "2", "--shard-size", "8",
           "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list((out / "shards").glob("shard-*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the next shard (8 images x 9 targets x 400 queries) is then under way, even on a loaded machine
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    manifest = read_manifest(out)
    assert manifest["queries"]["aborted"] > 0  # the interrupted shard's spending is on the record
    assert manifest["queries"]["total"] == (manifest["queries"]["reference_check"] + manifest["queries"]["shards"]
                                            + manifest["queries"]["aborted"])


def test_db3_label_states_its_cost_first_and_refuses_a_plan_over_budget(tmp_path, local_teacher, capsys):
    argv = ["label", "--teacher", f"local-dir:{local_teacher}", "--data", "digits", "--limit", "20", "--labeler", "mbd",
            "--queries-per-target", "10", "--references-per-class", "1", "--no-progress", "--out", str(tmp_path / "o")]
    assert cli_main(argv + ["--dry-run"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"total +1,830 ", text) and "estimated teacher time" in text  # 10 refs + 20 labels + 20*9*10
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exc:
        cli_main(argv + ["--budget", "1000"])
    assert exc.value.code == 2 and "can spend up to 1,830 queries; the budget is 1,000" in capsys.readouterr().err


def test_db3_label_targets_k_states_the_smaller_cost_and_refuses_a_bad_k_before_any_query(tmp_path, local_teacher, capsys):
    argv = ["label", "--teacher", f"local-dir:{local_teacher}", "--data", "digits", "--limit", "20", "--labeler", "mbd",
            "--queries-per-target", "10", "--references-per-class", "1", "--no-progress", "--out", str(tmp_path / "o")]
    assert cli_main(argv + ["--targets", "2", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"total +430 ", text) and "the 2 of 9 other classes" in text  # 10 refs + 20 labels + 20*2*10
    for bad, message in [("0", "targets=0 but a 10-class teacher has 9 other classes"),
                         ("top3", "argument --targets: expected 'all', 'auto' or a number of classes, got 'top3'")]:
        with pytest.raises(SystemExit) as exc:
            cli_main(argv + ["--targets", bad])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_db3_distill_zero_shot_noise_with_offspring_states_both_steps_first(tmp_path, local_teacher, capsys):
    argv = ["distill", "--teacher", f"local-dir:{local_teacher}", "--student", "lenet5_fifth", "--zero-shot",
            "--plan", "noise", "--offspring-share", "0.5", "--budget", "2000", "--no-progress", "--out",
            str(tmp_path / "o"), "--dry-run"]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert re.search(r"noise +1,000 ", text) and re.search(r"offspring +1,000 ", text)
    assert not (tmp_path / "o").exists()
    assert cli_main(argv + ["--noise-prior", "stretched"]) == 0
    assert "teacher-labelled stretched noise, the first parents" in capsys.readouterr().out


def test_db3_distill_zero_shot_default_plan_follows_the_budget(tmp_path, local_teacher, capsys):
    argv = ["distill", "--teacher", f"local-dir:{local_teacher}", "--student", "lenet5_fifth", "--zero-shot",
            "--no-progress", "--out", str(tmp_path / "o"), "--dry-run", "--budget"]
    assert cli_main(argv + ["50000"]) == 0
    assert re.search(r"noise +50,000 .*teacher-labelled stretched noise", capsys.readouterr().out)
    assert cli_main(argv + ["49999"]) == 0
    assert re.search(r"synth +49,\d{3} ", capsys.readouterr().out)
    assert not (tmp_path / "o").exists()


def test_db3_distill_zero_shot_trains_with_the_zero_shot_recipe_unless_told_otherwise(tmp_path):
    import argparse

    from db3_timm import DistillConfig, TrainConfig, distill_student
    from db3_timm.cli import options as opt

    p = argparse.ArgumentParser()
    opt.add_distill(p)

    def training(*extra):
        args = p.parse_args(["--teacher", "lenet5", "--student", "lenet5_fifth", "--out", "o", *extra])
        cfg = opt.train_config(args, opt.grows_without_images(args))
        assert args.val_fraction is None or extra[-1] == "0.3"  # left to the run: 0 zero-shot, 0.1 with images
        return cfg.epochs, cfg.lr, cfg.max_samples, cfg.batch_size

    assert training("--zero-shot") == (60, 2e-3, 1_500_000, 128)
    assert training("--zero-shot", "--epochs", "3", "--batch-size", "64") == (3, 2e-3, 1_500_000, 64)
    assert training("--data", "digits") == (10, 1e-3, None, 128)
    assert training("--data", "digits", "--val-fraction", "0.3") == (10, 1e-3, None, 128)
    # A transfer set grown without images is a zero-shot one; a folder that cannot be opened is left to the run.
    torch.manual_seed(0)
    oracle = LabelOracle.from_timm_model(timm.create_model("lenet5_fifth", num_classes=10))
    distill_student(oracle, "lenet5_fifth", None, 40, tmp_path / "zs", progress=False,
                    config=DistillConfig(plan="noise", train=TrainConfig(epochs=1), evaluate_teacher=False))
    assert training("--transfer-dir", str(tmp_path / "zs" / "transfer")) == (60, 2e-3, 1_500_000, 128)
    assert training("--transfer-dir", str(tmp_path / "missing")) == (10, 1e-3, None, 128)
