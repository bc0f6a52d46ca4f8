import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import db3_timm
import timm
from db3_timm import LabelOracle, QueryBudgetExceeded


def _oracle(net, **kw):
    return LabelOracle.from_module(net, mean=(0.5,), std=(0.25,), input_size=(3, 4, 4), **kw)


def test_labels_are_argmax_of_normalised_input_int64_on_callers_device(affine_net):
    x = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    labels = _oracle(affine_net)(x)
    expected = affine_net((x - 0.5) / 0.25).argmax(1)
    assert labels.dtype == torch.int64 and labels.shape == (16,) and labels.device == x.device
    assert torch.equal(labels, expected)


def test_a_device_can_be_named_when_wrapping_a_module(affine_net):
    x = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    oracle = _oracle(affine_net, device="cpu")  # e.g. "cuda": the module moves there, the answers stay the same
    assert oracle.device == torch.device("cpu") and torch.equal(oracle(x), _oracle(affine_net)(x))


def test_inputs_are_clamped_to_pixel_box(affine_net):
    x = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 4 - 2
    oracle = _oracle(affine_net)
    assert torch.equal(oracle(x), oracle(x.clamp(0, 1)))


def test_exact_query_counts_over_chunked_calls(affine_net):
    seen, sizes = [], []
    oracle = LabelOracle.from_callable(
        lambda b: sizes.append(b.shape[0]) or affine_net(b).argmax(1),
        num_classes=4,
        max_batch_size=7,
        query_log=lambda n, total: seen.append((n, total)),
    )
    x = torch.rand(20, 3, 4, 4)
    whole = oracle(x)
    assert oracle.queries == 20
    assert sizes == [7, 7, 6] and seen == [(7, 7), (7, 14), (6, 20)]
    assert torch.equal(whole, affine_net(x).argmax(1))
    oracle(x[:3])
    assert oracle.queries == 23


def test_budget_refusal_spends_nothing(affine_net):
    calls = []
    oracle = LabelOracle.from_callable(lambda b: calls.append(1) or affine_net(b).argmax(1), budget=10)
    oracle(torch.rand(6, 3, 4, 4))
    with pytest.raises(QueryBudgetExceeded) as info:
        oracle(torch.rand(5, 3, 4, 4))
    assert info.value.remaining == 4 and info.value.requested == 5
    assert oracle.queries == 6 and len(calls) == 1 and oracle.remaining == 4
    oracle(torch.rand(4, 3, 4, 4))
    assert oracle.remaining == 0


def test_state_dict_round_trip_keeps_totals(affine_net):
    a = _oracle(affine_net, budget=100)
    a(torch.rand(30, 3, 4, 4))
    b = _oracle(affine_net)
    b.load_state_dict(a.state_dict())
    assert b.queries == 30 and b.budget == 100 and b.remaining == 70


@pytest.mark.parametrize(
    "bad, err, words",
    [
        ([[0.0]], TypeError, "torch.Tensor"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), TypeError, "floating-point"),
        (torch.zeros(3, 4, 4), ValueError, "(N, C, H, W)"),
        (torch.zeros(2, 1, 4, 4), ValueError, "expected 3"),
        (torch.zeros(0, 3, 4, 4), ValueError, "empty batch"),
        (torch.full((2, 3, 4, 4), float("nan")), ValueError, "NaN"),
        (torch.full((2, 3, 4, 4), float("inf")), ValueError, "NaN or inf"),
    ],
)
def test_bad_input_is_named(affine_net, bad, err, words):
    oracle = _oracle(affine_net)
    with pytest.raises(err, match=words.replace("(", r"\(").replace(")", r"\)")):
        oracle(bad)
    assert oracle.queries == 0


