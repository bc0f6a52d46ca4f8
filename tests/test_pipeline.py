"""The front door, in process: budgets refused before spending, resumption to the same student, zero-shot."""
import json

import pytest
import torch

from db3_timm import (BudgetTooSmallError, DistillConfig, LabelingConfig, LabelOracle, TrainConfig, ZeroShotConfig,
                      distill_student, plan_queries)


@pytest.fixture
def one_thread(one_thread):  # conftest's one thread, and a fresh Accelerate state after each test
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _setup(perturbed_lenet_half, n=60):
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 28, 28, generator=g)
    test = torch.rand(20, 1, 28, 28, generator=g)
    return oracle, images, (test, oracle(test).clone())


def _config(labeler="mbd", plan="paper", **train):
    options = {"queries_per_target": 8} if labeler != "sd" else {}
    return DistillConfig(plan=plan, labeling=LabelingConfig(labeler, options, references_per_class=2, shard_size=16),
                         train=TrainConfig(**{"epochs": 2, "batch_size": 8, **train}), evaluate_teacher=False)


def test_a_budget_below_the_plan_is_refused_before_any_query(perturbed_lenet_half, tmp_path, one_thread):
    oracle, images, test = _setup(perturbed_lenet_half)
    spent = oracle.queries
    plan = plan_queries(oracle, len(images), _config())
    assert plan.total == 60 + 60 * 9 * 8  # labels, then 8 queries per image and other class
    with pytest.raises(BudgetTooSmallError, match=f"needs up to {plan.total:,} teacher queries but the budget is 1,000"):
        distill_student(oracle, "lenet5_fifth", images, 1000, tmp_path / "run", config=_config())
    # A budget-driven plan refuses what cannot even pay for one query per image.
    with pytest.raises(BudgetTooSmallError, match="plan 'default' needs at least 60 teacher queries"):
        distill_student(oracle, "lenet5_fifth", images, 50, tmp_path / "run", config=_config(plan="default"))
    # One query per image buys the labels: the default plan is then the hard-label plan.
    assert [s.source for s in plan_queries(oracle, len(images), _config(plan="default"), budget=60).steps] == ["hard"]
    assert oracle.queries == spent and not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="images have 3 channel"):
        distill_student(oracle, "lenet5_fifth", torch.rand(4, 3, 28, 28), None, tmp_path / "run", config=_config())
    assert oracle.queries == spent


def test_the_front_door_gives_a_trained_student_within_budget(perturbed_lenet_half, tmp_path, one_thread):
    oracle, images, test = _setup(perturbed_lenet_half)
    plan = plan_queries(oracle, len(images), _config())
    before = oracle.queries
    result = distill_student(oracle, "lenet5_fifth", images, plan.total, tmp_path / "run", test=test,
                             config=_config(), progress=False)
    assert not result.model.training and result.model.pretrained_cfg["architecture"] == "lenet5_fifth"
    assert result.queries["total"] == oracle.queries - before <= plan.total
    assert 0.0 <= result.test_accuracy <= 1.0 and result.teacher_accuracy is None
    card = json.loads((tmp_path / "run" / "model" / "db3.json").read_text())
    assert card["queries"] == result.queries["total"] and card["transfer_rows"] == result.queries["total"] + 60
    # Every answer is a row: 60 label queries, every probe, plus the 60 soft-labelled images.
    assert result.queries["hard"] == 60 and result.queries["total"] == 60 + result.queries["mbd"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["accuracy_kind"] == "val-selected"


def test_a_killed_run_resumes_to_the_same_student(perturbed_lenet_half, tmp_path, one_thread):
    oracle, images, test = _setup(perturbed_lenet_half)
    straight = distill_student(oracle, "lenet5_fifth", images, None, tmp_path / "straight", config=_config(), progress=False)

    class Killed(KeyboardInterrupt):
        pass

    killer = LabelOracle.from_timm_model(perturbed_lenet_half)

    def die(batch, total):
        if total > 300:  # in the middle of labelling
            raise Killed

    killer.query_log = die
    with pytest.raises(Killed):
        distill_student(killer, "lenet5_fifth", images, None, tmp_path / "killed", config=_config(), progress=False)
    again = distill_student(LabelOracle.from_timm_model(perturbed_lenet_half), "lenet5_fifth", images, None,
                            tmp_path / "killed", config=_config(), progress=False)
    from db3_timm._io import module_fingerprint

    assert module_fingerprint(again.model) == module_fingerprint(straight.model)
    assert again.training.history == straight.training.history
    # What the killed shard had spent is counted too: the resumed student cost at least as much.
    assert again.queries["total"] >= straight.queries["total"]


def test_zero_shot_through_the_front_door(perturbed_lenet_half, tmp_path, one_thread):
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)
    zs = ZeroShotConfig(samples_per_class=2, iterations=1, queries_per_iteration=30,
                        options={"start_pool": 40, "max_init_queries": 2000})
    cfg = DistillConfig(plan="zsdb3", labeling=LabelingConfig("sd"), zero_shot=zs, train=TrainConfig(epochs=1, batch_size=8),
                        evaluate_teacher=False)
    plan = plan_queries(oracle, None, cfg)
    result = distill_student(oracle, "lenet5_fifth", None, plan.total, tmp_path / "zs", config=cfg, progress=False)
    assert result.queries["zsdb3"] > 0 and result.queries["total"] <= plan.total
    card = json.loads((tmp_path / "zs" / "model" / "db3.json").read_text())
    assert card["method"] == "zsdb3kd" and card["generator"] == "zsdb3" and card["queries"] == result.queries["total"]
    assert (tmp_path / "zs" / "transfer" / "grids" / "all-classes.png").is_file()


