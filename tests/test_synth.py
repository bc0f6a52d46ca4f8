"""The ``synth`` zero-shot generator: exact budgets, every answer a row, resumption to the same samples."""
import json

import pytest
import torch

from db3_timm import (BudgetTooSmallError, DistillConfig, LabelOracle, TrainConfig, ZeroShotConfig, distill_student,
                      plan_queries)
from db3_timm.transfer.build import ConfigMismatchError, build_transfer_set

SMALL = {"queries_per_round": 20, "generator_steps": 2, "boundary_steps": 1, "student_steps": 3, "student_batch": 16,
         "student": "lenet5_fifth"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(share=0.0, **synth):
    return DistillConfig(plan="default", zero_shot=ZeroShotConfig(synth={**SMALL, **synth}, mix_share=share),
                         train=TrainConfig(epochs=1, batch_size=8), evaluate_teacher=False, val_fraction=0.0)


def _build(oracle, cfg, out, seed=0, budget=100):
    plan = plan_queries(oracle, None, cfg, budget=budget)
    return build_transfer_set(oracle, plan, out, seed=seed, progress=False)


def _rows(transfer):
    from db3_timm._disk import read_columns

    return read_columns(transfer.rows, ["image", "label"])


def test_the_default_zero_shot_plan_spends_the_exact_budget_and_keeps_every_answer(perturbed_lenet_half, tmp_path):
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)
    cfg = _config(share=0.25)
    plan = plan_queries(oracle, None, cfg, budget=130)
    # 130 * 0.75 buys 4 whole rounds of 20; the rest goes to mixes of the generated samples.
    assert [(s.source, s.queries) for s in plan.steps] == [("synth", 80), ("mixes", 50)]
    result = distill_student(oracle, "lenet5_fifth", None, 130, tmp_path / "run", config=cfg, progress=False)
    assert oracle.queries == 130 and result.queries == {"synth": 80, "mixes_pseudo": 50, "total": 130}
    card = json.loads((tmp_path / "run" / "model" / "db3.json").read_text())
    assert card["method"] == "synth-kd" and card["generator"] == "synth" and card["transfer_rows"] == 130
    import datasets

    rows = datasets.load_from_disk(str(tmp_path / "run" / "transfer"))["train"]
    assert len(rows) == 130 and sorted(set(rows["source"])) == ["mixes_pseudo", "synth"]


def test_a_budget_below_one_round_or_a_bad_option_is_refused_before_any_query(perturbed_lenet_half, tmp_path):
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)
    with pytest.raises(BudgetTooSmallError, match="one generator round of 20 queries"):
        distill_student(oracle, "lenet5_fifth", None, 19, tmp_path / "run", config=_config(), progress=False)
    with pytest.raises(ValueError, match="augment must be one of"):
        _config(augment="bogus")
    with pytest.raises(ValueError, match="mix_share"):
        ZeroShotConfig(mix_share=1.0)
    with pytest.raises(ValueError, match="queries_per_round"):
        _config(queries_per_round=0)
    with pytest.raises(ValueError, match="targets must be one of .*'nearest'"):
        _config(targets="nearest")
    assert oracle.queries == 0 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("options", [{}, {"targets": "rare"}, {"targets": "balanced", "reinit": True}])
def test_a_killed_generation_resumes_to_the_same_samples(perturbed_lenet_half, tmp_path, monkeypatch, options):
    def _config(**kw):
        return globals()["_config"](**options, **kw)

    straight = _rows(_build(LabelOracle.from_timm_model(perturbed_lenet_half, budget=100), _config(), tmp_path / "a"))

    # Killed by the budget after two rounds, then continued with the full budget.
    from db3_timm.oracle import QueryBudgetExceeded

    with pytest.raises(QueryBudgetExceeded):
        _build(LabelOracle.from_timm_model(perturbed_lenet_half, budget=50), _config(), tmp_path / "b")
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half, budget=100)
    again = _rows(_build(oracle, _config(), tmp_path / "b"))
    assert oracle.queries == 60  # only the three rounds not committed are asked again
    assert torch.equal(again["image"], straight["image"]) and torch.equal(again["label"], straight["label"])

    # Killed after a round was committed but before the generator's state was saved: replayed, not re-asked.
    saves = {"n": 0}
    real_save = torch.save

    def dies_on_third_save(obj, path, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 3:
            raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dies_on_third_save)
    with pytest.raises(KeyboardInterrupt):
        _build(LabelOracle.from_timm_model(perturbed_lenet_half, budget=100), _config(), tmp_path / "c")
    monkeypatch.setattr(torch, "save", real_save)
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half, budget=100)
    again = _rows(_build(oracle, _config(), tmp_path / "c"))
    assert oracle.queries == 40  # rounds 0-2 committed; round 2 replayed from its stored answers
    assert torch.equal(again["image"], straight["image"]) and torch.equal(again["label"], straight["label"])