def test_callable_answers_are_validated():
    x = torch.rand(3, 1, 2, 2)
    with pytest.raises(ValueError, match="label 12, outside \\[0, 10\\)"):
        LabelOracle.from_callable(lambda b: torch.tensor([1, 12, 3]), num_classes=10)(x)
    with pytest.raises(TypeError, match="integer labels"):
        LabelOracle.from_callable(lambda b: torch.rand(3))(x)
    with pytest.raises(ValueError, match="shape"):
        LabelOracle.from_callable(lambda b: torch.zeros(3, 10, dtype=torch.long))(x)
    # numpy / list answers are accepted as labels
    assert LabelOracle.from_callable(lambda b: [0, 1, 2], num_classes=3)(x).tolist() == [0, 1, 2]


def test_preprocessing_matches_timm_data_config():
    model = timm.create_model("lenet5_half", num_classes=10).eval()
    cfg = timm.data.resolve_model_data_config(model)
    oracle = LabelOracle.from_timm_model(model)
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = model((x - mean) / std).argmax(1)
        # a differently sized input is resized to the model's input size first
        big = torch.nn.functional.interpolate(x, size=(56, 56), mode="bilinear", align_corners=False)
        resized = torch.nn.functional.interpolate(big, size=(28, 28), mode="bilinear", align_corners=False)
        expected_big = model((resized - mean) / std).argmax(1)
    assert oracle.input_size == tuple(cfg["input_size"]) and oracle.num_classes == 10
    assert torch.equal(oracle(x), expected)
    assert torch.equal(oracle(big), expected_big)


@pytest.fixture
def trained_like_lenet(perturbed_lenet_half):
    return perturbed_lenet_half


