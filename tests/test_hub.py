import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import db3_timm  # noqa: F401  (registers lenet5_half)
import timm
from db3_timm import HubUnavailableError
from db3_timm.hub import (
    PLACEHOLDER_REPO_ID,
    StudentCard,
    push_student,
    read_student_card,
    save_student,
    validate_repo_id,
)

REPO = "db3-org/fmnist-lenet5-half"
FILES = {"config.json", "model.safetensors", "README.md", "db3.json"}
SECRET = "hf_db3testsecrettoken0123456789"


@pytest.fixture
def student(perturbed_lenet_half):
    return perturbed_lenet_half


@pytest.fixture
def card():
    return StudentCard(
        teacher="hf-hub:db3-org/fmnist-lenet5",
        dataset="fashion-mnist",
        queries=123456,
        labeler="mbd",
        labeler_config={"queries_per_target": 10, "seed": 0},
        student_accuracy=0.8912,
        teacher_accuracy=0.9104,
        accuracy_kind="best-val",
        eval_split="validation",
    )


@pytest.fixture
def saved(tmp_path, student, card):
    return save_student(student, tmp_path / "student", card=card, data_config={"mean": (0.286,), "std": (0.353,)})


def _x(n=32):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def _run(args, env_extra, tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), **env_extra)
    env.pop("HF_TOKEN", None)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))


# ---------------------------------------------------------------- (1) save -> local-dir reload, card, config
def test_saved_student_reloads_from_local_dir_with_card_and_config(saved, student):
    assert {p.name for p in saved.iterdir()} == FILES
    reloaded = timm.create_model("local-dir:" + str(saved), pretrained=True).eval()
    x = _x()
    with torch.no_grad():
        assert torch.equal(reloaded(x), student(x))

    config = json.loads((saved / "config.json").read_text())
    assert config["architecture"] == "lenet5_half" and config["num_classes"] == 10
    assert config["pretrained_cfg"]["mean"] == [0.286] and config["pretrained_cfg"]["std"] == [0.353]
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    assert tuple(reloaded.pretrained_cfg["mean"]) == (0.286,) and tuple(reloaded.pretrained_cfg["std"]) == (0.353,)

    from huggingface_hub import ModelCard

    mc = ModelCard.load(saved / "README.md")
    assert mc.data.library_name == "timm" and mc.data.license == "apache-2.0"
    assert {"image-classification", "timm", "knowledge-distillation", "db3kd"} <= set(mc.data.tags)
    assert mc.data.datasets == ["fashion-mnist"]
    (result,) = mc.data.eval_results
    assert result.metric_type == "accuracy" and result.metric_value == pytest.approx(0.8912)
    assert result.dataset_split == "validation" and "best-val" in result.metric_name
    text = mc.text
    for needle in ("hf-hub:db3-org/fmnist-lenet5", "123,456", "89.12 %", "91.04 %", "best-val", "`mbd`",
                   "import db3_timm", f'timm.create_model("hf-hub:{PLACEHOLDER_REPO_ID}", pretrained=True)',
                   "LabelOracle", "db3 label --teacher"):
        assert needle in text, needle

    meta = json.loads((saved / "db3.json").read_text())
    assert meta["teacher"] == "hf-hub:db3-org/fmnist-lenet5" and meta["queries"] == 123456
    assert meta["architecture"] == "lenet5_half" and meta["accuracy_kind"] == "best-val"
    assert meta["labeler_config"] == {"queries_per_target": 10, "seed": 0} and meta["std"] == [0.353]
    assert read_student_card(saved).student_accuracy == pytest.approx(0.8912)


