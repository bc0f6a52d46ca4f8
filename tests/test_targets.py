"""Top-k targets: a labeler searches only the classes each sample most likely borders."""
import math

import pytest
import torch

from db3_timm import LabelOracle, create_labeler
from db3_timm.labelers.base import References
from db3_timm.labelers.soft import distances_to_logits
from db3_timm.transfer.build import LabelingConfig
from db3_timm.transfer.plan import make_plan


def affine_teacher(num_classes, shape=(1, 6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_classes, math.prod(shape), generator=g)
    b = -w.sum(1) * 0.5
    return LabelOracle.from_callable(lambda x: (x.flatten(1) @ w.T + b).argmax(1), num_classes=num_classes,
                                     input_size=shape)


def checked_refs(oracle, n=600, shape=(1, 6, 6), seed=1):
    images = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))
    return References(images, oracle(images))


def test_top_k_on_a_1000_class_teacher_costs_at_most_1_plus_k_q_and_measures_exactly_k_classes():
    oracle = affine_teacher(1000, shape=(3, 8, 8))
    refs = checked_refs(oracle, n=4000, shape=(3, 8, 8))
    before = oracle.queries
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    soft = create_labeler("bd", oracle, queries_per_target=20, targets=5).label(x, refs)
    assert bool((soft.queries <= 1 + 5 * 20).all())
    assert oracle.queries - before == int(soft.queries.sum())
    others = soft.distances.scatter(1, soft.labels.view(-1, 1), math.inf)
    assert torch.isfinite(others).sum(1).tolist() == [5, 5, 5]
    assert soft.searched.sum(1).tolist() == [5, 5, 5]
    assert bool(torch.isfinite(others)[soft.searched].all()) and not bool(torch.isfinite(others)[~soft.searched].any())


def test_the_searched_classes_are_those_with_the_nearest_references():
    oracle = affine_teacher(10)
    refs = checked_refs(oracle)
    x = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    soft = create_labeler("mbd", oracle, queries_per_target=30, targets=3, probe_scale=1).label(x, refs)
    sd = create_labeler("sd", oracle).label(x, refs, labels=soft.labels).distances
    sd = sd.scatter(1, soft.labels.view(-1, 1), math.inf)
    expected = torch.zeros_like(soft.searched).scatter_(1, sd.topk(3, 1, largest=False).indices, True)
    assert torch.equal(soft.searched, expected)


def test_an_unsearched_class_never_gets_a_higher_soft_label_than_a_searched_one():
    oracle = affine_teacher(10)
    refs = checked_refs(oracle)
    x = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    for rule in ("neg_distance", "reciprocal"):
        soft = create_labeler("bd", oracle, queries_per_target=12, targets=2, rule=rule).label(x, refs)
        others = torch.ones_like(soft.searched).scatter_(1, soft.labels.view(-1, 1), False)
        low = torch.where(soft.searched, soft.logits, math.inf).amin(1)
        high = torch.where(others & ~soft.searched, soft.logits, -math.inf).amax(1)
        assert bool((high <= low).all()), rule
        assert bool(torch.isfinite(soft.logits).all())


def test_without_references_noisy_copies_choose_the_classes_and_are_counted():
    oracle = affine_teacher(10)
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    labeler = create_labeler("bd", oracle, queries_per_target=10, targets=2, selection_queries=16)
    soft = labeler.label(x)
    assert labeler.queries_per_image(references=False) == 2 * 10 + 16
    assert bool((soft.queries <= 1 + 16 + 2 * 10).all()) and oracle.queries == int(soft.queries.sum())
    assert bool((soft.searched.sum(1) >= 1).all()) and bool((soft.searched.sum(1) <= 2).all())
    others = soft.distances.scatter(1, soft.labels.view(-1, 1), math.inf)
    assert bool(torch.isfinite(others)[soft.searched].all())  # every chosen class came with a verified start


def test_k_of_all_other_classes_is_the_all_targets_search_bit_for_bit():
    oracle = affine_teacher(4)
    refs = checked_refs(oracle)
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(6))
    a = create_labeler("mbd", oracle, queries_per_target=25, targets="all", probe_scale=1).label(x, refs)
    b = create_labeler("mbd", oracle, queries_per_target=25, targets=3, probe_scale=1).label(x, refs)
    assert torch.equal(a.distances, b.distances) and torch.equal(a.queries, b.queries) and b.searched is None


def test_auto_searches_every_class_of_a_small_teacher_and_five_of_a_big_one():
    small = create_labeler("bd", affine_teacher(2), queries_per_target=10, targets="auto")
    assert small.searched_per_sample() == 1 and small.queries_per_image() == 10
    assert create_labeler("bd", affine_teacher(10), targets="auto").searched_per_sample() == 9
    big = create_labeler("mbd", affine_teacher(1000, shape=(3, 8, 8)), queries_per_target=100, targets="auto")
    assert big.searched_per_sample() == 5 and big.queries_per_image() == 500


@pytest.mark.parametrize("targets, message", [
    (0, "targets=0 but a 10-class teacher has 9 other classes"),
    (10, "targets=10 but a 10-class teacher has 9 other classes"),
    ("top5", "targets must be 'all', 'auto' or a number of classes, got 'top5'"),
    (True, "got True"),
    (2.5, "got 2.5"),
])
def test_bad_targets_are_refused_before_any_query(targets, message):
    oracle = affine_teacher(10)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        create_labeler("mbd", oracle, targets=targets)
    assert oracle.queries == 0


def test_the_paper_plan_spends_the_budget_on_k_classes_per_image():
    oracle = affine_teacher(10)
    labeling = LabelingConfig("mbd", options={"targets": 3})
    plan = make_plan("paper", oracle, 100, budget=100 + 100 * 900, labeling=labeling)
    soft = plan.steps[1]
    assert soft.options["options"]["queries_per_target"] == 300 and soft.queries == 100 * 900
    assert plan.total <= 100 + 100 * 900 and "the 3 of 9 other classes" in soft.why
    everything = make_plan("paper", oracle, 100, budget=100 + 100 * 900, labeling=LabelingConfig("mbd"))
    assert everything.steps[1].options["options"]["queries_per_target"] == 100


def test_soft_labels_are_the_rule_applied_to_the_filled_distances():
    oracle = affine_teacher(10)
    refs = checked_refs(oracle)
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(7))
    soft = create_labeler("bd", oracle, queries_per_target=10, targets=1).label(x, refs)
    sd = create_labeler("sd", oracle).label(x, refs, labels=soft.labels).distances
    measured = torch.where(soft.searched, soft.distances, 0.0).amax(1, keepdim=True)
    filled = torch.where(soft.searched, soft.distances, torch.maximum(sd, measured)).scatter(1, soft.labels.view(-1, 1), 0.0)
    assert torch.allclose(soft.logits, distances_to_logits(filled, soft.labels, "neg_distance"))


def test_top_k_over_many_chunks_keeps_every_samples_searched_classes():
    oracle = affine_teacher(10)
    refs = checked_refs(oracle)
    x = torch.rand(9, 1, 6, 6, generator=torch.Generator().manual_seed(8))
    soft = create_labeler("bd", oracle, queries_per_target=8, targets=2, max_pairs=4).label(x, refs)  # 2 images a chunk
    assert soft.searched.shape == (9, 10) and soft.searched.sum(1).tolist() == [2] * 9