def test_a_class_the_teacher_never_answers_is_named(perturbed_lenet_half, tmp_path):
    class NeverSeven(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.num_classes, self.pretrained_cfg = net, 10, net.pretrained_cfg

        def forward(self, x):
            out = self.net(x)
            out[:, 7] = float("-inf")
            return out

    oracle = LabelOracle.from_timm_model(NeverSeven(perturbed_lenet_half))
    names = [f"class{c}" for c in range(10)]
    plan = plan_queries(oracle, None, _config(), budget=40)
    with pytest.warns(UserWarning, match="never answered .*class7"):
            transfer = build_transfer_set(oracle, plan, tmp_path / "t", class_names=names, progress=False)
    assert "class7" in transfer.info["missing_classes"] and oracle.queries == 40


def test_db3_generate_synth_writes_a_transfer_set_that_db3_distill_trains_on(tmp_path, capsys):
    import timm

    from db3_timm.cli import main as db3

    torch.manual_seed(0)
    timm.models.save_for_hf(timm.create_model("lenet5_fifth"), str(tmp_path / "teacher"))
    teacher = f"local-dir:{tmp_path / 'teacher'}"
    argv = ["generate", "--generator", "synth", "--teacher", teacher, "--budget", "60", "--queries-per-round", "20",
            "--synth-kwargs", json.dumps({k: v for k, v in SMALL.items() if k != "queries_per_round"}),
            "--no-progress", "--out", str(tmp_path / "gen")]
    assert db3(argv) == 0
    summary = json.loads((tmp_path / "gen" / "summary.json").read_text())
    assert summary["queries"]["total"] == 60 and summary["rows"] == 60
    assert (tmp_path / "gen" / "synth" / "grids" / "all-classes.png").is_file()
    assert db3(argv) == 0  # a finished run is read back, nothing asked again
    assert json.loads((tmp_path / "gen" / "summary.json").read_text())["queries"]["total"] == 60
    assert db3(["distill", "--teacher", teacher, "--student", "lenet5_fifth", "--transfer-dir", str(tmp_path / "gen"),
                "--epochs", "1", "--no-eval-teacher", "--no-progress", "--out", str(tmp_path / "d")]) == 0
    card = json.loads((tmp_path / "d" / "model" / "db3.json").read_text())
    assert card["queries"] == 60 and card["method"] == "synth-kd"
    with pytest.raises(SystemExit):  # below one round: refused before any query, with the numbers
        db3([{"60": "10", str(tmp_path / "gen"): str(tmp_path / "small")}.get(a, a) for a in argv])
    assert "one generator round of 20 queries" in capsys.readouterr().err and not (tmp_path / "small").exists()


def test_noise_rounds_warm_the_working_student_up_and_the_noise_plan_is_the_baseline(perturbed_lenet_half, tmp_path):
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)
    cfg = DistillConfig(plan="default", zero_shot=ZeroShotConfig(synth=SMALL, noise_share=0.5))
    plan = plan_queries(oracle, None, cfg, budget=100, test_images=0)
    assert plan.steps[0].options["options"]["noise_rounds"] == 2 and plan.total == 100
    transfer = build_transfer_set(oracle, plan, tmp_path / "s", progress=False)
    rows = _rows(transfer)
    from db3_timm.generators.priors import smooth_noise
    from db3_timm.sources.base import unit_generator

    # The first two rounds are exactly the smooth noise of their units' generators.
    for k in range(2):
        expected = smooth_noise(20, (1, 28, 28), unit_generator(0, "synth", k), torch.device("cpu"))
        assert torch.equal(rows["image"][20 * k: 20 * (k + 1)], expected)
    noise = plan_queries(oracle, None, DistillConfig(plan="noise", evaluate_teacher=False), budget=70)
    assert [(s.source, s.queries) for s in noise.steps] == [("noise", 70)]
    with pytest.raises(ValueError, match="plan 'noise' learns from no images"):
        plan_queries(oracle, 5, DistillConfig(plan="noise", evaluate_teacher=False), budget=70)