def test_from_timm_checkpoint_reproduces_labels(tmp_path, trained_like_lenet):
    from safetensors.torch import save_file

    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    expected = LabelOracle.from_timm_model(trained_like_lenet)(x)
    assert len(expected.unique()) > 1
    save_file(trained_like_lenet.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": trained_like_lenet.state_dict(), "epoch": 3}, tmp_path / "w.pth")
    for ckpt in ("w.safetensors", "w.pth"):
        oracle = LabelOracle.from_timm("lenet5_half", tmp_path / ckpt, num_classes=10)
        assert torch.equal(oracle(x), expected), ckpt


class _Arbitrary:
    pass


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path, trained_like_lenet):
    torch.save({"state_dict": trained_like_lenet.state_dict(), "obj": _Arbitrary()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        LabelOracle.from_timm("lenet5_half", tmp_path / "evil.pt", num_classes=10)
    with pytest.raises(FileNotFoundError):
        LabelOracle.from_timm("lenet5_half", tmp_path / "missing.pt", num_classes=10)


def test_local_dir_round_trip(tmp_path, trained_like_lenet):
    timm.models.save_for_hf(trained_like_lenet, tmp_path / "teacher", safe_serialization=True)
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    oracle = LabelOracle.from_timm(f"local-dir:{tmp_path / 'teacher'}")
    assert torch.equal(oracle(x), LabelOracle.from_timm_model(trained_like_lenet)(x))


def _lay_out_hf_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Places `folder` in a Hugging Face cache exactly as a download of `repo_id` would."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    shutil.copytree(folder, root / "snapshots" / sha)


def test_hf_hub_teacher_loads_offline_from_cache(tmp_path, trained_like_lenet):
    timm.models.save_for_hf(trained_like_lenet, tmp_path / "folder", safe_serialization=True)
    _lay_out_hf_cache(tmp_path / "cache", "db3-org/fmnist-lenet5-half", tmp_path / "folder")
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    torch.save(x, tmp_path / "x.pt")
    expected = LabelOracle.from_timm_model(trained_like_lenet)(x)
    script = textwrap.dedent(
        f"""
        import sys, torch
        from db3_timm import LabelOracle, HubUnavailableError
        x = torch.load({str(tmp_path / 'x.pt')!r})
        oracle = LabelOracle.from_hub('hf-hub:db3-org/fmnist-lenet5-half')
        torch.save(oracle(x), {str(tmp_path / 'y.pt')!r})
        try:
            LabelOracle.from_hub('hf-hub:db3-org/not-cached')
        except HubUnavailableError as err:
            print('UNAVAILABLE', err)
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "home"))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)
    assert "UNAVAILABLE" in run.stdout and "local-dir:PATH" in run.stdout and "not-cached" in run.stdout


# ---------------------------------------------------------------------- hostile inputs and concurrency
def test_the_budget_holds_under_concurrent_calls(affine_net):
    import threading

    oracle = LabelOracle.from_module(affine_net, input_size=(3, 4, 4), budget=100)
    refused = []

    def worker():
        for _ in range(10):
            try:
                oracle(torch.rand(5, 3, 4, 4))
            except QueryBudgetExceeded:
                refused.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert oracle.queries == 100 and len(refused) == 80 - 20  # exactly the budget, never more


def test_a_short_answer_is_counted_as_spent():
    oracle = LabelOracle.from_callable(lambda x: torch.zeros(len(x) - 1, dtype=torch.long), num_classes=3)
    with pytest.raises(ValueError, match=r"teacher returned labels of shape \(4,\), expected \(5,\)"):
        oracle(torch.rand(5, 1, 2, 2))
    assert oracle.queries == 5  # the batch was sent and paid for


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), True, -1, 2.5])
def test_nonsense_budgets_are_refused(affine_net, budget):
    with pytest.raises(ValueError, match="budget must be a non-negative integer or None"):
        LabelOracle.from_module(affine_net, input_size=(3, 4, 4), budget=budget)


def test_saved_accounting_is_checked_and_never_lifts_a_budget(affine_net):
    oracle = LabelOracle.from_module(affine_net, input_size=(3, 4, 4), budget=50)
    with pytest.raises(ValueError, match="queries must be an integer at least 0, got -3"):
        oracle.load_state_dict({"queries": -3, "budget": 50})
    oracle.load_state_dict({"queries": 7, "budget": None})
    assert oracle.queries == 7 and oracle.budget == 50


@pytest.mark.parametrize("x, words", [
    (torch.rand(2, 3, 0, 4), "empty dimension"),
    (torch.empty(2, 3, 4, 4, device="meta"), "meta tensor"),
])
def test_degenerate_images_are_named(affine_net, x, words):
    oracle = LabelOracle.from_module(affine_net, input_size=(3, 4, 4))
    with pytest.raises(ValueError, match=words):
        oracle(x)
    assert oracle.queries == 0


def test_reduced_precision_and_channels_last_are_another_teacher_identity_and_still_answer_labels():
    import timm

    model = timm.create_model("resnet10t", num_classes=7, in_chans=3)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = LabelOracle.from_timm_model(model)
    fast = LabelOracle.from_timm_model(model, precision="bf16", channels_last=True)
    labels = fast(x)
    assert labels.dtype == torch.int64 and labels.shape == (6,) and fast.queries == 6
    assert "at bf16" in fast.identity and plain.identity != fast.identity
    assert torch.equal(LabelOracle.from_timm_model(model, channels_last=True)(x), plain(x))
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, got 'int8'"):
        LabelOracle.from_timm_model(model, precision="int8")


def test_cpu_forwards_are_capped_unless_asked_otherwise():
    """On a CPU: 8 images of 3x224x224 per forward, 334 of 1x28x28 (activations stay under glibc's mmap ceiling,
    their buffers reused); an explicit size wins; the answers are those of one big forward."""
    from db3_timm._cpu_memory import keep_activation_buffers

    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    oracle = LabelOracle.from_module(net, input_size=(3, 224, 224))
    assert oracle.max_batch_size == 8
    x = torch.rand(20, 3, 224, 224)
    assert torch.equal(oracle(x), LabelOracle.from_module(net, input_size=(3, 224, 224), max_batch_size=20)(x))
    assert seen == [8, 8, 4, 20] and oracle.queries == 20
    assert LabelOracle.from_module(net, input_size=(3, 224, 224), max_batch_size=500).max_batch_size == 500
    assert keep_activation_buffers() == sys.platform.startswith("linux")  # glibc here
    assert LabelOracle.from_module(net, input_size=(1, 28, 28)).max_batch_size == 334