def test_without_settings_a_zero_shot_student_trains_on_every_answer_with_the_zero_shot_recipe(perturbed_lenet_half,
                                                                                              tmp_path, one_thread):
    from db3_timm.pipeline import ZERO_SHOT_TRAIN

    oracle, images, _ = _setup(perturbed_lenet_half, n=40)
    noise = distill_student(oracle, "lenet5_fifth", None, 200, tmp_path / "noise",
                            config=DistillConfig(plan="noise", evaluate_teacher=False), progress=False)
    results = json.loads((tmp_path / "noise" / "results.json").read_text())
    recorded = results["config"]["train"]
    assert noise.training.epochs == ZERO_SHOT_TRAIN.epochs == 60 and recorded["lr"] == ZERO_SHOT_TRAIN.lr == 2e-3
    assert recorded["max_samples"] == 1_500_000
    # No answer is held out to pick an epoch: all 200 paid answers train, and the last epoch is the student.
    assert results["train_rows"] == 200 and results["validation"] is None and results["accuracy_kind"] == "final"
    assert results["config"]["val_fraction"] == 0.0
    # Trained again from its transfer set (no query): still a zero-shot set, so the same recipe.
    spent = oracle.queries
    again = distill_student(oracle, "lenet5_fifth", None, None, tmp_path / "again",
                            transfer_dir=tmp_path / "noise" / "transfer", config=DistillConfig(evaluate_teacher=False),
                            progress=False)
    assert again.training.epochs == 60 and oracle.queries == spent
    # With real images, and wherever the settings are given, they are what they were.
    hard = distill_student(oracle, "lenet5_fifth", images, 40, tmp_path / "hard",
                           config=DistillConfig(plan="hard", evaluate_teacher=False), progress=False)
    assert hard.training.epochs == TrainConfig().epochs == 10
    assert json.loads((tmp_path / "hard" / "results.json").read_text())["train_rows"] == 36  # 10 % held out
    given = distill_student(oracle, "lenet5_fifth", None, 200, tmp_path / "given",
                            config=DistillConfig(plan="noise", train=TrainConfig(epochs=2), evaluate_teacher=False),
                            progress=False)
    assert given.training.epochs == 2


def test_continuing_a_run_with_another_teacher_or_plan_is_refused(perturbed_lenet_half, tmp_path, one_thread):
    from db3_timm import ConfigMismatchError

    oracle, images, _ = _setup(perturbed_lenet_half, n=20)
    distill_student(oracle, "lenet5_fifth", images, 400, tmp_path / "run", config=_config(plan="mixes", epochs=1),
                    progress=False)
    other = LabelOracle.from_timm_model(_perturbed_copy(perturbed_lenet_half))
    with pytest.raises(ConfigMismatchError, match="teacher"):
        distill_student(other, "lenet5_fifth", images, 400, tmp_path / "run", config=_config(plan="mixes", epochs=1),
                        progress=False)
    with pytest.raises(ConfigMismatchError, match="plan: 'mixes' -> 'default'"):
        distill_student(oracle, "lenet5_fifth", images, 400, tmp_path / "run", config=_config(plan="default", epochs=1),
                        progress=False)
    assert other.queries == 0
    # The student's training settings too: resuming its checkpoints under another schedule would mix two runs.
    with pytest.raises(ConfigMismatchError, match="epochs: 1 -> 3"):
        distill_student(oracle, "lenet5_fifth", images, 400, tmp_path / "run", config=_config(plan="mixes", epochs=3),
                        progress=False)
    # A cap that leaves the epochs as they were changes nothing: the finished run is read back.
    again = distill_student(oracle, "lenet5_fifth", images, 400, tmp_path / "run",
                            config=_config(plan="mixes", epochs=1, max_samples=10_000), progress=False)
    assert again.training.epochs == 1


