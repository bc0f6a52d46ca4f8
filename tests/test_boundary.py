"""The batched boundary-search core on teachers whose boundaries have closed forms: bisection, normal estimates,
the direction search, budgets per pair, and the checked search settings."""
import math

import pytest
import torch

from db3_timm import LabelOracle
from db3_timm.boundary import (PLAIN_SEARCH, BoundarySearchConfig, PairQueries, bisect_segments, estimate_normals,
                               minimize_boundary_distance, random_starts)


def _half_space(dim=16, seed=0):
    """Two classes split by the hyperplane w.x = 0.5 * sum(w): class 1 on the positive side."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)
    offset = 0.5 * float(w.sum())
    oracle = LabelOracle.from_callable(lambda x: (x.flatten(1) @ w > offset).long(), num_classes=2, input_size=(1, 4, 4))
    return oracle, w, offset


def _pairs(oracle, x0, budget):
    labels = oracle(x0.view(-1, 1, 4, 4))
    return PairQueries(oracle, (1, 4, 4), labels, None, budget), labels


def _truth(w, offset, x0):
    return (x0 @ w - offset).abs() / w.norm()


def _across(w, offset, x0, factor=3.0):
    """Points on the other side of the plane, ``factor`` times the distance away along the normal."""
    return (x0 - factor * ((x0 @ w - offset) / w.norm() ** 2).unsqueeze(1) * w).clamp(0, 1)


def test_bisection_brackets_the_crossing_to_the_tolerance_and_spends_exactly_what_it_counts():
    oracle, w, offset = _half_space()
    g = torch.Generator().manual_seed(1)
    x0 = (0.5 + 0.05 * torch.randn(6, 16, generator=g)).clamp(0, 1)
    query, labels = _pairs(oracle, x0, budget=40)
    adv = _across(w, offset, x0)
    before = oracle.queries
    hi, lo = bisect_segments(query, x0, adv, torch.ones(6, dtype=torch.bool), tol=1e-4)
    assert oracle.queries - before == int(query.spent.sum())  # every query is counted for its pair
    cross = ((offset - x0 @ w) / ((adv - x0) @ w))  # exact fraction of the crossing along each segment
    assert torch.all(lo <= cross + 1e-6) and torch.all(cross <= hi + 1e-6)
    assert torch.all(hi - lo <= 1e-4 * hi + 1e-7)


def test_estimated_normals_point_to_the_adversarial_side():
    oracle, w, offset = _half_space()
    g = torch.Generator().manual_seed(2)
    x0 = (0.5 + 0.02 * torch.randn(4, 16, generator=g)).clamp(0, 1)
    query, labels = _pairs(oracle, x0, budget=500)
    on = x0 - ((x0 @ w - offset) / w.norm() ** 2).unsqueeze(1) * w  # the foot points on the plane
    normals = estimate_normals(query, on, torch.ones(4, dtype=torch.bool), torch.full((4,), 400), torch.full((4,), 0.05), g)
    towards = torch.where(labels == 1, -1.0, 1.0).unsqueeze(1) * w / w.norm()  # away from each sample's own class
    assert torch.all((normals * towards).sum(1) > 0.6)
    assert torch.all(query.spent == 400)


@pytest.mark.parametrize("config", [BoundarySearchConfig(probe_scale=1), PLAIN_SEARCH,
                                    BoundarySearchConfig(min_probe_grid=1)])  # the ladder (4, 2, 1) at 4x4
def test_the_direction_search_reaches_the_minimum_within_the_per_pair_budget(config):
    oracle, w, offset = _half_space()
    g = torch.Generator().manual_seed(3)
    x0 = (0.5 + 0.03 * torch.randn(5, 16, generator=g)).clamp(0, 1)
    query, labels = _pairs(oracle, x0, budget=600)
    g2 = torch.Generator().manual_seed(4)
    start = _across(w, offset, x0 + 0.2 * torch.randn(5, 16, generator=g2) * (x0 @ w - offset).abs().unsqueeze(1))
    assert torch.all(oracle(start.view(-1, 1, 4, 4)) != labels)
    before = oracle.queries
    adv = minimize_boundary_distance(query, x0, start, torch.ones(5, dtype=torch.bool), g, config)
    assert torch.all(query.spent <= 600) and oracle.queries - before == int(query.spent.sum())
    assert torch.all(oracle(adv.view(-1, 1, 4, 4)) != labels)  # every returned point is verified adversarial
    ratio = (adv - x0).norm(dim=1) / _truth(w, offset, x0)
    assert torch.all(ratio >= 1 - 1e-4) and float(ratio.max()) < 1.1, ratio


def test_a_pair_without_budget_is_left_alone():
    oracle, w, offset = _half_space()
    x0 = torch.full((2, 16), 0.5) + torch.linspace(-0.05, 0.05, 16)
    query, labels = _pairs(oracle, x0, budget=5)
    start = _across(w, offset, x0)
    adv = minimize_boundary_distance(query, x0, start, torch.tensor([True, False]), torch.Generator().manual_seed(0))
    assert torch.equal(adv[1], start[1]) and int(query.spent[1]) == 0 and int(query.spent[0]) <= 5


def test_random_starts_find_the_other_side_within_their_cap():
    oracle, *_ = _half_space()
    x0 = torch.full((3, 16), 0.5)
    query, labels = _pairs(oracle, x0, budget=30)
    starts, found = random_starts(query, (3, 16), torch.ones(3, dtype=torch.bool), 30, torch.Generator().manual_seed(0),
                                  torch.device("cpu"))
    assert torch.all(query.spent <= 30)
    assert torch.all(oracle(starts[found].view(-1, 1, 4, 4)) != labels[found]) and bool(found.any())


@pytest.mark.parametrize("options, message", [
    ({"probes": 0}, "probes=0: expected at least 1"),
    ({"probes": 1.5}, "probes=1.5: expected an integer"),
    ({"momentum": -5}, "momentum=-5: expected at least 0"),
    ({"momentum": math.nan}, "momentum=nan: expected a finite number"),
    ({"tol": 2}, "tol=2: expected a number in \\(0, 1\\)"),
    ({"max_probes": 10}, "max_probes=10: expected at least probes \\(60\\)"),
    ({"delta": 0}, "delta=0: expected a number in \\(0, 1\\]"),
    ({"min_probe_grid": -1}, "min_probe_grid=-1: expected at least 0"),
])
def test_search_settings_are_checked_and_named(options, message):
    with pytest.raises(ValueError, match=message):
        BoundarySearchConfig.from_dict(options)
    with pytest.raises(TypeError, match="unknown boundary search option.*'probs'"):
        BoundarySearchConfig.from_dict({"probs": 3})
    assert BoundarySearchConfig.from_dict({"momentum": 0.5}).to_dict()["momentum"] == 0.5


def test_the_probe_ladder_grows_with_the_image_and_leaves_28px_searches_unchanged():
    ladder = BoundarySearchConfig(min_probe_grid=8).probe_ladder
    assert [ladder((3, s, s)) for s in (28, 96, 224)] == [(2, 1), (8, 4, 2, 1), (16, 8, 4, 2, 1)]
    assert BoundarySearchConfig().probe_ladder((3, 224, 224)) == (2, 1)  # the default: two levels at any size
    # At 28 px the ladder is the two-level default, so the search spends and finds exactly the same.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(784, generator=g)
    oracle = LabelOracle.from_callable(lambda x: (x.flatten(1) @ w > 0.5 * float(w.sum())).long(), num_classes=2,
                                       input_size=(1, 28, 28))
    x0 = (0.5 + 0.05 * torch.randn(3, 784, generator=g)).clamp(0, 1)
    labels = oracle(x0.view(-1, 1, 28, 28))
    start = _across(w, 0.5 * float(w.sum()), x0)
    found = []
    for config in (BoundarySearchConfig(), BoundarySearchConfig(min_probe_grid=8)):
        query = PairQueries(oracle, (1, 28, 28), labels, None, 400)
        found.append(minimize_boundary_distance(query, x0, start, torch.ones(3, dtype=torch.bool),
                                                torch.Generator().manual_seed(1), config))
    assert torch.equal(found[0], found[1])