def test_the_default_without_images_is_synth_under_50k_and_stretched_noise_from_there(perturbed_lenet_half):
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)

    def steps(budget, **zero_shot):
        cfg = DistillConfig(plan="default", zero_shot=ZeroShotConfig(**zero_shot), evaluate_teacher=False)
        plan = plan_queries(oracle, None, cfg, budget=budget)
        return [(s.source, s.queries, s.options.get("prior")) for s in plan.steps]

    assert [s[0] for s in steps(49_999)] == ["synth"]
    assert steps(50_000) == steps(None) == [("noise", 50_000, "stretched")]
    assert steps(1_000_000, noise_prior="smooth") == [("noise", 1_000_000, None)]  # smooth: the source's own default
    # Options only the generator reads keep the generator, at any budget; its noise rounds stay smooth.
    assert [s[0] for s in steps(100_000, noise_share=0.4)] == ["synth"]
    assert [s[0] for s in steps(None, mix_share=0.1)] == ["synth", "mixes"]
    plan = plan_queries(oracle, None, DistillConfig(plan="default", zero_shot=ZeroShotConfig(synth=SMALL),
                                                    evaluate_teacher=False), budget=200_000)
    assert [s.source for s in plan.steps] == ["synth"] and "noise_prior" not in plan.steps[0].options["options"]
    assert [s[0] for s in steps(None, synth={})] == ["noise"]  # an empty options dict sets nothing
    # A named plan is what it says, whatever the budget.
    named = DistillConfig(plan="synth", evaluate_teacher=False)
    assert [s.source for s in plan_queries(oracle, None, named, budget=100_000).steps] == ["synth"]
    assert oracle.queries == 0


def _bars(n, shape, generator, device):
    """A prior a plugin (or a benchmark) adds to NOISE_PRIORS: vertical bars of random brightness."""
    bars = 0.05 + 0.9 * torch.rand(n, shape[0], 1, shape[2], generator=generator, device=device)
    return bars.expand(n, *shape).contiguous()


@pytest.mark.parametrize("plan_name,prior", [("noise", "stretched"), ("default", "stretched"), ("noise", "bars")])
def test_a_noise_prior_draws_the_noise_and_is_recorded(perturbed_lenet_half, tmp_path, monkeypatch, plan_name, prior):
    from db3_timm.generators.priors import NOISE_PRIORS, smooth_noise
    from db3_timm.sources.base import unit_generator

    monkeypatch.setitem(NOISE_PRIORS, "bars", _bars)
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)
    zs = ZeroShotConfig(synth={**SMALL, "queries_per_round": 40}, noise_share=1.0, noise_prior=prior)
    plan = plan_queries(oracle, None, DistillConfig(plan=plan_name, zero_shot=zs, evaluate_teacher=False), budget=80)
    rows = _rows(build_transfer_set(oracle, plan, tmp_path / "s", progress=False))
    assert oracle.queries == 80 and len(rows["label"]) == 80
    source = "noise" if plan_name == "noise" else "synth"
    g = unit_generator(0, source, 0)
    expected = NOISE_PRIORS[prior](80 if source == "noise" else 40, (1, 28, 28), g, torch.device("cpu"))
    assert torch.equal(rows["image"][: len(expected)], expected)
    again = smooth_noise(len(expected), (1, 28, 28), unit_generator(0, source, 0), torch.device("cpu"))
    assert not torch.equal(expected, again) and 0 < expected.min() and expected.max() < 1
    # A job started with one prior is not resumed with the other: the prior is part of the recorded job.
    smooth = plan_queries(oracle, None, DistillConfig(plan=plan_name, zero_shot=ZeroShotConfig(
        synth={**SMALL, "queries_per_round": 40}, noise_share=1.0, noise_prior="smooth"), evaluate_teacher=False),
        budget=80)
    with pytest.raises(ConfigMismatchError):
        build_transfer_set(oracle, smooth, tmp_path / "s", progress=False)
    assert oracle.queries == 80
    with pytest.raises(ValueError, match="noise_prior must be one of"):
        ZeroShotConfig(noise_prior="plaid")


def test_balanced_targets_aim_at_every_class_equally_and_reinit_starts_each_round_afresh(perturbed_lenet_half):
    from db3_timm.generators.synth import SynthGenerator

    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)
    gen = SynthGenerator(oracle, **{**SMALL, "targets": "balanced", "reinit": True, "queries_per_round": 30})
    rng = torch.Generator().manual_seed(0)
    assert torch.bincount(gen._target_classes(30, rng), minlength=10).tolist() == [3] * 10
    first = gen.propose(torch.Generator().manual_seed(1))
    again = gen.propose(torch.Generator().manual_seed(1))  # the same round's stream: the same fresh generator
    assert torch.equal(first, again) and oracle.queries == 0