_HOLDER = """
import sys
from db3_timm._io import run_lock
with run_lock(sys.argv[1], "distillation"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_job_in_a_busy_folder_is_refused_before_any_query(perturbed_lenet_half, tmp_path, one_thread):
    import subprocess
    import sys

    from db3_timm import RunLockedError

    oracle, images, _ = _setup(perturbed_lenet_half, n=20)
    cfg, spent = _config(plan="mixes", epochs=1), oracle.queries
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "run")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"another distillation \(pid {holder.pid}: .+\) is writing into"):
            distill_student(oracle, "lenet5_fifth", images, 400, tmp_path / "run", config=cfg, progress=False)
        assert oracle.queries == spent and not (tmp_path / "run" / "transfer").exists()
    finally:
        holder.kill()  # a killed job leaves nothing to clean up: the kernel drops its lock
        holder.wait()
    result = distill_student(oracle, "lenet5_fifth", images, 400, tmp_path / "run", config=cfg, progress=False)
    assert result.queries["total"] == oracle.queries - spent > 0


def test_a_transfer_set_in_use_keeps_the_other_jobs_pending_answers(perturbed_lenet_half, tmp_path, one_thread):
    from db3_timm import RunLockedError
    from db3_timm._io import run_lock
    from db3_timm.transfer.build import build_transfer_set

    oracle, images, _ = _setup(perturbed_lenet_half, n=20)
    plan, spent = plan_queries(oracle, len(images), _config(plan="mixes"), budget=400), oracle.queries
    pending = tmp_path / "transfer" / "pending" / "mixes-0"
    pending.mkdir(parents=True)
    (pending / "rows.arrow").write_bytes(b"answers not committed yet")
    with run_lock(tmp_path / "transfer", "transfer-set job"):  # another job builds here right now
        with pytest.raises(RunLockedError, match="another transfer-set job"):
            build_transfer_set(oracle, plan, tmp_path / "transfer", images=images, progress=False)
    assert oracle.queries == spent and (pending / "rows.arrow").is_file()


def _perturbed_copy(model):
    import copy

    twin = copy.deepcopy(model)
    with torch.no_grad():
        next(twin.parameters()).add_(0.5)
    return twin


def test_rows_bigger_than_memory_train_from_disk_to_the_same_student(perturbed_lenet_half, tmp_path, one_thread,
                                                                     monkeypatch):
    import db3_timm.pipeline as pipeline
    from db3_timm._io import module_fingerprint
    from db3_timm.training import ArrowRows

    oracle, images, _ = _setup(perturbed_lenet_half, n=40)
    config = _config(plan="default")
    in_memory = distill_student(oracle, "lenet5_fifth", images, 2000, tmp_path / "memory", config=config, progress=False)
    used = []
    rows = pipeline._rows
    monkeypatch.setattr(pipeline, "IN_MEMORY_BYTES", 0)  # every transfer set counts as bigger than memory
    monkeypatch.setattr(pipeline, "_rows", lambda ds: used.append(rows(ds)) or used[-1])
    from_disk = distill_student(LabelOracle.from_timm_model(perturbed_lenet_half), "lenet5_fifth", images, 2000,
                                tmp_path / "disk", config=config, progress=False)
    assert isinstance(used[0], ArrowRows)
    assert module_fingerprint(from_disk.model) == module_fingerprint(in_memory.model)
    assert from_disk.training.history == in_memory.training.history


def test_a_timm_student_on_gray_images_keeps_their_channels_and_size(perturbed_lenet_half, tmp_path, one_thread):
    """timm's own config of a 1-channel student is RGB at 224 px: the student's config must be what it trained on."""
    import timm

    oracle, images, test = _setup(perturbed_lenet_half, n=32)
    cfg = DistillConfig(plan="hard", train=TrainConfig(epochs=1, batch_size=8), evaluate_teacher=False)
    result = distill_student(oracle, "test_efficientnet", images, 32, tmp_path / "run", test=test, config=cfg,
                             progress=False)
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["pretrained_cfg"]
    assert tuple(saved["input_size"]) == (1, 28, 28) and len(saved["mean"]) == len(saved["std"]) == 1
    # Reloaded from its folder and asked as a teacher, it answers at 28 px (no resize to 224) what it answered in process.
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'run' / 'model'}", pretrained=True)
    again = LabelOracle.from_timm_model(reloaded)
    assert again.input_size == (1, 28, 28)
    assert torch.equal(again(test[0]), LabelOracle.from_timm_model(result.model)(test[0]))