def test_card_dict_and_validation(tmp_path, student):
    out = save_student(student, tmp_path / "zs", card={
        "teacher": "resnet18", "dataset": "hf:org/synthetic", "queries": 7, "method": "zsdb3kd",
        "generator": "noise", "generator_config": {"steps": (1, 2)},
    })
    meta = json.loads((out / "db3.json").read_text())
    assert meta["method"] == "zsdb3kd" and meta["generator_config"] == {"steps": [1, 2]}
    assert meta["student_accuracy"] is None
    from huggingface_hub import ModelCard

    mc = ModelCard.load(out / "README.md")
    assert "zsdb3kd" in mc.data.tags and mc.data.datasets == ["org/synthetic"] and not mc.data.eval_results
    with pytest.raises(ValueError, match="fraction in \\[0, 1\\].*91.2"):
        StudentCard(teacher="t", dataset="d", queries=1, labeler="mbd", student_accuracy=91.2)
    with pytest.raises(ValueError, match="labeler is required"):
        StudentCard(teacher="t", dataset="d", queries=1)
    with pytest.raises(ValueError, match="accuracy_kind.*'best'"):
        StudentCard(teacher="t", dataset="d", queries=1, labeler="mbd", accuracy_kind="best")
    with pytest.raises(TypeError, match="unknown StudentCard field.*'teacher_id'"):
        save_student(student, tmp_path / "bad", card={"teacher_id": "t", "dataset": "d", "queries": 1})
    with pytest.raises(ValueError, match="card.architecture is 'resnet18'"):
        save_student(student, tmp_path / "bad", card=StudentCard(
            teacher="t", dataset="d", queries=1, labeler="mbd", architecture="resnet18"))
    with pytest.raises(TypeError, match="timm model"):
        save_student(torch.nn.Linear(2, 2), tmp_path / "bad", card={"teacher": "t", "dataset": "d", "queries": 1,
                                                                    "labeler": "mbd"})


