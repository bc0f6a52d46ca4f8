"""The ``offspring`` source: same-label children of noise, exact budgets, resumption to the same rows."""
import pytest
import torch

from db3_timm import DistillConfig, LabelOracle, TrainConfig, ZeroShotConfig, plan_queries
from db3_timm.oracle import QueryBudgetExceeded
from db3_timm.sources.offspring import Offspring, breed
from db3_timm.transfer.build import build_transfer_set

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(share=0.5):
    return DistillConfig(plan="noise", zero_shot=ZeroShotConfig(offspring_share=share), evaluate_teacher=False,
                         val_fraction=0.0, train=TrainConfig(epochs=1, batch_size=8))


def _rows(oracle, out, budget=1000):
    from db3_timm._disk import read_columns

    plan = plan_queries(oracle, None, _config(), budget=budget)
    transfer = build_transfer_set(oracle, plan, out, seed=0, progress=False)
    return {**read_columns(transfer.rows, ["image", "label"]), "source": transfer.rows["source"]}


def test_children_come_from_two_parents_of_one_class_and_every_class_breeds_alike():
    # Class 0 is black, class 1 white: a child of two same-label parents is all black or all white, never grey.
    images = torch.cat([torch.zeros(90, 1, 8, 8), torch.ones(10, 1, 8, 8)])
    labels = torch.cat([torch.zeros(90, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    kids = breed(images, labels, 2000, torch.Generator().manual_seed(0), mutation=0.0)
    means = kids.mean((1, 2, 3))
    assert bool(((means == 0) | (means == 1)).all())
    assert 0.45 < float(means.mean()) < 0.55  # the rare class breeds as often as the common one


def test_the_noise_plan_with_offspring_spends_the_exact_budget_and_resumes_to_the_same_rows(perturbed_lenet_half,
                                                                                            tmp_path):
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)
    plan = plan_queries(oracle, None, _config(), budget=1000)
    assert [(s.source, s.queries) for s in plan.steps] == [("noise", 500), ("offspring", 500)]
    straight = _rows(oracle, tmp_path / "a")
    assert oracle.queries == 1000 and straight["label"].shape == (1000,)
    assert straight["source"].count("noise") == 500 and straight["source"].count("offspring") == 500

    # Killed by the budget inside the second generation, then continued: only what was not committed is asked.
    with pytest.raises(QueryBudgetExceeded):
        _rows(LabelOracle.from_timm_model(perturbed_lenet_half, budget=700), tmp_path / "b")
    oracle = LabelOracle.from_timm_model(perturbed_lenet_half)
    again = _rows(oracle, tmp_path / "b")
    assert oracle.queries == 375  # generations 2-4 of 125 children each
    assert torch.equal(again["image"], straight["image"]) and torch.equal(again["label"], straight["label"])


def test_bad_offspring_settings_are_refused_before_any_query(perturbed_lenet_half, tmp_path):
    with pytest.raises(ValueError, match="offspring_share"):
        ZeroShotConfig(offspring_share=1.0)
    with pytest.raises(ValueError, match="generations"):
        Offspring(generations=0)
    with pytest.raises(ValueError, match="blend must be"):
        Offspring(blend=(0.8, 0.2))