# ---------------------------------------------------------------- (2) hf-hub: load from an offline HF cache
def test_hf_hub_load_from_offline_cache_reproduces_outputs(tmp_path, saved, student):
    sha = "0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "cache" / f"models--{REPO.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    shutil.copytree(saved, root / "snapshots" / sha)
    x = _x(64)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = student(x)
    # The oracle normalises pixels with the saved mean/std: compare with the same oracle on the local folder.
    expected_labels = db3_timm.LabelOracle.from_timm("local-dir:" + str(saved))(x)
    script = textwrap.dedent(
        f"""
        import torch, timm
        import db3_timm
        model = timm.create_model('hf-hub:{REPO}', pretrained=True).eval()
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})
        oracle = db3_timm.LabelOracle.from_hub('hf-hub:{REPO}')
        torch.save(oracle(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'labels.pt')!r})
        """
    )
    run = _run([sys.executable, "-c", script], {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")},
               tmp_path)
    assert run.returncode == 0, run.stderr
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)
    assert torch.equal(torch.load(tmp_path / "labels.pt"), expected_labels)


# ---------------------------------------------------------------- (3) upload at the HfApi boundary
class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records create_repo / upload_folder calls."""

    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        folder = Path(kwargs["folder_path"])
        # The files huggingface_hub itself would pick from the folder with these patterns.
        everything = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        kwargs["_uploaded"] = set(filter_repo_objects(everything, allow_patterns=kwargs["allow_patterns"]))
        kwargs["_readme"] = (folder / "README.md").read_text()
        self.calls.append(("upload_folder", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123"


def test_push_creates_repo_and_uploads_exactly_the_student_files(saved):
    (saved / ".ipynb_checkpoints").mkdir()
    (saved / ".ipynb_checkpoints" / "scratch.json").write_text("{}")
    (saved / ".DS_Store").write_text("x")
    api = RecordingApi()
    url = push_student(saved, REPO, token=SECRET, private=True, api=api)
    assert url == f"https://huggingface.co/{REPO}/commit/abc123"
    (n1, create), (n2, upload) = api.calls
    assert n1 == "create_repo" and n2 == "upload_folder"
    assert create == {"repo_id": REPO, "repo_type": "model", "exist_ok": True, "private": True, "token": SECRET}
    assert upload["repo_id"] == REPO and upload["repo_type"] == "model" and upload["token"] == SECRET
    assert Path(upload["folder_path"]) == saved
    assert upload["_uploaded"] == FILES and set(upload["allow_patterns"]) == FILES
    assert upload["commit_message"] == "Upload lenet5_half distilled (db3kd) from hf-hub:db3-org/fmnist-lenet5"
    # The usage snippet names the real repo now, in what was uploaded and in the local copy.
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in upload["_readme"]
    assert PLACEHOLDER_REPO_ID not in upload["_readme"]
    assert read_student_card(saved).repo_id == REPO

    api = RecordingApi()
    push_student(saved, REPO, commit_message="again", api=api)
    assert api.calls[1][1]["commit_message"] == "again" and api.calls[0][1]["private"] is False


def test_push_refuses_an_incomplete_folder_before_any_call(tmp_path, saved):
    (saved / "model.safetensors").unlink()
    api = RecordingApi()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        push_student(saved, REPO, api=api)
    with pytest.raises(FileNotFoundError, match="not found"):
        push_student(tmp_path / "nowhere", REPO, api=api)
    assert api.calls == []


def test_push_to_unreachable_hub_raises_with_local_path(saved, monkeypatch):
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with socket.socket() as s:  # a local port nothing listens on: connection refused, no network involved
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = HfApi(endpoint=f"http://127.0.0.1:{port}", token=SECRET)
    with pytest.raises(HubUnavailableError) as info:
        push_student(saved, REPO, api=api)
    msg = str(info.value)
    assert "unreachable" in msg and str(saved) in msg and f"db3 push {saved} --repo {REPO}" in msg
    assert SECRET not in msg


# ---------------------------------------------------------------- (4) offline with a real HfApi
def test_push_offline_with_real_hfapi_raises_hub_unavailable(tmp_path, saved):
    script = textwrap.dedent(
        f"""
        from db3_timm.hub import push_student
        from db3_timm import HubUnavailableError
        try:
            url = push_student({str(saved)!r}, {REPO!r}, token={SECRET!r})
        except HubUnavailableError as err:
            print("UNAVAILABLE", err)
        else:
            print("PUSHED", url)
        """
    )
    run = _run([sys.executable, "-c", script], {"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("UNAVAILABLE"), run.stdout
    assert "offline" in run.stdout and str(saved) in run.stdout and f"db3 push {saved} --repo {REPO}" in run.stdout
    assert SECRET not in run.stdout + run.stderr


# ---------------------------------------------------------------- (5) bad repo ids
@pytest.mark.parametrize(
    "bad", ["fmnist-lenet5", "a/b/c", "/name", "org/", "-org/name", "org/name-", "org/na--me", "org/na..me",
            "org/na me", "org/name.git", "org/" + "x" * 97, "", None]
)
def test_bad_repo_id_is_a_value_error_naming_it(saved, bad):
    api = RecordingApi()
    with pytest.raises(ValueError, match="invalid Hub repo id") as info:
        push_student(saved, bad, api=api)
    assert repr(bad) in str(info.value)
    assert api.calls == []


def test_good_repo_ids_pass():
    for good in (REPO, "User_1/model.v2", "a/b"):
        assert validate_repo_id(good) == good


# ---------------------------------------------------------------- (7) Hub errors become one clear line
def _http_error(status, message=None):
    """A huggingface_hub HfHubHTTPError as the Hub raises it, with a multi-line message."""
    from types import SimpleNamespace

    from huggingface_hub.errors import HfHubHTTPError

    response = SimpleNamespace(status_code=status, headers={}, request=None)
    message = message or (f"Client error '{status}' for url 'https://huggingface.co/api/repos/create'\n"
                          f"For more information check: https://developer.mozilla.org/\n\nserver says no")
    return HfHubHTTPError(message, response=response)


class FailingApi(RecordingApi):
    """A RecordingApi whose ``method`` ("create_repo" or "upload_folder") raises ``error``."""

    def __init__(self, method, error):
        super().__init__()
        self.method, self.error = method, error

    def create_repo(self, **kwargs):
        if self.method == "create_repo":
            raise self.error
        return super().create_repo(**kwargs)

    def upload_folder(self, **kwargs):
        if self.method == "upload_folder":
            self.calls.append(("upload_folder", {"_readme": (Path(kwargs["folder_path"]) / "README.md").read_text()}))
            raise self.error
        return super().upload_folder(**kwargs)


def _assert_one_line_retry_message(msg, saved, status=None):
    assert "\n" not in msg, msg
    assert repr(REPO) in msg and str(saved) in msg and f"db3 push {saved} --repo {REPO}" in msg
    if status is not None:
        assert f"HTTP {status}" in msg
    assert SECRET not in msg


@pytest.mark.parametrize("method", ["create_repo", "upload_folder"])
@pytest.mark.parametrize("status", [400, 404])
def test_push_http_400_404_raises_hub_unavailable_in_one_line(saved, method, status):
    api = FailingApi(method, _http_error(status))
    with pytest.raises(HubUnavailableError) as info:
        push_student(saved, REPO, token=SECRET, api=api)
    _assert_one_line_retry_message(str(info.value), saved, status)


@pytest.mark.parametrize("method", ["create_repo", "upload_folder"])
def test_push_non_json_answer_raises_hub_unavailable_in_one_line(saved, method):
    # A proxy or captive portal answering 200 with HTML: huggingface_hub's response.json() fails.
    error = json.JSONDecodeError("Expecting value", "<html>\n<body>login</body>\n</html>", 0)
    with pytest.raises(HubUnavailableError) as info:
        push_student(saved, REPO, token=SECRET, api=FailingApi(method, error))
    msg = str(info.value)
    _assert_one_line_retry_message(msg, saved)
    assert "not JSON" in msg and "JSONDecodeError" in msg

    with pytest.raises(HubUnavailableError) as info:
        push_student(saved, REPO, token=SECRET, api=FailingApi(method, ValueError("bad answer\nfrom the Hub")))
    _assert_one_line_retry_message(str(info.value), saved)
    assert "ValueError: bad answer from the Hub" in str(info.value)


# ---------------------------------------------------------------- (8) a failed push leaves no repo id behind
@pytest.mark.parametrize("error", [_http_error(500), ConnectionError("refused"), _http_error(404)],
                         ids=["http500", "unreachable", "http404"])
def test_failed_push_then_push_elsewhere_names_the_new_repo(saved, error, recwarn):
    first, second = "db3-org/first-try", "db3-org/second-try"
    readme_before = (saved / "README.md").read_text()
    failing = FailingApi("upload_folder", error)
    with pytest.raises(HubUnavailableError):
        push_student(saved, first, api=failing)
    # What the failed push tried to upload named `first`; the local copy is back to the placeholder.
    assert f'"hf-hub:{first}"' in failing.calls[-1][1]["_readme"]
    assert (saved / "README.md").read_text() == readme_before
    assert read_student_card(saved).repo_id is None

    api = RecordingApi()
    push_student(saved, second, api=api)
    uploaded = api.calls[1][1]["_readme"]
    assert f'timm.create_model("hf-hub:{second}", pretrained=True)' in uploaded
    assert first not in uploaded and PLACEHOLDER_REPO_ID not in uploaded
    assert read_student_card(saved).repo_id == second
    assert first not in (saved / "README.md").read_text()
    assert not [w for w in recwarn if "names repo" in str(w.message)]


# ---------------------------------------------------------------- (9) provenance without local paths
def test_card_publishes_no_local_path_and_counts_every_query(tmp_path, student):
    secret = tmp_path / "secret-project" / "teacher"
    card = StudentCard(teacher=f"local-dir:{secret}", dataset=f"idx:{tmp_path / 'private-data'}", queries=27_274,
                       query_breakdown={"generation": 12_874, "labelling": 14_000, "evaluation": 400},
                       transfer_rows=572, hyperparameters={"epochs": 3, "batch_size": 64},
                       teacher_fingerprint="sha256:abc", labeler="mbd")
    folder = save_student(student, tmp_path / "out", card=card)
    text = (folder / "README.md").read_text() + (folder / "db3.json").read_text()
    assert str(tmp_path) not in text and "local-dir:teacher" in text and "idx:private-data" in text
    assert "27,274 (generation 12,874, labelling 14,000, evaluation 400)" in text and "572 rows" in text
    assert "## Limitations" in text and "epochs=3" in text and "sha256:abc" in text
    with pytest.raises(ValueError, match="adds up to 27274, not queries=1"):
        StudentCard(teacher="t", dataset="d", queries=1, query_breakdown=card.query_breakdown, labeler="sd")
    hub = save_student(student, tmp_path / "hub", card={**card.to_dict(), "teacher": "hf-hub:org/teacher"})
    assert "base_model: org/teacher" in (hub / "README.md").read_text()
